"""Every benchmark script runs at its tiniest setting (the figures themselves are measured by hand, never here)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--preset", "tiny", "--repeats", "1", "--threads", "1"]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "script, flags, expected",
    [
        ("sampler.py", [*TINY, "--temperatures", "0.0"], "token-identical to the old sampler: True"),
        ("estimator.py", TINY, "SPG estimator, 2 masks (trl_spg kernel)"),
        ("train_step.py", [*TINY, "--train-steps", "2"], "trl_spg: 1 steps"),
        ("likelihood_canvas.py", TINY, "on a canvas of 8"),
        ("block_sampling_variance.py", ["--repeats", "8", "--chunk", "8", "--masks", "2", "--threads", "1"], "block_all      2 ELBO"),
        (
            "rollout_speed.py",
            [*TINY, "--modes", "exact", "threshold", "--sudoku", "--sudoku-warm-start-steps", "2",
             "--sudoku-puzzles", "4", "--sudoku-repeats", "1", "--sudoku-settings", "20/20/10",
             "--sudoku-modes", "exact", "threshold", "--sudoku-thresholds", "0.5", "--sudoku-sweep", "threshold"],
            "threshold@0.5          10.00",
        ),
        (
            "sudoku_update_direction.py",
            ["--warm_start_steps", "2", "--prompts", "2", "--generations", "2", "--settings", "mix:0:0.3",
             "--chunk", "4"],
            "mix:0:0.3",
        ),
    ],
)  # fmt: skip
def test_benchmark_script_runs(script, flags, expected, tmp_path):
    env = {**os.environ, "TRL_SPG_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *flags], env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert expected in completed.stdout
