"""The command lines: `trl-spg` (`spg.py`, training) and `trl-spg-evaluate` (`evaluate.py`, evaluation)."""
