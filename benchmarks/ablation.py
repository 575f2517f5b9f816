"""SPG's bounds against one-sided bounds and the baselines on a built-in tiny task, from the same warm starts.

Every (method, seed) is one run of the task's tiny command (`benchmarks/tiny_seeds.py`'s runner: the Sudoku example,
or `trl-spg --task countdown --model_name_or_path tiny`): seed S warm-starts the tiny policy once (cached and shared
by every method of that seed), evaluates greedy held-out accuracy, trains with the method at the task's default
settings (same steps, same ``num_iterations`` for every method), evaluating every ``--eval_every`` steps, and
evaluates again. Only the method's flags differ between the runs of a seed:

    python benchmarks/ablation.py --task sudoku --seeds 0 1 2 3
    python benchmarks/ablation.py --task countdown --seeds 0 1 2 3 --max_runs 4   # one sitting's worth
    python benchmarks/ablation.py --task sudoku --methods spg-mix spg-mix-threshold --seeds 0 1 2   # rollout modes
    python benchmarks/ablation.py --device cuda --task sudoku --seeds 0 1 2 3 4 5 6 7 -- --max_steps 300

Each finished run is appended to ``--results`` (one JSON line, default ``benchmarks/results/ablation_<task>.jsonl``)
and skipped when the same run (task, method, seed, settings) is asked for again, so the table can be completed over
several sittings. The report (``--doc``, default docs/ablation.md, rebuilt from every task's results file) gives per
method the held-out gain (mean over seeds +- standard error over seeds), its difference from spg-mix paired by seed
(same warm start, same held-out problems) +- the standard error of the paired differences, each seed's gain +- its
paired standard error, and whether each of the paper's orderings holds, is reversed or is not resolved at 2 standard
errors (per task, and in one table across tasks); plus each task's held-out accuracy curves. Flags after ``--`` go to
every run (and are part of its key).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_seeds import ENTRY_POINTS, ROOT, machine, run_tiny  # noqa: E402

#: Each method's flags; everything else is the task's tiny default (`num_iterations` included, so d1 and wd1 reuse
#: each rollout batch as often as SPG does).
METHODS = {
    "spg-mix": ["--algorithm", "spg", "--negative_bound", "mix"],
    "spg-eubo": ["--algorithm", "spg", "--negative_bound", "eubo"],
    "spg-elbo": ["--algorithm", "spg", "--negative_bound", "elbo"],
    "spg-none": ["--algorithm", "spg", "--negative_bound", "none"],
    "spg-mix-random": ["--algorithm", "spg", "--negative_bound", "mix", "--masking_strategy", "random"],
    "spg-mix-threshold": [
        *("--algorithm", "spg", "--negative_bound", "mix", "--rollout_decoding", "threshold"),
    ],
    "spg-mix-threshold85": [
        *("--algorithm", "spg", "--negative_bound", "mix", "--rollout_decoding", "threshold"),
        *("--rollout_threshold", "0.85"),
    ],
    "spg-mix-threshold80": [
        *("--algorithm", "spg", "--negative_bound", "mix", "--rollout_decoding", "threshold"),
        *("--rollout_threshold", "0.8"),
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
    "spg-mix-threshold": "spg-mix with threshold decoding 0.9 for the rollouts",
    "spg-mix-threshold85": "spg-mix with threshold decoding 0.85 for the rollouts",
    "spg-mix-threshold80": "spg-mix with threshold decoding 0.8 for the rollouts",
    "spg-mix-prefix": "spg-mix with the prefix KV cache for the rollouts (fixed decoding schedule)",
    "d1": "d1 / diffu-GRPO: one-step estimate, clipped ratio, KL 0.04",
    "wd1": "wd1: one-step estimate, ratio-free weighted likelihood",
}
DEFAULT_METHODS = ["spg-mix", "spg-eubo", "spg-elbo", "spg-none", "d1", "wd1"]
#: The paper's orderings (its ablation: none < ELBO < EUBO < mixture; its Table 1: SPG above d1 and wd1).
ORDERINGS = [("spg-mix", "spg-eubo"), ("spg-eubo", "spg-elbo"), ("spg-elbo", "spg-none")]
ORDERINGS += [("spg-mix", "d1"), ("spg-mix", "wd1")]
TITLES = {"sudoku": "tiny 4x4 Sudoku", "countdown": "tiny Countdown"}


def results_path(task: str) -> Path:
    return ROOT / "benchmarks" / "results" / f"ablation_{task}.jsonl"


@functools.cache
def defaults_fingerprint(task: str) -> str:
    """A short hash of what the task's tiny run is by default: its training and SPG settings, its warm-start spec and
    its built-in problems. Part of a run's key, so a stored result is not reused once the defaults change."""
    import dataclasses
    import hashlib

    from trl_spg.tasks import get_task
    from trl_spg.tiny import tiny_policy_module

    module = tiny_policy_module(task)
    specs = [value for value in vars(module).values() if isinstance(value, type) and dataclasses.is_dataclass(value)]
    payload = {
        "training": module.TRAINING_DEFAULTS,
        "spg": module.SPG_DEFAULTS,
        "specs": {spec.__name__: dataclasses.asdict(spec()) for spec in specs if spec.__module__ == module.__name__},
        "problems": {split: get_task(task).builtin(split) for split in ("train", "test")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_key(task: str, method: str, seed: int, args, extra: Sequence[str]) -> dict:
    """What makes two runs the same experiment (the machine does not: CPU numerics differ, the design does not)."""
    return {
        "task": task,
        "method": method,
        "seed": seed,
        "eval_every": args.eval_every,
        "eval_limit": args.eval_limit,
        "device": args.device,
        "extra": list(extra),
        "defaults": defaults_fingerprint(task),
    }


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_method(key: dict, args) -> dict:
    """One run of the task's tiny command with the method's flags; the stored row (key, results, wall time)."""
    flags = [*METHODS[key["method"]], "--eval_every", str(key["eval_every"])]
    flags += ["--use_cpu", str(key["device"] == "cpu").lower()]
    if key["eval_limit"] is not None:
        flags += ["--eval_limit", str(key["eval_limit"])]
    root = Path(args.output_root) / key["task"]
    results = run_tiny(
        key["task"],
        key["seed"],
        [*flags, *key["extra"]],
        cache_dir=(root / "cache" / f"seed-{key['seed']}").resolve(),
        output_dir=(root / key["method"] / f"seed-{key['seed']}").resolve(),
        launcher=args.launcher,
    )
    kept = ("before", "after", "difference", "paired_stderr", "paired_stderr_clustered", "curve", "train_runtime_s")
    return {**key, **{name: results[name] for name in kept if name in results}, "wall_s": results["wall_s"]}


def _stderr(row: dict) -> float:
    """A run's paired standard error: clustered where the task has clusters (Sudoku's solution grids)."""
    return row.get("paired_stderr_clustered", row["paired_stderr"])


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan"))


def summarize(rows: Sequence[dict], methods: Sequence[str], reference: str = "spg-mix") -> list[dict]:
    """Per method: gain over seeds, difference from ``reference`` paired by seed, per-seed gains, mean curve."""
    by_method: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_method.setdefault(row["method"], {})[row["seed"]] = row  # a later row of the same key replaces one
    summaries = []
    for method in methods:
        runs = by_method.get(method, {})
        if not runs:
            continue
        seeds = sorted(runs)
        gain, gain_se = _mean_se([runs[s]["difference"] for s in seeds])
        shared = [s for s in seeds if s in by_method.get(reference, {})]
        paired = [runs[s]["difference"] - by_method[reference][s]["difference"] for s in shared]
        diff, diff_se = _mean_se(paired) if paired and method != reference else (float("nan"), float("nan"))
        curves: dict[int, list[float]] = {}
        for s in seeds:
            curves.setdefault(0, []).append(runs[s]["before"]["accuracy"])
            for point in runs[s].get("curve", []):
                curves.setdefault(point["step"], []).append(point["accuracy"])
        summaries.append(
            {
                "method": method,
                "seeds": seeds,
                "before": statistics.fmean(runs[s]["before"]["accuracy"] for s in seeds),
                "after": statistics.fmean(runs[s]["after"]["accuracy"] for s in seeds),
                "gain": gain,
                "gain_se": gain_se,
                "vs_reference": diff,
                "vs_reference_se": diff_se,
                "vs_reference_seeds": len(paired),
                "per_seed": [(s, runs[s]["difference"], _stderr(runs[s])) for s in seeds],
                "wall_s": statistics.fmean(runs[s]["wall_s"] for s in seeds),
                "curve": {step: statistics.fmean(v) for step, v in sorted(curves.items()) if len(v) == len(seeds)},
            }
        )
    return summaries


def orderings(rows: Sequence[dict]) -> list[dict]:
    """Each of the paper's orderings ``a > b``: the gain difference paired by seed, +- its SE, and a verdict."""
    by_method: dict[str, dict[int, float]] = {}
    for row in rows:
        by_method.setdefault(row["method"], {})[row["seed"]] = row["difference"]
    verdicts = []
    for better, worse in ORDERINGS:
        seeds = sorted(set(by_method.get(better, {})) & set(by_method.get(worse, {})))
        if len(seeds) < 2:
            continue
        diff, se = _mean_se([by_method[better][s] - by_method[worse][s] for s in seeds])
        verdict = "holds" if diff > 2 * se else "reversed" if diff < -2 * se else "not resolved"
        verdicts.append({"claim": f"{better} > {worse}", "difference": diff, "se": se, "seeds": len(seeds),
                         "verdict": verdict})  # fmt: skip
    return verdicts


def _fmt(value: float, se: float, digits: int = 4) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:+.{digits}f}" + ("" if math.isnan(se) else f" +- {se:.{digits}f}")


def format_table(summaries: Sequence[dict]) -> str:
    lines = [
        "| method | seeds | before | after | gain (mean +- SE over seeds) | minus spg-mix (paired by seed) "
        "| per seed: gain +- paired SE | wall time / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summaries:
        per_seed = ", ".join(f"{gain:+.3f} +- {se:.3f} ({seed})" for seed, gain, se in row["per_seed"])
        lines.append(
            f"| {row['method']} | {len(row['seeds'])} | {row['before']:.4f} | {row['after']:.4f} "
            f"| {_fmt(row['gain'], row['gain_se'])} | {_fmt(row['vs_reference'], row['vs_reference_se'])} "
            f"| {per_seed} | {row['wall_s'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def format_orderings(verdicts: Sequence[dict]) -> str:
    lines = ["| paper's ordering | gain difference (paired by seed) | seeds | at 2 SE |", "|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v['claim']} | {_fmt(v['difference'], v['se'])} | {v['seeds']} | {v['verdict']} |")
    return "\n".join(lines)


def format_across_tasks(verdicts: dict[str, Sequence[dict]]) -> str:
    """One row per paper's ordering, one column per task: where the orderings hold on more than one task."""
    tasks = [task for task in sorted(verdicts) if verdicts[task]]
    lines = [
        "| paper's ordering | " + " | ".join(TITLES.get(t, t) for t in tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    for better, worse in ORDERINGS:
        claim, cells = f"{better} > {worse}", []
        for task in tasks:
            v = next((v for v in verdicts[task] if v["claim"] == claim), None)
            cells.append(f"{v['verdict']}: {_fmt(v['difference'], v['se'])} ({v['seeds']} seeds)" if v else "-")
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(task: str, summaries: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in summaries:
        if len(row["curve"]) > 1:
            steps, accuracy = zip(*row["curve"].items())
            ax.plot(steps, accuracy, marker=".", label=f"{row['method']} ({len(row['seeds'])} seeds)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out accuracy (mean over seeds)")
    ax.set_title(f"{TITLES.get(task, task)}: held-out accuracy during RL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_doc(path: Path, stores: dict[str, Path]) -> None:
    """The report over every task's results file (all runs so far, whichever sitting ran them)."""
    sections, verdicts_by_task = [], {}
    for task, store in sorted(stores.items()):
        stored = load_results(store)
        rows = [row for row in stored if row.get("defaults") == defaults_fingerprint(task)]
        if not rows:
            continue
        stale = len(stored) - len(rows)
        shown = [m for m in METHODS if m in {row["method"] for row in rows}]
        summaries = summarize(rows, shown)
        plot = path.with_name(f"{path.stem}_{task}.png")
        plot_curves(task, summaries, plot)
        hours = sum(row["wall_s"] for row in rows) / 3600
        machines = sorted({row.get("machine", "?").split(", load")[0] for row in rows})
        methods_text = "\n".join(f"- `{row['method']}`: {DESCRIPTIONS[row['method']]}" for row in summaries)
        verdicts = verdicts_by_task[task] = orderings(rows)
        extras = sorted({" ".join(row["extra"]) for row in rows})
        command = " | ".join(
            f"`python benchmarks/ablation.py --task {task} --seeds ...{' -- ' + e if e else ''}`" for e in extras
        )
        sections.append(
            f"""## {TITLES.get(task, task)}

{len(rows)} runs, {hours:.1f} hours of compute in all (machines: {"; ".join(machines)}). Command: {command}
(results: `benchmarks/results/ablation_{task}.jsonl`{f"; {stale} runs under earlier defaults not shown" if stale else ""}).

{methods_text}

{format_table(summaries)}

{format_orderings(verdicts) if verdicts else "No ordering has two paired seeds yet."}

![{task} held-out accuracy curves]({plot.name})
"""
        )
    path.write_text(
        f"""# Ablation: SPG's bounds and the baselines on the tiny tasks

Written by `benchmarks/ablation.py` from every finished run in `benchmarks/results/`; rerun it to add seeds or
methods (finished runs are skipped). Each method trains the task's built-in tiny policy from the same warm start per
seed, at the task's default settings (the same steps and `num_iterations` for every method), and is evaluated
greedily on held-out problems before, during and after RL. "gain" is after minus before, as a mean over seeds +- the
standard error over seeds; "minus spg-mix" is the method's gain minus spg-mix's on the same seed (same warm start,
same held-out problems), averaged over seeds +- the standard error of those paired differences; each seed's gain is
shown +- its paired standard error over problems (clustered by solution grid for Sudoku, by set of numbers for
Countdown). An ordering "holds" when the paired difference exceeds 2 of its standard errors, is "reversed" below -2,
and is otherwise "not resolved".
Wall time includes each seed's warm start for the first method run on it.

The paper's orderings on every task, paired by seed (the tasks' sections below give each method's numbers):

{format_across_tasks(verdicts_by_task)}

{chr(10).join(sections)}"""
    )


def main(argv: Sequence[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(ENTRY_POINTS), default="sudoku")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=DEFAULT_METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--eval_every", type=int, default=40, help="Held-out evaluation every this many steps.")
    parser.add_argument("--eval_limit", type=int, default=None, help="Held-out problems (default: the task's).")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--launcher", choices=["accelerate", "python"], default="python")
    parser.add_argument("--max_runs", type=int, default=None, help="Stop after this many new runs (one sitting).")
    parser.add_argument("--results", default=None, help="JSON-lines store (default benchmarks/results/...).")
    parser.add_argument("--output_root", default="outputs/ablation", help="Run folders and warm-start caches.")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "ablation.md"), help="Markdown report ('' to skip).")
    args = parser.parse_args(own)
    store = Path(args.results) if args.results else results_path(args.task)
    store.parent.mkdir(parents=True, exist_ok=True)

    print(f"machine: {machine()}", flush=True)
    new_runs = 0
    for seed in args.seeds:  # seed-major: every method of a seed reuses that seed's cached warm start
        for method in args.methods:
            key = run_key(args.task, method, seed, args, extra)
            # Read before every run: another sitting (e.g. a process on other seeds) may have added it meanwhile.
            if key in [{k: row.get(k) for k in key} for row in load_results(store)]:
                continue
            if args.max_runs is not None and new_runs >= args.max_runs:
                break
            row = {**run_method(key, args), "machine": machine()}
            with open(store, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            new_runs += 1
            print(
                f"{method} seed {seed}: {row['before']['accuracy']:.4f} -> {row['after']['accuracy']:.4f}, gain "
                f"{row['difference']:+.4f} +- {_stderr(row):.4f}, {row['wall_s']:.0f} s",
                flush=True,
            )
    keys = [run_key(args.task, m, s, args, extra) for s in args.seeds for m in args.methods]
    asked = [row for row in load_results(store) if {k: row.get(k) for k in keys[0]} in keys]
    summaries = summarize(asked, args.methods)
    print(format_table(summaries))
    verdicts = orderings(asked)
    if verdicts:
        print(format_orderings(verdicts))
    if args.doc:
        write_doc(Path(args.doc), {**{task: results_path(task) for task in ENTRY_POINTS}, args.task: store})
    return summaries


if __name__ == "__main__":
    main()
