"""A built-in tiny run over several seeds: held-out accuracy before / after RL, gain and wall time, per task.

Each seed runs the task's tiny command as its own process, with a fresh warm-start cache unless ``--reuse_cache``:

    sudoku:    accelerate launch examples/train_sudoku.py --seed S --output_dir OUT/seed-S
    countdown: accelerate launch -m trl_spg.scripts.spg --task countdown --model_name_or_path tiny --seed S ...

(``TRL_SPG_CACHE=OUT/seed-S/cache``) and the table is read from each run's ``<task>_results.json``. Flags after
``--`` go to every run unchanged:

    python benchmarks/tiny_seeds.py --task countdown --seeds 0 1 2
    python benchmarks/tiny_seeds.py --task sudoku --seeds 0 1 -- --max_steps 300  # any flag overrides the default

The gain is in units of the paired standard error, clustered by the task's `cluster_key` (Sudoku's solution grid,
whose puzzles succeed or fail together; Countdown's set of numbers); the standard error over problems is shown too.
Figures: docs/sudoku.md, docs/countdown.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCHERS = {
    # `accelerate launch`, as the README runs it (it sets OMP_NUM_THREADS; `trl-spg` picks its own thread count).
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch"],
    "python": [sys.executable],
}
#: What each task runs after the launcher: Sudoku keeps its example script (the README's command), others the CLI.
ENTRY_POINTS = {
    "sudoku": [str(ROOT / "examples" / "train_sudoku.py")],
    "countdown": ["-m", "trl_spg.scripts.spg", "--task", "countdown", "--model_name_or_path", "tiny"],
}


def run_tiny(
    task: str,
    seed: int,
    extra_args: Sequence[str] = (),
    cache_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    launcher: str = "accelerate",
    log_path: str | os.PathLike | None = None,
) -> dict:
    """Run ``task``'s tiny command once with ``--seed seed`` and return its results with the wall time.

    ``cache_dir`` becomes ``TRL_SPG_CACHE`` (None: the environment's / the default cache); ``output_dir`` is passed
    as ``--output_dir`` (None: the run's default, ``outputs/<task>-tiny-spg``); ``extra_args`` follow, so they
    override both. The process's output goes to ``log_path`` (None: ``run.log`` in the output folder). Returns
    ``<task>_results.json`` plus ``seed``, ``wall_s`` (the whole process, warm start and evaluations included),
    ``command`` and ``log``. Raises ``RuntimeError`` if the run fails or writes no results.
    """
    command = [*LAUNCHERS[launcher], *ENTRY_POINTS[task], "--seed", str(seed)]
    if output_dir is not None:
        command += ["--output_dir", str(output_dir)]
    command += list(extra_args)
    env = dict(os.environ)
    if cache_dir is not None:
        env["TRL_SPG_CACHE"] = str(cache_dir)
    results_dir = Path(_flag_value(command, "--output_dir") or f"outputs/{task}-tiny-spg")
    if not results_dir.is_absolute():
        results_dir = ROOT / results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    results_path = results_dir / f"{task}_results.json"
    results_path.unlink(missing_ok=True)
    log_path = Path(log_path) if log_path is not None else results_dir / "run.log"

    started = time.perf_counter()
    with open(log_path, "w") as log:
        returncode = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall_s = time.perf_counter() - started
    if returncode != 0 or not results_path.exists():
        raise RuntimeError(f"seed {seed}: {' '.join(command)} exited with {returncode}; see {log_path}")
    results = json.loads(results_path.read_text())
    results.update(seed=seed, wall_s=wall_s, command=command, log=str(log_path))
    return results


def _flag_value(command: Sequence[str], flag: str) -> str | None:
    """The value of the last ``flag VALUE`` / ``flag=VALUE`` in ``command`` (as the run's parser reads it)."""
    value = None
    for index, arg in enumerate(command):
        if arg == flag and index + 1 < len(command):
            value = command[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _stderr(row: dict) -> float:
    """The standard error the gain is judged by: clustered when the task has clusters."""
    return row.get("paired_stderr_clustered", row["paired_stderr"])


def format_table(rows: Sequence[dict]) -> str:
    """A Markdown table: before / after accuracy, gain +- paired standard error, gain / SE, wall time.

    With clustered standard errors the SE column is ``clustered (by problem)``.
    """
    clustered = bool(rows) and "paired_stderr_clustered" in rows[0]
    se = "+- paired SE clustered (by problem)" if clustered else "+- paired SE"
    lines = [
        f"| seed | before RL | after RL | gain | {se} | gain / SE{' clustered' if clustered else ''} | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        before, after, stderr = row["before"], row["after"], _stderr(row)
        ratio = f"{row['difference'] / stderr:.1f}" if stderr else "-"
        cell = f"{stderr:.4f} ({row['paired_stderr']:.4f})" if clustered else f"{stderr:.4f}"
        lines.append(
            f"| {row['seed']} | {before['accuracy']:.4f} | {after['accuracy']:.4f} | {row['difference']:+.4f} "
            f"| {cell} | {ratio} | {int(row['wall_s'] // 60)} min {round(row['wall_s'] % 60):02d} s |"
        )
    return "\n".join(lines)


def machine() -> str:
    """CPU model, usable CPUs, load average and torch version, for the record."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    import torch

    return f"{model}, {cpus} CPUs, load average (1/5/15 min) {load}, torch {torch.__version__}"


def main(argv: Sequence[str] | None = None, task: str | None = None) -> list[dict]:
    """Run the seeds and print the table; ``task`` fixes the task (the per-task wrappers), else ``--task``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if task is None:
        parser.add_argument("--task", choices=sorted(ENTRY_POINTS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_root", default=None, help="One folder per seed under this (outputs/<task>-seeds).")
    parser.add_argument("--launcher", choices=sorted(LAUNCHERS), default="accelerate")
    parser.add_argument(
        "--reuse_cache", action="store_true", help="Keep each seed's warm-start cache from an earlier run."
    )
    parser.add_argument("--output", default=None, help="Also write the rows (without commands) as JSON here.")
    args = parser.parse_args(argv)
    task = task or args.task
    output_root = Path(args.output_root or f"outputs/{task}-seeds")

    print(f"machine: {machine()}", flush=True)
    launch = "accelerate launch" if args.launcher == "accelerate" else "python"
    entry = " ".join(ENTRY_POINTS[task]).replace(str(ROOT) + os.sep, "")
    print(f"command: {launch} {entry} --seed S {' '.join(extra)}".rstrip(), flush=True)
    rows = []
    for seed in args.seeds:
        folder = output_root / f"seed-{seed}"
        cache = folder / "cache"
        if cache.exists() and not args.reuse_cache:
            shutil.rmtree(cache)
        row = run_tiny(
            task, seed, extra, cache_dir=cache.resolve(), output_dir=folder.resolve(), launcher=args.launcher
        )
        rows.append(row)
        clustered = " (clustered)" if "paired_stderr_clustered" in row else ""
        print(
            f"seed {seed}: {row['before']['accuracy']:.4f} -> {row['after']['accuracy']:.4f}, "
            f"gain {row['difference']:+.4f} +- {_stderr(row):.4f}{clustered}, {row['wall_s']:.0f} s",
            flush=True,
        )
    print(f"machine after: {machine()}")
    print(format_table(rows))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump([{k: v for k, v in row.items() if k != "command"} for row in rows], handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
