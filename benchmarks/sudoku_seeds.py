"""The Sudoku example's default run over several seeds: held-out accuracy before / after RL, gain and wall time.

Each seed runs the README command as its own process, with a fresh warm-start cache unless ``--reuse_cache``:

    accelerate launch examples/train_sudoku.py --seed S --output_dir OUT/seed-S    (TRL_SPG_CACHE=OUT/seed-S/cache)

and the table is read from each run's ``sudoku_results.json``. Flags after ``--`` go to every run unchanged:

    python benchmarks/sudoku_seeds.py --seeds 0 1 2                   # the default, as the README runs it
    python benchmarks/sudoku_seeds.py --seeds 0 1 -- --max_steps 300  # any example flag overrides the default

The gain is in units of the paired standard error clustered by solution grid (the standard error over puzzles is
shown too). Figures are in docs/sudoku.md.
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
EXAMPLE = ROOT / "examples" / "train_sudoku.py"
LAUNCHERS = {
    # `accelerate launch`, as the README runs it (it sets OMP_NUM_THREADS; the example picks its own thread count).
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch"],
    "python": [sys.executable],
}


def run_sudoku(
    seed: int,
    extra_args: Sequence[str] = (),
    cache_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    launcher: str = "accelerate",
    log_path: str | os.PathLike | None = None,
) -> dict:
    """Run the Sudoku example once with ``--seed seed`` and return its results with the wall time.

    ``cache_dir`` becomes ``TRL_SPG_CACHE`` (None: the environment's / the default cache); ``output_dir`` is passed
    as ``--output_dir`` (None: the example's default); ``extra_args`` follow, so they override both. The process's
    output goes to ``log_path`` (None: ``run.log`` in the output folder). Returns ``sudoku_results.json`` plus
    ``seed``, ``wall_s`` (the whole process, warm start and evaluations included), ``command`` and ``log``.
    Raises ``RuntimeError`` if the run fails or writes no results.
    """
    command = [*LAUNCHERS[launcher], str(EXAMPLE), "--seed", str(seed)]
    if output_dir is not None:
        command += ["--output_dir", str(output_dir)]
    command += list(extra_args)
    env = dict(os.environ)
    if cache_dir is not None:
        env["TRL_SPG_CACHE"] = str(cache_dir)
    results_dir = Path(_flag_value(command, "--output_dir") or "outputs/sudoku-tiny-spg")
    if not results_dir.is_absolute():
        results_dir = ROOT / results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    results_path = results_dir / "sudoku_results.json"
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
    """The value of the last ``flag VALUE`` / ``flag=VALUE`` in ``command`` (as the example's parser reads it)."""
    value = None
    for index, arg in enumerate(command):
        if arg == flag and index + 1 < len(command):
            value = command[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def format_table(rows: Sequence[dict]) -> str:
    """A Markdown table: before / after accuracy, gain +- paired standard error (by grid, by puzzle), wall time."""
    lines = [
        "| seed | before RL | after RL | gain | +- SE by grid (by puzzle) | gain / SE by grid | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        before, after = row["before"], row["after"]
        by_grid, by_puzzle = row["paired_stderr_clustered"], row["paired_stderr"]
        ratio = f"{row['difference'] / by_grid:.1f}" if by_grid else "-"
        lines.append(
            f"| {row['seed']} | {before['accuracy']:.4f} | {after['accuracy']:.4f} | {row['difference']:+.4f} "
            f"| {by_grid:.4f} ({by_puzzle:.4f}) | {ratio} "
            f"| {int(row['wall_s'] // 60)} min {round(row['wall_s'] % 60):02d} s |"
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


def main(argv: Sequence[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_root", default="outputs/sudoku-seeds", help="One folder per seed under this.")
    parser.add_argument("--launcher", choices=sorted(LAUNCHERS), default="accelerate")
    parser.add_argument(
        "--reuse_cache", action="store_true", help="Keep each seed's warm-start cache from an earlier run."
    )
    parser.add_argument("--output", default=None, help="Also write the rows (without commands) as JSON here.")
    args = parser.parse_args(argv)

    print(f"machine: {machine()}", flush=True)
    launch = "accelerate launch" if args.launcher == "accelerate" else "python"
    print(f"command: {launch} examples/train_sudoku.py --seed S {' '.join(extra)}".rstrip(), flush=True)
    rows = []
    for seed in args.seeds:
        folder = Path(args.output_root) / f"seed-{seed}"
        cache = folder / "cache"
        if cache.exists() and not args.reuse_cache:
            shutil.rmtree(cache)
        row = run_sudoku(seed, extra, cache_dir=cache.resolve(), output_dir=folder.resolve(), launcher=args.launcher)
        rows.append(row)
        print(
            f"seed {seed}: {row['before']['accuracy']:.4f} -> {row['after']['accuracy']:.4f}, "
            f"gain {row['difference']:+.4f} +- {row['paired_stderr_clustered']:.4f} (by grid), {row['wall_s']:.0f} s",
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
