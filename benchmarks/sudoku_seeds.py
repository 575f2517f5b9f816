"""The Sudoku example's default run over several seeds: `benchmarks/tiny_seeds.py --task sudoku`, kept by name.

    python benchmarks/sudoku_seeds.py --seeds 0 1 2                   # the default, as the README runs it
    python benchmarks/sudoku_seeds.py --seeds 0 1 -- --max_steps 300  # any example flag overrides the default

Each seed runs ``accelerate launch examples/train_sudoku.py --seed S`` with a fresh warm-start cache; see
`tiny_seeds` for the options. Figures are in docs/sudoku.md.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_seeds import ROOT, _flag_value, format_table, machine, run_tiny  # noqa: E402

__all__ = ["ROOT", "_flag_value", "format_table", "machine", "main", "run_sudoku"]

#: `run_tiny` for the Sudoku example: ``run_sudoku(seed, extra_args, cache_dir, output_dir, launcher, log_path)``.
run_sudoku = functools.partial(run_tiny, "sudoku")


def main(argv: Sequence[str] | None = None) -> list[dict]:
    import tiny_seeds

    return tiny_seeds.main(argv, task="sudoku")


if __name__ == "__main__":
    main()
