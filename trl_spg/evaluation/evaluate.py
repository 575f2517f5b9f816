"""The paper's evaluation protocol for any task: decode, score, summarise, report.

Protocol (SPG paper, Table 1): greedy decoding (temperature 0) with low-confidence remasking, blocks of 32 tokens,
``gen_length / 2`` denoising steps, at generation lengths 128, 256 and 512 (a `DecodingConfig` at its defaults);
each task's own rule scores a completion (`trl_spg.tasks.base.Task.score`). Problems are decoded in left-padded
batches; under ``accelerate launch`` every process decodes its share of the problems and the main process gathers
the records and writes the files. Accuracy and standard errors: `trl_spg.evaluation.stats`.
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
    progress: bool = False,
) -> list[dict]:
    """Completions of ``dataset`` (a task dataset with a ``prompt`` column) scored by the task, in order.

    Each process decodes its contiguous share of the problems; the records of all processes are gathered, so every
    process returns the full list. A record holds ``index``, ``gen_length``, the rendered ``prompt``, the
    ``completion``, the task's ``prediction`` / ``correct`` / ``total`` and the example's other columns. With
    ``progress`` the main process shows a bar over its problems.
    """
    from accelerate.utils import gather_object

    state = process_state()
    with state.split_between_processes(list(range(len(dataset)))) as shard:
        rows = [dataset[i] for i in shard]
        prompts = [row["prompt"] for row in rows]
        bar = tqdm(
            total=len(prompts),
            desc=f"{task.name} (gen_length {decoding.gen_length})",
            unit="problem",
            leave=False,
            disable=not (progress and state.is_main_process),
        )
        with bar:
            completions = generate_completions(
                model, tokenizer, prompts, decoding, batch_size=batch_size, mask_token_id=mask_token_id, progress=bar
            )
        rendered = render_prompts(tokenizer, prompts)
        records = []
        for index, row, text, completion in zip(shard, rows, rendered, completions, strict=True):
            example = {key: value for key, value in row.items() if key != "prompt"}
            scored = task.score(completion, example)
            records.append(
                {
                    "index": index,
                    "gen_length": decoding.gen_length,
                    **scored,
                    "completion": completion,
                    "prompt": text,
                    **{key: value for key, value in example.items() if key not in scored},
                }
            )
    gathered = gather_object(records) if state.num_processes > 1 else records
    return sorted(gathered, key=lambda record: record["index"])


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
    ``block_length`` and ``steps`` when set, else the default rule at that length; its fast modes depart from the protocol's exact sampler and are recorded
    under ``fast_decoding``. ``dataset`` (a task dataset with a ``prompt`` column) overrides ``split`` / ``data`` /
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
    for gen_length in gen_lengths or task.gen_lengths:
        settings = replace(decoding, gen_length=gen_length).validated()
        scored = generate_and_score(
            task,
            model,
            tokenizer,
            dataset,
            settings,
            batch_size=batch_size,
            mask_token_id=mask_token_id,
            progress=progress,
        )
        lengths = {key: getattr(settings, key) for key in ("gen_length", "block_length", "steps")}
        results.append({**lengths, **summarize(scored, task.cluster_key)})
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
        "results": results,
    }
    if output_dir is not None and state.is_main_process:
        summary["files"] = write_reports(summary, records, output_dir)
    state.wait_for_everyone()
    return {**summary, "records": records}
