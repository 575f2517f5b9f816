"""`trl-spg-evaluate`: evaluate a masked diffusion LM on a task with the paper's protocol (Table 1).

    accelerate launch --num_processes 8 -m trl_spg.scripts.evaluate --task gsm8k \\
        --model_name_or_path GSAI-ML/LLaDA-8B-Instruct --adapter outputs/gsm8k-llada-spg \\
        --gen_lengths 128 256 512 --output_dir outputs/eval
    trl-spg-evaluate --task sudoku --model_name_or_path tiny        # the built-in tiny policy, on a CPU
    trl-spg-evaluate --config eval.yaml                              # any flag from a YAML file

Greedy decoding, low-confidence remasking, blocks of 32 (or the whole generation when 32 does not divide it),
``gen_length / 2`` steps; `--decoding threshold --kv_cache prefix ...` decode with the opt-in fast modes (see
`trl_spg.DecodingConfig`). Under ``accelerate launch`` the problems are split over the processes. Writes
per-problem generations (JSONL, with both graders' verdicts), a summary (JSON) and a Markdown table laid out like
Table 1: each cell is the paper grader's accuracy ± standard error (the SPG paper's reference evaluation,
`trl_spg.tasks.paper_grader`) with the strict grader's accuracy beside it, e.g. ``78.0 ± 1.1 (strict 78.9) (n=1319)``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..decoding import DecodingConfig, decoding_field
from . import _cli

#: The `DecodingConfig` fields set per run (the generation lengths are a list of their own).
_DECODING_FLAGS = tuple(f.name for f in fields(DecodingConfig) if f.name != "gen_length")


@dataclass
class EvaluationArguments:
    """
    Settings of `trl-spg-evaluate`.

    Parameters:
        task (`str`, *optional*, defaults to `"sudoku"`):
            A task of `trl_spg.tasks`.
        model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Hub id or folder of the model; `tiny` is the built-in tiny Sudoku policy (CPU runs).
        adapter (`str` or `None`, *optional*, defaults to `None`):
            PEFT adapter (path or hub id) loaded on top of the model.
        gen_lengths (`list[int]` or `None`, *optional*, defaults to `None`):
            Generation lengths (default: the task's, 128 256 512; 20 with the tiny model).
        block_length, steps, temperature, remasking, decoding, threshold, min_tokens_per_step, kv_cache,
        cache_refresh_every, compact_batch:
            Decoding settings, `trl_spg.DecodingConfig`'s (defaults: the paper's protocol, the exact sampler).
        split, data, prompt_style, few_shot, limit:
            Which problems and prompts: the task's split, its data source (`hub`, `builtin` or a local file /
            folder), prompt style (default: the paper's evaluation prompt), worked examples, the first N problems.
        batch_size, dtype, mask_token_id, model_label, output_dir, merge:
            Problems decoded together per process, model dtype, the [MASK] id (default: the model's), the row name
            in the table, where the reports go (default: `outputs/eval`), and saved summaries to merge into one
            table instead of evaluating.
    """

    task: str = field(default="sudoku", metadata={"help": "A task of trl_spg.tasks."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or folder of the model; 'tiny' is the built-in tiny Sudoku policy."}
    )
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter to load on top of the model."})
    model_label: str | None = field(default=None, metadata={"help": "Row name in the table (default: the paths)."})
    gen_lengths: list[int] | None = field(
        default=None,
        metadata={
            "help": "Generation lengths (default: the task's, 128 256 512; 20 with the tiny model).",
            "aliases": ["--gen_length"],
        },
    )
    block_length: int | None = decoding_field("block_length")
    steps: int | None = decoding_field("steps")
    temperature: float = decoding_field("temperature")
    remasking: str = decoding_field("remasking")
    decoding: str = decoding_field("decoding")
    threshold: float = decoding_field("threshold")
    min_tokens_per_step: int | None = decoding_field("min_tokens_per_step")
    kv_cache: str = decoding_field("kv_cache")
    cache_refresh_every: int | None = decoding_field("cache_refresh_every")
    compact_batch: bool = decoding_field("compact_batch")
    split: str = field(default="test", metadata={"help": "The task's split."})
    data: str | None = field(
        default=None, metadata={"help": "'hub', 'builtin', or a local file / folder in the dataset's schema."}
    )
    prompt_style: str | None = field(default=None, metadata={"help": "A prompt style of the task."})
    few_shot: int | None = field(default=None, metadata={"help": "Worked examples, for tasks that have them."})
    limit: int | None = field(default=None, metadata={"help": "First N problems only.", "aliases": ["--num_puzzles"]})
    batch_size: int = field(default=16, metadata={"help": "Problems decoded together per process."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype."})
    mask_token_id: int | None = field(default=None, metadata={"help": "Id of [MASK] (default: the model's)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the reports go (default: outputs/eval)."})
    merge: list[str] | None = field(
        default=None, metadata={"help": "Print one table from saved *_summary.json files instead of evaluating."}
    )

    def decoding_config(self, gen_length: int = 256) -> DecodingConfig:
        return DecodingConfig(gen_length=gen_length, **{name: getattr(self, name) for name in _DECODING_FLAGS})


def parse_args(argv: list[str]) -> EvaluationArguments:
    """Flags, ``--config`` YAML, then defaults: a folder trained by `trl-spg` (``--model_name_or_path`` or
    ``--adapter``) supplies the task, prompts and decoding it was evaluated with; the tiny model its compact prompts
    and 20-token generations."""
    from trl import TrlParser

    from ..tiny import tiny_policy_module
    from ..tiny.sudoku import TINY_MODEL

    parser = TrlParser((EvaluationArguments,), prog="trl-spg-evaluate")
    for flag in ("adapter", "model_name_or_path"):
        folder = _cli.flag_or_config_value(argv, flag)
        if folder == TINY_MODEL:
            policy = tiny_policy_module(_cli.flag_or_config_value(argv, "task") or EvaluationArguments.task)
            parser.set_defaults(prompt_style="compact", gen_lengths=[policy.TINY_COMPLETION_LENGTH], data="builtin")
        elif folder and (Path(folder) / _cli.EVALUATION_SETTINGS).is_file():
            parser.set_defaults(**json.loads((Path(folder) / _cli.EVALUATION_SETTINGS).read_text()))
            break
    (args,) = parser.parse_args_and_config(args=argv)
    return args


def check_arguments(args: EvaluationArguments, task) -> None:
    """Every check that needs no model, before anything loads (each error names its flag)."""
    from ..tiny.sudoku import TINY_MODEL

    _cli.check(args.model_name_or_path, "--model_name_or_path is required (or --merge).")
    if args.model_name_or_path != TINY_MODEL:
        _cli.check_model_name(args.model_name_or_path)
    _cli.check_model_name(args.adapter, "--adapter")
    _cli.check_output_dir(args.output_dir)
    for flag in ("limit", "batch_size"):
        _cli.check_positive(getattr(args, flag), f"--{flag}")
    _cli.check(
        args.prompt_style in (None, *task.prompts),
        f"--prompt_style {args.prompt_style}: the {task.name} task has {sorted(task.prompts)}.",
    )
    names = {name: f"--{name}" for name in _DECODING_FLAGS} | {"gen_length": "--gen_lengths"}
    for length in args.gen_lengths or task.gen_lengths:
        problems = args.decoding_config(length).problems(names)
        _cli.check(not problems, " ".join(problems))


def check_model(args: EvaluationArguments, model, tokenizer, dataset) -> None:
    """The mask id is the model's, and the longest prompt plus the longest generation fits its positions."""
    from ..evaluation import render_prompts
    from ..modeling import mask_token_problems

    if args.mask_token_id is not None:
        problems = mask_token_problems(model, tokenizer, args.mask_token_id, "--mask_token_id")
        _cli.check(not problems, " ".join(problems))
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    prompts = render_prompts(tokenizer, dataset["prompt"])
    longest = max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])
    generation = max(args.gen_lengths or [])
    _cli.check(
        limit is None or longest + generation <= limit,
        f"--gen_lengths {generation}: with the longest prompt ({longest} tokens) the canvas exceeds the model's "
        f"{limit} positions; use --gen_lengths <= {limit - longest}, a shorter --prompt_style or fewer --few_shot.",
    )


def _label(args: EvaluationArguments) -> str:
    if args.model_label:
        return args.model_label
    label = os.path.basename(os.path.normpath(args.model_name_or_path))
    if args.adapter:
        label += " + " + os.path.basename(os.path.normpath(args.adapter))
    fast = [f"{key}={value}" for key, value in args.decoding_config().fast_options().items()]
    if fast:
        label += f" ({', '.join(fast)})"  # approximate decoding, not the protocol's exact sampler
    return label


def main(argv: list[str] | None = None) -> dict:
    """Parse, check, load, evaluate, report; returns the summary (with per-problem ``records``)."""
    from ..evaluation import evaluate_task, markdown_table, process_state
    from ..tasks import get_task
    from ..tiny import tiny_policy_module
    from ..tiny.sudoku import TINY_MODEL

    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.merge:
        table = markdown_table([json.loads(Path(path).read_text()) for path in args.merge])
        print(table, end="")
        return {"table": table}
    task = get_task(args.task)
    check_arguments(args, task)
    args.gen_lengths = list(args.gen_lengths or task.gen_lengths)
    prompt_options = {"few_shot": args.few_shot} if args.few_shot is not None else {}
    dataset = task.dataset(
        args.split, prompt_style=args.prompt_style or task.eval_prompt, data=args.data, limit=args.limit,
        **prompt_options,
    )  # fmt: skip
    _cli.check(len(dataset) > 0, f"The {task.name} task's {args.split} split is empty (--data {args.data}).")

    state = process_state()
    if args.model_name_or_path == TINY_MODEL:
        with state.main_process_first():  # the first process warm-starts and caches, the others load the cache
            model, tokenizer = tiny_policy_module(args.task).load_tiny_policy()
    else:
        from ..models import load_model_and_tokenizer

        with _cli.naming_hub_errors("--model_name_or_path", args.model_name_or_path):
            model, tokenizer = load_model_and_tokenizer(args.model_name_or_path, dtype=args.dtype)
    if args.adapter:
        from peft import PeftModel

        with _cli.naming_hub_errors("--adapter", args.adapter):
            model = PeftModel.from_pretrained(model, args.adapter)
    model = model.to(state.device).eval()
    check_model(args, model, tokenizer, dataset)
    result = evaluate_task(
        task,
        model,
        tokenizer,
        split=args.split,
        data=args.data,
        dataset=dataset,
        prompt_style=args.prompt_style,
        gen_lengths=args.gen_lengths,
        decoding=args.decoding_config(),
        batch_size=args.batch_size,
        mask_token_id=args.mask_token_id,
        model_label=_label(args),
        output_dir=args.output_dir or "outputs/eval",
        progress=True,
    )
    if state.is_main_process:
        print(markdown_table([result]), end="")
        if any("paper_accuracy" in entry for entry in result["results"]):
            print("Cells: the paper's grader, accuracy ± standard error (%), then the strict grader's accuracy.")
        files = result.get("files", {})
        if files:
            print(f"Per-problem generations: {files['generations']}\nSummary: {files['summary']}")
    return result


def cli() -> int:
    """The `trl-spg-evaluate` console script: exit status 0 on success, 2 with a one-line message on a user error."""
    return _cli.run(main, "trl-spg-evaluate")


if __name__ == "__main__":
    sys.exit(cli())
