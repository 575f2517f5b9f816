"""The SPG paper's test sets, shipped with the package (sources, checksums and licence: the ``NOTICE`` file here).

* ``countdown_cd3_test.jsonl``: the paper's 256 three-number Countdown problems (``input`` = ``"a,b,c"``,
  ``output`` = the target);
* ``test_sudoku_split_new.csv``: the paper's 256 4x4 Sudoku puzzles (``Puzzle`` / ``Solution``) from 88 solution
  grids.
"""

from __future__ import annotations

from importlib.resources import as_file, files

import datasets

from ..base import load_rows


def packaged_rows(name: str) -> datasets.Dataset:
    """The rows of the packaged file ``name``, found with `importlib.resources` (a wheel or a checkout alike)."""
    resource = files(__name__) / name
    if not resource.is_file():
        raise FileNotFoundError(f"{name} is not a data file of {__name__}")
    with as_file(resource) as path:  # a real path even from a zipped install
        return load_rows(path, "test")
