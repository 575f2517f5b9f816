"""The paper's evaluation protocol for any task: decode, score, summarise, report.

Protocol (SPG paper, Table 1): greedy decoding (temperature 0) with low-confidence remasking, blocks of 32 tokens,
``gen_length / 2`` denoising steps, at generation lengths 128, 256 and 512 (a `DecodingConfig` at its defaults).
Every completion gets two verdicts (`trl_spg.tasks.base.Task.score`): the task's own rule (``grader="strict"``, on
the completion cut at its first EOS) and the paper's reference evaluation (``grader="paper"``, on the whole
generation decoded with its special tokens, as the reference reads it; `trl_spg.tasks.paper_grader`). Problems are
decoded in left-padded batches; under ``accelerate launch`` every process decodes its share of the problems and the
main process gathers the records and writes the files. Accuracy and standard errors: `trl_spg.evaluation.stats`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..decoding import DecodingConfig
from ..tasks import Task, get_task
from .decode import generate_completions, render_prompts
from .stats import summarize


def process_state():
    """The process group of this run (``accelerate launch`` sets it up; a plain ``python`` run is one process).

    Without an accelerator the processes of ``accelerate launch --multi_gpu`` talk over gloo: accelerate only sets
    that up when told to use the CPU.
    """
    from accelerate import PartialState

    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    return PartialState(cpu=not has_accelerator)


def generate_and_score(
    task: Task,
    model,
    tokenizer,
    dataset,
    decoding: DecodingConfig,
    *,
    batch_size: int = 16,
    mask_token_id: int | None = None,
    progress: bool | str = False,
) -> list[dict]:
    """Completions of ``dataset`` (a task dataset with a ``prompt`` column) scored by the task, in order.

    Each process decodes its contiguous share of the problems; the records of all processes are gathered, so every
    process returns the full list. A record holds ``index``, ``gen_length``, the rendered ``prompt``, the
    ``completion``, the task's ``prediction`` / ``correct`` / ``total`` (strict grader), the paper grader's
    ``paper_prediction`` / ``paper_correct`` / ``paper_total`` (tasks with one), the ``raw_completion`` it read (the
    whole generation with its special tokens) and the example's other columns. With ``progress`` the main process
    shows a bar over its problems (a string ``progress`` is the bar's label).
    """
    from accelerate.utils import gather_object

    state = process_state()
    with state.split_between_processes(list(range(len(dataset)))) as shard:
        rows = [dataset[i] for i in shard]
        prompts = [row["prompt"] for row in rows]
        bar = tqdm(
            total=len(prompts),
            desc=progress if isinstance(progress, str) else f"{task.name} (gen_length {decoding.gen_length})",
            unit="problem",
            leave=False,
            disable=not (progress and state.is_main_process),
        )
        with bar:
            completions, raw_texts = generate_completions(
                model,
                tokenizer,
                prompts,
                decoding,
                batch_size=batch_size,
                mask_token_id=mask_token_id,
                progress=bar,
                raw=True,
            )
        rendered = render_prompts(tokenizer, prompts)
        records = []
        for index, row, text, completion, raw_text in zip(shard, rows, rendered, completions, raw_texts, strict=True):
            example = {key: value for key, value in row.items() if key != "prompt"}
            record = {"index": index, "gen_length": decoding.gen_length, **task.score(completion, example)}
            if task.paper_score is not None:
                paper = task.score(raw_text, example, grader="paper")
                record.update({f"paper_{key}": value for key, value in paper.items()})
            record.update(completion=completion, raw_completion=raw_text, prompt=text)
            records.append({**record, **{key: value for key, value in example.items() if key not in record}})
    gathered = gather_object(records) if state.num_processes > 1 else records
    return sorted(gathered, key=lambda record: record["index"])


def summarize_graders(records: Sequence[dict], cluster_key: str | None = None) -> dict:
    """`summarize` of the strict verdicts, plus ``paper_correct``, ``paper_total``, ``paper_accuracy``,
    ``paper_stderr`` (and ``paper_stderr_clustered``) of the paper grader's when every record has one."""
    summary = summarize(records, cluster_key)
    if records and all("paper_correct" in record for record in records):
        verdicts = [
            {"correct": r["paper_correct"], "total": r["paper_total"], "cluster": r.get(cluster_key)} for r in records
        ]
        paper = summarize(verdicts, "cluster" if cluster_key else None)
        for key in ("correct", "total", "accuracy", "stderr", "stderr_clustered"):
            if key in paper:
                summary[f"paper_{key}"] = paper[key]
    return summary


def _cell(result: dict) -> str:
    problems = f"(n={result['problems']})"
    if "paper_accuracy" not in result:  # a task without a paper grader, or a summary saved before there was one
        return f"{100 * result['accuracy']:.1f} ± {100 * result['stderr']:.1f} {problems}"
    paper = f"{100 * result['paper_accuracy']:.1f} ± {100 * result['paper_stderr']:.1f}"
    return f"{paper} (strict {100 * result['accuracy']:.1f}) {problems}"


def markdown_table(summaries: Sequence[dict]) -> str:
    """Results as the paper's Table 1: one row per model, a column per (task, generation length).

    Cells are the paper grader's accuracy ± standard error in percent, the strict grader's accuracy and the number
    of problems, e.g. ``78.0 ± 1.1 (strict 78.9) (n=1319)`` (accuracy ± standard error alone for results without a
    paper grader). Summaries of several tasks (or models) merge into one table; tasks keep their first-seen order.
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
    decoding: DecodingConfig | None = None,
    batch_size: int = 16,
    mask_token_id: int | None = None,
    model_label: str = "model",
    output_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict:
    """Evaluate ``model`` on ``task``; returns the summary (and writes the reports).

    ``decoding`` (default: the paper's protocol) is applied at each of ``gen_lengths`` (default: the task's): its
    ``block_length`` and ``steps`` when set, else the default rule at that length; its fast modes depart from the
    protocol's exact sampler and are recorded under ``fast_decoding``. ``dataset`` (a task dataset with a ``prompt`` column) overrides ``split`` / ``data`` /
    ``prompt_style`` / ``limit``. The summary has one entry per generation length in ``results``; ``records``
    (per-problem completions and scores) is returned beside it and written to ``output_dir`` by the main process.
    """
    task = get_task(task)
    decoding = decoding or DecodingConfig()
    style = prompt_style or task.eval_prompt
    if dataset is None:
        dataset = task.dataset(split, prompt_style=style, data=data, limit=limit, **(prompt_options or {}))
    state = process_state()
    results, records = [], []
    lengths = list(gen_lengths or task.gen_lengths)
    for index, gen_length in enumerate(lengths, start=1):
        settings = replace(decoding, gen_length=gen_length).validated()
        scored = generate_and_score(
            task,
            model,
            tokenizer,
            dataset,
            settings,
            batch_size=batch_size,
            mask_token_id=mask_token_id,
            progress=progress and f"{task.name}: length {index}/{len(lengths)} (gen_length {gen_length})",
        )
        shape = {key: getattr(settings, key) for key in ("gen_length", "block_length", "steps")}
        results.append({**shape, **summarize_graders(scored, task.cluster_key)})
        records.extend(scored)
    summary = {
        "task": task.name,
        "title": task.title,
        "model": model_label,
        "split": split,
        "data": str(data) if isinstance(data, (str, os.PathLike)) else (None if data is None else type(data).__name__),
        "prompt_style": style,
        "temperature": decoding.temperature,
        "remasking": decoding.remasking,
        "fast_decoding": decoding.fast_options(),
        "num_processes": state.num_processes,
        "stderr_method": "ratio estimator over problems (trl_spg.evaluation.stats)",
        "graders": "accuracy/stderr: the package's strict grader; paper_accuracy/paper_stderr: the SPG paper's "
        "reference evaluation (trl_spg.tasks.paper_grader)",
        "results": results,
    }
    if output_dir is not None and state.is_main_process:
        summary["files"] = write_reports(summary, records, output_dir)
    state.wait_for_everyone()
    return {**summary, "records": records}
