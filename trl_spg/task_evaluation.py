"""The paper's evaluation protocol for any registered task, as a function, a command line and a training callback.

Protocol (SPG paper, Table 1): greedy decoding (temperature 0) with low-confidence remasking, blocks of 32 tokens,
``gen_length / 2`` denoising steps, at generation lengths 128, 256 and 512; each task's own rule scores a
completion (`trl_spg.tasks.base.Task.score`). Problems are decoded in left-padded batches; under
``accelerate launch`` every process decodes its share of the problems and the main process gathers the records and
writes the files.

Every task scores a completion as ``correct`` out of ``total`` (1 per problem, or a puzzle's empty cells for
Sudoku), and accuracy is ``sum(correct) / sum(total)``. Its standard error is the ratio estimator's over problems,
``sqrt(n / (n - 1) * sum_i (correct_i - accuracy * total_i) ** 2) / sum_i total_i``, which for one point per problem
is ``sqrt(accuracy * (1 - accuracy) / (n - 1))`` and for Sudoku keeps the cells of one puzzle together.

Command line (``python -m trl_spg.evaluation`` runs the same):

    accelerate launch --num_processes 8 -m trl_spg.evaluation --task gsm8k \\
        --model_name_or_path GSAI-ML/LLaDA-8B-Instruct --adapter outputs/gsm8k-llada-spg \\
        --gen_lengths 128 256 512 --output_dir outputs/eval

``--decoding threshold --threshold 0.9 --min_tokens_per_step M --kv_cache prefix|dual --cache_refresh_every N``
decode with `diffusion_generate`'s opt-in fast modes (approximate; the default is the exact sampler); the summary
records them under ``fast_decoding``.

``--model_name_or_path tiny`` is the built-in tiny Sudoku policy (`trl_spg.tasks.sudoku_tiny`; warm-started and
cached on first use), with compact prompts and 20-token generations by default: a CPU smoke run of the harness.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from trl.models.utils import unwrap_model_for_generation

from .evaluation import generate_completions, render_prompts
from .sampler import DECODING_MODES, EXACT_DECODING, KV_CACHES, decoding_option_problems
from .tasks import Task, get_task, task_names
from .tasks.sudoku_tiny import TINY_COMPLETION_LENGTH, TINY_MODEL, load_tiny_policy

__all__ = [
    "TINY_MODEL",
    "TaskEvaluationCallback",
    "evaluate_task",
    "main",
    "markdown_table",
    "ratio_stderr",
    "rollout_decoding_options",
    "summarize",
]

DEFAULT_BLOCK_LENGTH = 32


# ---------------------------------------------------------------------------------------------------------------------
# Statistics


def ratio_stderr(correct: Sequence[float], total: Sequence[float]) -> float:
    """Standard error of ``sum(correct) / sum(total)`` over problems (see the module docstring); 0 below 2 problems."""
    n, denominator = len(correct), float(sum(total))
    if n < 2 or denominator == 0:
        return 0.0
    accuracy = sum(correct) / denominator
    residual = sum((c - accuracy * t) ** 2 for c, t in zip(correct, total, strict=True))
    return math.sqrt(residual * n / (n - 1)) / denominator


def summarize(records: Sequence[dict]) -> dict:
    """``problems``, ``correct``, ``total``, ``accuracy`` and ``stderr`` of scored records."""
    correct = [float(r["correct"]) for r in records]
    total = [float(r["total"]) for r in records]
    denominator = sum(total)
    return {
        "problems": len(records),
        "correct": sum(correct),
        "total": denominator,
        "accuracy": sum(correct) / denominator if denominator else 0.0,
        "stderr": ratio_stderr(correct, total),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and scoring


def _state():
    """The process group of this run (``accelerate launch`` sets it up; a plain ``python`` run is one process).

    Without an accelerator the processes of ``accelerate launch --multi_gpu`` talk over gloo: accelerate only sets
    that up when told to use the CPU.
    """
    from accelerate import PartialState

    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    return PartialState(cpu=not has_accelerator)


def decoding_settings(gen_length: int, block_length: int = DEFAULT_BLOCK_LENGTH, steps: int | None = None) -> dict:
    """``block_length`` (capped at ``gen_length``) and ``steps`` (default ``gen_length / 2``, at least one a block)."""
    block = min(block_length, gen_length)
    if steps is None:
        steps = max(gen_length // 2, gen_length // block)
    return {"gen_length": gen_length, "block_length": block, "steps": steps}


def rollout_decoding_options(args) -> dict:
    """`diffusion_generate`'s fast-mode keywords as a training config's rollouts use them (its ``rollout_*``
    fields, see `DiffusionGRPOConfig`); empty, i.e. the exact sampler, for a config without them."""
    return {key: getattr(args, f"rollout_{key}") for key in EXACT_DECODING if hasattr(args, f"rollout_{key}")}


def generate_and_score(
    task: Task,
    model,
    tokenizer,
    dataset,
    *,
    gen_length: int,
    block_length: int = DEFAULT_BLOCK_LENGTH,
    steps: int | None = None,
    batch_size: int = 16,
    mask_token_id: int | None = None,
    fast_decoding: dict | None = None,
) -> list[dict]:
    """Greedy completions of ``dataset`` (a task dataset with a ``prompt`` column) scored by the task, in order.

    ``fast_decoding`` holds `diffusion_generate`'s fast-mode keywords (``decoding``, ``threshold``,
    ``min_tokens_per_step``, ``kv_cache``, ``cache_refresh_every``); None or missing keys: the exact sampler.

    Each process decodes its contiguous share of the problems; the records of all processes are gathered, so
    every process returns the full list. A record holds ``index``, ``gen_length``, the rendered ``prompt``, the
    ``completion``, the task's ``prediction`` / ``correct`` / ``total`` and the example's other columns.
    """
    from accelerate.utils import gather_object

    settings = decoding_settings(gen_length, block_length, steps)
    state = _state()
    with state.split_between_processes(list(range(len(dataset)))) as shard:
        rows = [dataset[i] for i in shard]
        prompts = [row["prompt"] for row in rows]
        completions = (
            generate_completions(
                model,
                tokenizer,
                prompts,
                temperature=0.0,
                batch_size=batch_size,
                mask_token_id=mask_token_id,
                **settings,
                **(fast_decoding or {}),
            )
            if prompts
            else []
        )
        rendered = render_prompts(tokenizer, prompts)
        records = []
        for index, row, text, completion in zip(shard, rows, rendered, completions, strict=True):
            example = {key: value for key, value in row.items() if key != "prompt"}
            scored = task.score(completion, example)
            records.append(
                {
                    "index": index,
                    "gen_length": gen_length,
                    **scored,
                    "completion": completion,
                    "prompt": text,
                    **{key: value for key, value in example.items() if key not in scored},
                }
            )
    gathered = gather_object(records) if state.num_processes > 1 else records
    return sorted(gathered, key=lambda record: record["index"])


# ---------------------------------------------------------------------------------------------------------------------
# Reports


def _cell(result: dict) -> str:
    return f"{100 * result['accuracy']:.1f} ± {100 * result['stderr']:.1f} (n={result['problems']})"


def markdown_table(summaries: Sequence[dict]) -> str:
    """Results as the paper's Table 1: one row per model, a column per (task, generation length).

    Cells are accuracy ± standard error in percent and the number of problems. Summaries of several tasks (or
    models) merge into one table; tasks keep their first-seen order.
    """
    columns: list[tuple[str, int]] = []
    rows: dict[str, dict[tuple[str, int], str]] = {}
    for summary in summaries:
        row = rows.setdefault(summary["model"], {})
        for result in summary["results"]:
            key = (summary["title"], result["gen_length"])
            if key not in columns:
                columns.append(key)
            row[key] = _cell(result)
    order = {title: i for i, title in enumerate(dict.fromkeys(title for title, _ in columns))}
    columns.sort(key=lambda key: (order[key[0]], key[1]))
    header = "| Model | " + " | ".join(f"{title} {length}" for title, length in columns) + " |"
    lines = [header, "|---|" + "---|" * len(columns)]
    for model, cells in rows.items():
        lines.append(f"| {model} | " + " | ".join(cells.get(key, "") for key in columns) + " |")
    return "\n".join(lines) + "\n"


def write_reports(summary: dict, records: Sequence[dict], output_dir: str | os.PathLike) -> dict[str, str]:
    """``<task>_generations.jsonl`` (one record per problem and length), ``<task>_summary.json``, ``<task>_table.md``."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = summary["task"]
    paths = {
        "generations": folder / f"{name}_generations.jsonl",
        "summary": folder / f"{name}_summary.json",
        "table": folder / f"{name}_table.md",
    }
    with open(paths["generations"], "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    paths["table"].write_text(markdown_table([summary]), encoding="utf-8")
    return {key: str(path) for key, path in paths.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate_task(
    task: str | Task,
    model,
    tokenizer,
    *,
    split: str = "test",
    data=None,
    dataset=None,
    prompt_style: str | None = None,
    prompt_options: dict | None = None,
    limit: int | None = None,
    gen_lengths: Sequence[int] | None = None,
    block_length: int = DEFAULT_BLOCK_LENGTH,
    steps: int | None = None,
    batch_size: int = 16,
    mask_token_id: int | None = None,
    fast_decoding: dict | None = None,
    model_label: str = "model",
    output_dir: str | os.PathLike | None = None,
) -> dict:
    """Evaluate ``model`` on ``task`` with the paper's protocol; returns the summary (and writes the reports).

    ``fast_decoding`` (`diffusion_generate`'s fast-mode keywords, see `generate_and_score`) departs from the
    protocol's exact sampler; the summary records the decoding used under ``fast_decoding``.

    ``dataset`` (a task dataset with a ``prompt`` column) overrides ``split`` / ``data`` / ``prompt_style`` /
    ``limit``. The summary has one entry per generation length in ``results``; ``records`` (per-problem
    completions and scores) is returned beside it and written to ``output_dir`` by the main process.
    """
    task = get_task(task)
    style = prompt_style or task.eval_prompt
    if dataset is None:
        dataset = task.dataset(split, prompt_style=style, data=data, limit=limit, **(prompt_options or {}))
    lengths = list(gen_lengths or task.gen_lengths)
    state = _state()
    results, records = [], []
    for gen_length in lengths:
        scored = generate_and_score(
            task,
            model,
            tokenizer,
            dataset,
            gen_length=gen_length,
            block_length=block_length,
            steps=steps,
            batch_size=batch_size,
            mask_token_id=mask_token_id,
            fast_decoding=fast_decoding,
        )
        settings = decoding_settings(gen_length, block_length, steps)
        results.append({**settings, **summarize(scored)})
        records.extend(scored)
    summary = {
        "task": task.name,
        "title": task.title,
        "model": model_label,
        "split": split,
        "data": data if data is None or isinstance(data, (str, os.PathLike)) else type(data).__name__,
        "prompt_style": style,
        "temperature": 0.0,
        "remasking": "low_confidence",
        "fast_decoding": {**EXACT_DECODING, **(fast_decoding or {})},
        "num_processes": state.num_processes,
        "stderr_method": "ratio estimator over problems: sqrt(n/(n-1) * sum_i (correct_i - acc * total_i)^2) / "
        "sum_i total_i (sqrt(acc(1-acc)/(n-1)) when each problem counts 1)",
        "results": results,
    }
    if isinstance(summary["data"], os.PathLike):
        summary["data"] = str(summary["data"])
    if output_dir is not None and state.is_main_process:
        summary["files"] = write_reports(summary, records, output_dir)
    state.wait_for_everyone()
    return {**summary, "records": records}


class TaskEvaluationCallback(TrainerCallback):
    """Evaluate a task every ``every`` optimizer steps during training and log ``eval_task/<task>/accuracy``.

    Takes the trainer, like TRL's own completion-logging callback:

        trainer.add_callback(TaskEvaluationCallback(trainer, "gsm8k", every=100, gen_length=256, limit=256))

    The evaluation set (``split`` of the task, ``prompt_style`` default: the paper's evaluation prompt) is built
    once. Greedy decoding follows the paper's protocol at one generation length, with the fast modes of the
    trainer's rollouts (its config's ``rollout_*`` fields; the exact sampler by default) unless ``fast_decoding``
    says otherwise (``{}``: the exact sampler whatever the rollouts use). The metrics
    (``eval_task/<task>/accuracy`` and ``.../stderr``) go through `transformers.Trainer.log`, so they reach the
    log history and every reporting integration without flushing the trainer's running training metrics. Results
    are also kept in ``history``.
    """

    def __init__(
        self,
        trainer,
        task: str | Task,
        *,
        every: int,
        gen_length: int = 256,
        block_length: int = DEFAULT_BLOCK_LENGTH,
        steps: int | None = None,
        split: str = "test",
        data=None,
        prompt_style: str | None = None,
        prompt_options: dict | None = None,
        limit: int | None = None,
        batch_size: int = 16,
        eval_on_start: bool = False,
        fast_decoding: dict | None = None,
    ):
        if every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every}")
        self.trainer = trainer
        self.task = get_task(task)
        self.every, self.eval_on_start = every, eval_on_start
        self.decoding = {"gen_length": gen_length, "block_length": block_length, "steps": steps}
        self.batch_size = batch_size
        self.fast_decoding = dict(rollout_decoding_options(trainer.args) if fast_decoding is None else fast_decoding)
        self.dataset = self.task.dataset(
            split, prompt_style=prompt_style or self.task.eval_prompt, data=data, limit=limit, **(prompt_options or {})
        )
        self.history: list[dict] = []

    def evaluate(self, step: int) -> dict:
        trainer = self.trainer
        unwrapped = unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator)
        with unwrapped as model, torch.no_grad(), trainer.accelerator.autocast():
            records = generate_and_score(
                self.task,
                model,
                trainer.processing_class,
                self.dataset,
                batch_size=self.batch_size,
                mask_token_id=getattr(trainer, "mask_token_id", None),
                fast_decoding=self.fast_decoding,
                **self.decoding,
            )
        result = {"step": step, **summarize(records)}
        self.history.append(result)
        prefix = f"eval_task/{self.task.name}"
        # `on_log` clears `should_log`; keep it so the trainer still logs its own metrics at this step.
        should_log = trainer.control.should_log
        Trainer.log(trainer, {f"{prefix}/accuracy": result["accuracy"], f"{prefix}/stderr": result["stderr"]})
        trainer.control.should_log = should_log
        return result

    def on_train_begin(self, args, state, control, **kwargs):
        if self.eval_on_start:
            self.evaluate(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.evaluate(state.global_step)


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trl_spg.evaluation",
        description="Evaluate a masked diffusion LM on a task with the SPG paper's protocol (greedy, block 32, "
        "steps = gen_length / 2). Run under `accelerate launch` to split the problems over processes.",
    )
    parser.add_argument("--task", default="sudoku", help=f"One of: {', '.join(task_names())} (default: sudoku).")
    parser.add_argument(
        "--model_name_or_path",
        default=None,
        help=f"Hub id or folder of the model; '{TINY_MODEL}' is the built-in tiny Sudoku policy (CPU smoke runs).",
    )
    parser.add_argument("--adapter", default=None, help="PEFT adapter (path or hub id) to load on top of the model.")
    parser.add_argument("--model_label", default=None, help="Row name in the table (default: from the paths).")
    parser.add_argument(
        "--gen_lengths", "--gen_length", dest="gen_lengths", type=int, nargs="+", default=None,
        help="Generation lengths (default: the task's, 128 256 512; 20 with the tiny model).",
    )  # fmt: skip
    parser.add_argument("--block_length", type=int, default=DEFAULT_BLOCK_LENGTH)
    parser.add_argument("--steps", type=int, default=None, help="Denoising steps (default: gen_length / 2).")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--data",
        default=None,
        help="'hub', 'builtin', or a local file / folder (JSON, JSONL, CSV, Parquet) in the dataset's schema "
        "(default: the task's own source).",
    )
    parser.add_argument("--prompt_style", default=None, help="A prompt style of the task (default: the paper's).")
    parser.add_argument(
        "--few_shot", type=int, default=None, help="Worked examples, for tasks whose prompts have them."
    )
    parser.add_argument(
        "--limit", "--num_puzzles", dest="limit", type=int, default=None, help="First N problems only."
    )
    parser.add_argument("--batch_size", type=int, default=16)
    fast = parser.add_argument_group(
        "fast decoding", "diffusion_generate's opt-in fast modes (approximate; the defaults are the exact sampler)"
    )
    fast.add_argument(
        "--decoding",
        choices=DECODING_MODES,
        default=EXACT_DECODING["decoding"],
        help="'fixed': the exact sampler; 'threshold': confidence-threshold parallel decoding.",
    )
    fast.add_argument(
        "--threshold",
        type=float,
        default=EXACT_DECODING["threshold"],
        help="Confidence threshold of --decoding threshold, in (0, 1].",
    )
    fast.add_argument(
        "--min_tokens_per_step",
        type=int,
        default=EXACT_DECODING["min_tokens_per_step"],
        help="Per-step minimum of --decoding threshold (default: the fixed schedule's count).",
    )
    fast.add_argument(
        "--kv_cache",
        choices=KV_CACHES,
        default=EXACT_DECODING["kv_cache"],
        help="Block-wise approximate KV cache: 'none' (exact), 'prefix' or 'dual'.",
    )
    fast.add_argument(
        "--cache_refresh_every",
        type=int,
        default=EXACT_DECODING["cache_refresh_every"],
        help="Also refresh the KV cache every this many forwards of a block (default: only at block starts).",
    )
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--mask_token_id", type=int, default=None)
    parser.add_argument("--output_dir", default=None, help="Where the reports go (default: outputs/eval).")
    parser.add_argument(
        "--merge", nargs="+", default=None, metavar="SUMMARY", help="Print one table from saved *_summary.json files."
    )
    return parser


def _fast_decoding(args) -> dict:
    return {key: getattr(args, key) for key in EXACT_DECODING}


def _label(args) -> str:
    if args.model_label:
        return args.model_label
    label = os.path.basename(os.path.normpath(args.model_name_or_path))
    if args.adapter:
        label += " + " + os.path.basename(os.path.normpath(args.adapter))
    options = _fast_decoding(args)
    if options["decoding"] == "fixed":
        del options["threshold"]  # unused by the exact schedule
    fast = [f"{key}={value}" for key, value in options.items() if value != EXACT_DECODING[key]]
    if fast:
        label += f" ({', '.join(fast)})"  # approximate decoding, not the protocol's exact sampler
    return label


def main(argv: Sequence[str] | None = None) -> dict:
    parser = _parser()
    args = parser.parse_args(argv)
    problems = decoding_option_problems(**_fast_decoding(args))
    if problems:
        parser.error(" ".join(problems))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.merge:
        summaries = [json.loads(Path(path).read_text()) for path in args.merge]
        table = markdown_table(summaries)
        print(table, end="")
        return {"table": table}
    if not args.model_name_or_path:
        raise SystemExit("--model_name_or_path is required (or --merge).")

    task = get_task(args.task)
    state = _state()
    tiny = args.model_name_or_path == TINY_MODEL
    if tiny:
        with state.main_process_first():  # the first process warm-starts and caches, the others load the cache
            model, tokenizer = load_tiny_policy()
    else:
        from .checkpoints import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(args.model_name_or_path, dtype=args.dtype)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    model = model.to(state.device).eval()

    prompt_style = args.prompt_style or ("compact" if tiny and "compact" in task.prompts else None)
    gen_lengths = args.gen_lengths or ([TINY_COMPLETION_LENGTH] if tiny else None)
    prompt_options = {"few_shot": args.few_shot} if args.few_shot is not None else {}
    result = evaluate_task(
        task,
        model,
        tokenizer,
        split=args.split,
        data=args.data,
        prompt_style=prompt_style,
        prompt_options=prompt_options,
        limit=args.limit,
        gen_lengths=gen_lengths,
        block_length=args.block_length,
        steps=args.steps,
        batch_size=args.batch_size,
        mask_token_id=args.mask_token_id,
        fast_decoding=_fast_decoding(args),
        model_label=_label(args),
        output_dir=args.output_dir or "outputs/eval",
    )
    if state.is_main_process:
        print(markdown_table([result]), end="")
        files = result.get("files", {})
        if files:
            print(f"Per-problem generations: {files['generations']}\nSummary: {files['summary']}")
    return result


if __name__ == "__main__":
    main()
