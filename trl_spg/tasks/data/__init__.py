"""The SPG paper's test sets, shipped with the package (sources, checksums and licence: the ``NOTICE`` file here).

* ``countdown_cd3_test.jsonl``: the paper's 256 three-number Countdown problems (``input`` = ``"a,b,c"``,
  ``output`` = the target);
* ``test_sudoku_split_new.csv``: the paper's 256 4x4 Sudoku puzzles (``Puzzle`` / ``Solution``) from 88 solution
  grids.

`PaperDataTask` is a `Task` that also reads ``data="paper"``: its ``paper`` mapping names the packaged file of each
split, found with `importlib.resources` (so it works from a wheel as from a checkout) and loaded through
`load_rows` like any local file; the task's ``prepare`` then reads the file's own columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from typing import TYPE_CHECKING

import datasets

from ..base import DataArg, Task, load_rows

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["PAPER", "PaperDataTask", "paper_file"]

#: The data name of the shipped files: ``task.dataset("test", data=PAPER)``, ``--data paper``, ``--eval_data paper``.
PAPER = "paper"


def paper_file(name: str) -> Traversable:
    """The packaged file ``name`` of this folder (a `Traversable`; `importlib.resources.as_file` gives a path)."""
    resource = files(__name__) / name
    if not resource.is_file():
        raise FileNotFoundError(f"{name} is not a data file of {__name__}")
    return resource


@dataclass(frozen=True, repr=False)
class PaperDataTask(Task):
    """A `Task` with the paper's files shipped in the package: ``data="paper"`` (or a ``default_data`` of
    ``"paper"``) reads the split's file named in ``paper``; every other source is `Task`'s."""

    paper: Mapping[str, str] = field(default_factory=dict)

    def raw_rows(self, split: str, data: DataArg = None) -> datasets.Dataset:
        if data is None:
            data = self.default_data.get(split)
        if not (isinstance(data, str) and data == PAPER):
            return super().raw_rows(split, data)
        if split not in self.paper:
            raise ValueError(
                f"Task {self.name!r} ships the paper's data for splits {sorted(self.paper)}, not {split!r}."
            )
        with as_file(paper_file(self.paper[split])) as path:  # a real path even from a zipped install
            return load_rows(path, split)
