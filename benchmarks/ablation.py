"""SPG's bounds against one-sided bounds and the baselines on the tiny Sudoku task, from the same warm starts.

Every (method, seed) is one run of the Sudoku example (`examples/train_sudoku.py`, through the same runner as
`benchmarks/sudoku_seeds.py`): seed S warm-starts the tiny policy once (cached and shared by every method of that
seed), evaluates held-out accuracy, trains with the method for ``--steps`` optimizer steps, evaluating every
``--eval_every`` steps, and evaluates again. Only the method's flags differ between the runs of a seed:

    python benchmarks/ablation.py --methods spg-mix spg-elbo d1 wd1 --seeds 2 --steps 40
    python benchmarks/ablation.py --methods spg-mix spg-mix-fast --seeds 2 --steps 40   # exact vs fast rollouts
    python benchmarks/ablation.py --device cuda --methods spg-mix spg-eubo spg-elbo spg-none --seeds 2 --steps 300

It prints and writes (``--doc``, default docs/ablation.md) a table of the held-out gain per method: mean over seeds
+- the standard error over seeds, each seed's gain +- its paired standard error (clustered by solution grid), and
wall time; plus a plot of the held-out accuracy curves (mean over seeds) beside the document. Flags after ``--`` go to
every run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sudoku_seeds import ROOT, machine, run_sudoku  # noqa: E402

#: Each method's flags for the example; everything else is the example's tiny default.
METHODS = {
    "spg-mix": ["--algorithm", "spg", "--negative_bound", "mix"],
    "spg-eubo": ["--algorithm", "spg", "--negative_bound", "eubo"],
    "spg-elbo": ["--algorithm", "spg", "--negative_bound", "elbo"],
    "spg-none": ["--algorithm", "spg", "--negative_bound", "none"],
    "spg-mix-random": ["--algorithm", "spg", "--negative_bound", "mix", "--masking_strategy", "random"],
    "spg-mix-fast": [
        *("--algorithm", "spg", "--negative_bound", "mix"),
        *("--rollout_decoding", "threshold", "--rollout_kv_cache", "prefix"),
    ],
    "spg-mix-fast99": [
        *("--algorithm", "spg", "--negative_bound", "mix"),
        *("--rollout_decoding", "threshold", "--rollout_threshold", "0.99", "--rollout_kv_cache", "prefix"),
    ],
    "spg-mix-threshold": [
        *("--algorithm", "spg", "--negative_bound", "mix", "--rollout_decoding", "threshold"),
    ],
    "spg-mix-prefix": ["--algorithm", "spg", "--negative_bound", "mix", "--rollout_kv_cache", "prefix"],
    "d1": ["--algorithm", "d1"],
    "wd1": ["--algorithm", "wd1"],
}
DESCRIPTIONS = {
    "spg-mix": "SPG, ELBO / EUBO mixture for negative advantages (the default)",
    "spg-eubo": "SPG, EUBO for negative advantages",
    "spg-elbo": "ELBO for every sample (a one-sided bound)",
    "spg-none": "ELBO on positive advantages only; negative samples dropped",
    "spg-mix-random": "spg-mix with random instead of block-wise masks",
    "spg-mix-fast": "spg-mix with fast rollouts (threshold decoding 0.9 + prefix KV cache)",
    "spg-mix-fast99": "spg-mix with fast rollouts (threshold decoding 0.99 + prefix KV cache)",
    "spg-mix-threshold": "spg-mix with threshold decoding 0.9 only (no KV cache)",
    "spg-mix-prefix": "spg-mix with the prefix KV cache only (fixed decoding schedule)",
    "d1": "d1 / diffu-GRPO: one-step estimate, clipped ratio, KL 0.04",
    "wd1": "wd1: one-step estimate, ratio-free weighted likelihood",
}


def run_method(method: str, seed: int, args, extra: Sequence[str]) -> dict:
    """One run of the example with the method's flags; its results and wall time."""
    flags = [*METHODS[method], "--max_steps", str(args.steps), "--eval_every", str(args.eval_every)]
    flags += ["--eval_limit", str(args.eval_puzzles), "--use_cpu", str(args.device == "cpu").lower()]
    folder = Path(args.output_root) / method / f"seed-{seed}"
    return run_sudoku(
        seed,
        [*flags, *extra],
        cache_dir=(Path(args.output_root) / "cache").resolve(),
        output_dir=folder.resolve(),
        launcher=args.launcher,
    )


def summarize(method: str, runs: Sequence[dict]) -> dict:
    """Mean gain over seeds with its standard error over seeds, and the mean accuracy curve."""
    gains = [run["difference"] for run in runs]
    stderr = statistics.stdev(gains) / math.sqrt(len(gains)) if len(gains) > 1 else float("nan")
    curves: dict[int, list[float]] = {}
    for run in runs:
        curves.setdefault(0, []).append(run["before"]["accuracy"])
        for point in run.get("curve", []):
            curves.setdefault(point["step"], []).append(point["accuracy"])
    return {
        "method": method,
        "gain": statistics.fmean(gains),
        "gain_stderr": stderr,
        "before": statistics.fmean(run["before"]["accuracy"] for run in runs),
        "after": statistics.fmean(run["after"]["accuracy"] for run in runs),
        "per_seed": [(run["seed"], run["difference"], run["paired_stderr_clustered"]) for run in runs],
        "train_s": statistics.fmean(run["train_runtime_s"] for run in runs),
        "wall_s": statistics.fmean(run["wall_s"] for run in runs),
        "curve": {
            step: statistics.fmean(values) for step, values in sorted(curves.items()) if len(values) == len(runs)
        },
    }


def format_table(summaries: Sequence[dict], steps: int) -> str:
    lines = [
        "| method | before | after | gain (mean over seeds +- SE) | per seed: gain +- paired SE by grid "
        "| RL time / step | wall time / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summaries:
        per_seed = ", ".join(f"{gain:+.4f} +- {se:.4f} (seed {seed})" for seed, gain, se in row["per_seed"])
        spread = "" if math.isnan(row["gain_stderr"]) else f" +- {row['gain_stderr']:.4f}"
        lines.append(
            f"| {row['method']} | {row['before']:.4f} | {row['after']:.4f} | {row['gain']:+.4f}{spread} | {per_seed} "
            f"| {row['train_s'] / steps:.2f} s | {row['wall_s'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def plot_curves(summaries: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in summaries:
        steps, accuracy = zip(*row["curve"].items())
        ax.plot(steps, accuracy, marker=".", label=row["method"])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out cell accuracy (mean over seeds)")
    ax.set_title("Tiny 4x4 Sudoku: held-out accuracy during RL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_doc(path: Path, summaries: Sequence[dict], args, extra: Sequence[str], machine_before: str) -> None:
    plot = path.with_suffix(".png")
    plot_curves(summaries, plot)
    # Where the outputs went is this machine's business, not part of the experiment.
    kept, skip = [], False
    for arg in args.argv:
        if skip or arg.split("=", 1)[0] in ("--output", "--output_root", "--doc"):
            skip = not skip and "=" not in arg
            continue
        kept.append(arg)
    command = f"python benchmarks/ablation.py {' '.join(kept)}"
    total_min = sum(row["wall_s"] for row in summaries) * len(args.seed_list) / 60
    methods = "\n".join(f"- `{row['method']}`: {DESCRIPTIONS[row['method']]}" for row in summaries)
    text = f"""# Ablation: SPG's bounds and the baselines on the tiny Sudoku task

Written by `benchmarks/ablation.py`; regenerate with the command below. Each method trains the built-in tiny Sudoku
policy from the same warm start per seed (seeds {", ".join(map(str, args.seed_list))}) for {args.steps} optimizer
steps with the example's tiny settings (`examples/train_sudoku.py`), and is evaluated greedily on
{args.eval_puzzles} held-out puzzles whose solution grids never appear in training, before, every
{args.eval_every} steps and after RL. The gain is after minus before: its mean over seeds +- the standard error over
seeds (a spread of 2 seeds is a rough guide only), and each seed's gain +- its paired standard error clustered by
solution grid.

Command: `{command}`{" (extra example flags: `" + " ".join(extra) + "`)" if extra else ""}

Machine: {machine_before}; all {len(summaries) * len(args.seed_list)} runs took {total_min:.0f} minutes.

Methods:
{methods}

{format_table(summaries, args.steps)}

"RL time / step" is the trainer's runtime divided by the steps (rollouts, scoring, updates, periodic evaluations);
"wall time / run" is the whole process (evaluations, saving, and for the first method of each seed the warm start,
about 50 s on 2 cores; the others load it from the cache).

![held-out accuracy curves]({plot.name})
"""
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["spg-mix", "spg-elbo", "d1", "wd1"])
    parser.add_argument("--seeds", type=int, default=2, help="Number of seeds (0, 1, ...), or see --seed_list.")
    parser.add_argument("--seed_list", type=int, nargs="+", default=None, help="Explicit seeds instead of --seeds.")
    parser.add_argument("--steps", type=int, default=40, help="Optimizer steps per run.")
    parser.add_argument("--eval_every", type=int, default=10, help="Held-out evaluation every this many steps.")
    parser.add_argument("--eval_puzzles", type=int, default=1024, help="Held-out puzzles per evaluation.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--launcher", choices=["accelerate", "python"], default="python")
    parser.add_argument("--output_root", default="outputs/ablation", help="One folder per method and seed.")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "ablation.md"), help="Markdown report ('' to skip).")
    parser.add_argument("--output", default=None, help="Also write the summaries as JSON here.")
    args = parser.parse_args(own)
    args.argv, args.seed_list = own, args.seed_list or list(range(args.seeds))

    machine_before = machine()
    print(f"machine: {machine_before}", flush=True)
    runs: dict[str, list[dict]] = {method: [] for method in args.methods}
    for seed in args.seed_list:  # seed-major: every method of a seed reuses that seed's cached warm start
        for method in args.methods:
            run = run_method(method, seed, args, extra)
            runs[method].append(run)
            print(
                f"{method} seed {seed}: {run['before']['accuracy']:.4f} -> {run['after']['accuracy']:.4f}, gain "
                f"{run['difference']:+.4f} +- {run['paired_stderr_clustered']:.4f}, {run['wall_s']:.0f} s",
                flush=True,
            )
    summaries = [summarize(method, runs[method]) for method in args.methods]
    print(format_table(summaries, args.steps))
    if args.doc:
        write_doc(Path(args.doc), summaries, args, extra, machine_before)
    if args.output:
        Path(args.output).write_text(json.dumps(summaries, indent=2))
    return summaries


if __name__ == "__main__":
    main()
