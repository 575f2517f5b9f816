# Copyright the trl_spg authors. Licensed under the Apache License, Version 2.0.
"""Train a masked diffusion LM with SPG on any registered task (GSM8K, MATH500, Countdown, Sudoku).

The paper's recipes (LLaDA-8B-Instruct, LoRA on a 4-bit base, 8 GPUs):

    accelerate launch --num_processes 8 examples/train_task.py --config examples/configs/gsm8k_llada.yaml
    accelerate launch --num_processes 8 examples/train_task.py --config examples/configs/math500_llada.yaml
    accelerate launch --num_processes 8 examples/train_task.py --config examples/configs/countdown_llada.yaml
    accelerate launch --num_processes 8 examples/train_task.py --task sudoku --config examples/configs/sudoku_llada.yaml

The task gives the data (``--train_data`` overrides its source: ``hub``, ``builtin`` or local files), the prompts,
the reward functions and, with ``--eval_every N``, a held-out accuracy curve logged as
``eval_task/<task>/accuracy``. Every `SPGConfig` field is a flag and may be set in the YAML file.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import torch
from trl import TrlParser

from trl_spg import SPGConfig, SPGTrainer
from trl_spg.task_evaluation import TaskEvaluationCallback
from trl_spg.tasks import get_task

logger = logging.getLogger("train_task")


@dataclass
class TaskScriptArguments:
    """Task, model and evaluation settings (training settings live in `SPGConfig`)."""

    task: str | None = field(default=None, metadata={"help": "gsm8k, math500, countdown or sudoku."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "A dLLM hub id or folder."})
    dtype: str = field(default="auto", metadata={"help": "auto, bfloat16, float32."})
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank (paper: 128)."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha (paper: 64)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (paper: 0.05)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Modules that get LoRA adapters."},
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base model in 4-bit NF4 (GPU only)."})
    train_data: str | None = field(
        default=None, metadata={"help": "hub, builtin, or a local file / folder (default: the task's source)."}
    )
    eval_data: str | None = field(default=None, metadata={"help": "Source of the evaluation split (same forms)."})
    prompt_style: str | None = field(default=None, metadata={"help": "Training prompt style (default: the paper's)."})
    few_shot: int | None = field(default=None, metadata={"help": "Worked examples, for Sudoku's prompts."})
    eval_every: int = field(default=0, metadata={"help": "Evaluate the test split every N steps (0: never)."})
    eval_gen_length: int = field(default=256, metadata={"help": "Generation length of the periodic evaluation."})
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate the first N test problems only."})
    eval_batch_size: int = field(default=16, metadata={"help": "Problems decoded together per process."})


def parse_args(argv: list[str] | None = None) -> tuple[TaskScriptArguments, SPGConfig]:
    parser = TrlParser((TaskScriptArguments, SPGConfig))
    script_args, training_args = parser.parse_args_and_config(args=sys.argv[1:] if argv is None else argv)
    if script_args.task is None or script_args.model_name_or_path is None:
        raise SystemExit("--task and --model_name_or_path are required (on the command line or in --config).")
    return script_args, training_args


def build_model(script_args: TaskScriptArguments):
    from peft import LoraConfig

    from trl_spg import load_model_and_tokenizer

    kwargs = {}
    if script_args.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    model, tokenizer = load_model_and_tokenizer(script_args.model_name_or_path, dtype=script_args.dtype, **kwargs)
    peft_config = None
    if script_args.use_peft:
        peft_config = LoraConfig(
            r=script_args.lora_r,
            lora_alpha=script_args.lora_alpha,
            lora_dropout=script_args.lora_dropout,
            target_modules=script_args.lora_target_modules,
            task_type="CAUSAL_LM",
        )
    return model, tokenizer, peft_config


def main(argv: list[str] | None = None) -> SPGTrainer:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    script_args, training_args = parse_args(argv)
    task = get_task(script_args.task)
    options = {"few_shot": script_args.few_shot} if script_args.few_shot is not None else {}
    dataset = task.dataset("train", prompt_style=script_args.prompt_style, data=script_args.train_data, **options)
    differing = {k: (getattr(training_args, k), v) for k, v in task.training.items() if getattr(training_args, k) != v}
    if differing:
        logger.info("Settings differing from the paper's %s run (yours, paper's): %s", task.title, differing)

    model, tokenizer, peft_config = build_model(script_args)
    trainer = SPGTrainer(
        model=model,
        reward_funcs=list(task.reward_funcs),
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if script_args.eval_every > 0:
        trainer.add_callback(
            TaskEvaluationCallback(
                trainer,
                task,
                every=script_args.eval_every,
                gen_length=script_args.eval_gen_length,
                block_length=training_args.block_length,
                data=script_args.eval_data,
                prompt_options=options,
                limit=script_args.eval_limit,
                batch_size=script_args.eval_batch_size,
            )
        )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(dataset_name=f"{task.title} (trl_spg.tasks.{task.name})")
    return trainer


if __name__ == "__main__":
    main()
