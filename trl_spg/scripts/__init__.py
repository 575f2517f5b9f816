"""Command-line entry points (`trl-spg`)."""
