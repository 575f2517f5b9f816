# Copyright the trl_spg authors. Licensed under the Apache License, Version 2.0.
"""Train a masked diffusion LM on 4x4 Sudoku with SPG, evaluating held-out accuracy before and after.

With no arguments it runs on a CPU: the built-in tiny bidirectional Llama is warm-started by masked-diffusion SFT
(cached after the first run), then trained with SPG on the training puzzles:

    accelerate launch examples/train_sudoku.py

`--algorithm d1` or `wd1` trains the same way with a baseline (`benchmarks/ablation.py` compares them). Every field of
the method's config (`SPGConfig`, ...) and of TRL's `ModelConfig` is a flag (`--learning_rate`, `--use_peft`,
`--lora_r`, ...), and a YAML file given with `--config` may set any of them. A real model:

    accelerate launch examples/train_sudoku.py --model_name_or_path GSAI-ML/LLaDA-8B-Instruct --dtype bfloat16 \
        --prompt_style instruct --max_completion_length 256 --use_peft --lora_r 128 --lora_alpha 64

The paper's Sudoku recipe, with its prompts, runs through the command line:
`trl-spg --config examples/configs/sudoku_llada.yaml`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback
from trl import ModelConfig, TrlParser, get_peft_config

from trl_spg import DiffuGRPOConfig, DiffuGRPOTrainer, SPGConfig, SPGTrainer, WD1Config, WD1Trainer
from trl_spg.evaluation import evaluate_sudoku, paired_stderr
from trl_spg.scripts.spg import flag_or_config_value, parse_with_tiny_defaults, trainer_model_arguments
from trl_spg.tasks.sudoku import few_shot_examples, sudoku_dataset, sudoku_reward, sudoku_split
from trl_spg.tasks.sudoku_tiny import TinySudokuSpec, tiny_sudoku_model, tiny_training_defaults

logger = logging.getLogger("train_sudoku")

#: ``--algorithm``: the trainer and config of each method (the same rollouts, reward, data and evaluation).
ALGORITHMS = {
    "spg": (SPGTrainer, SPGConfig),
    "d1": (DiffuGRPOTrainer, DiffuGRPOConfig),
    "wd1": (WD1Trainer, WD1Config),
}
# Example-specific settings of the built-in tiny run, beside `trl_spg.tasks.sudoku_tiny.tiny_training_defaults`.
TINY_RUN_DEFAULTS = dict(
    output_dir="outputs/sudoku-tiny-spg",
    # 1024 held-out puzzles (about 12 per held-out solution grid) halve the standard error of 256.
    eval_puzzles=1024,
)


@dataclass
class SudokuScriptArguments:
    """Data, evaluation and method settings of the Sudoku example (training settings live in the trainer's config,
    model, LoRA and quantisation settings in TRL's `ModelConfig`)."""

    algorithm: str = field(
        default="spg",
        metadata={
            "help": "The RL method: spg (SPGTrainer), d1 (DiffuGRPOTrainer) or wd1 (WD1Trainer); the method's own "
            "config flags apply.",
            "choices": sorted(ALGORITHMS),
        },
    )
    prompt_style: str = field(
        default="compact",
        metadata={"help": "compact (tiny model) or instruct (chat models).", "choices": ["compact", "instruct"]},
    )
    few_shot: int = field(default=3, metadata={"help": "Worked examples in instruct prompts (paper: 3)."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the train/test split of the 288 grids."})
    train_puzzles_per_grid: int = field(default=4, metadata={"help": "Training puzzles made from each training grid."})
    eval_puzzles: int = field(default=256, metadata={"help": "Held-out puzzles evaluated before and after RL."})
    eval_steps_per_token: float = field(
        default=0.5, metadata={"help": "Greedy evaluation uses max_completion_length * this many denoising steps."}
    )
    eval_batch_size: int = field(default=128, metadata={"help": "Puzzles decoded together during evaluation."})
    skip_eval: bool = field(default=False, metadata={"help": "Skip the before/after evaluation."})
    eval_every: int = field(
        default=0,
        metadata={"help": "Also evaluate held-out accuracy every this many RL steps (0: only before/after)."},
    )
    tiny_warm_start_steps: int = field(
        default=TinySudokuSpec.sft_steps, metadata={"help": "SFT steps of the tiny model's warm start."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Cache for the warm-started tiny model."})
    num_threads: int = field(
        default=0,
        metadata={
            "help": "torch CPU threads per process when training on the CPU; 0: the CPUs this process may run on "
            "divided by the processes on this machine. OMP_NUM_THREADS is not read (see set_cpu_threads)."
        },
    )


def set_cpu_threads(script_args: SudokuScriptArguments, training_args: SPGConfig) -> int | None:
    """Use every CPU this process may run on, shared among the processes of this machine (CPU runs only).

    `accelerate launch` sets OMP_NUM_THREADS itself (to 1 on a machine without GPUs unless the variable is already
    set), and the tiny model is compute-bound: on 2 cores 1 thread makes each step about 1.8x slower than 2. The
    variable cannot tell a user's choice from accelerate's default, so it is not read; `--num_threads` sets the count
    explicitly. GPU runs keep torch's setting. Returns the count set, or None.
    """
    on_cpu = training_args.use_cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
    if not on_cpu and script_args.num_threads <= 0:
        return None
    threads = script_args.num_threads
    if threads <= 0:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    torch.set_num_threads(threads)
    return threads


def build_model(script_args: SudokuScriptArguments, training_args, model_args: ModelConfig, train_rows: list[dict]):
    """The trainer's model arguments: the warm-started tiny policy by default, else `ModelConfig`'s checkpoint."""
    if model_args.model_name_or_path is None:
        spec = TinySudokuSpec(sft_steps=script_args.tiny_warm_start_steps, seed=training_args.seed)
        model, tokenizer = tiny_sudoku_model(train_rows, spec, script_args.cache_dir)
        return {"model": model, "processing_class": tokenizer, "peft_config": get_peft_config(model_args)}
    return trainer_model_arguments(model_args, training_args)


def evaluate(trainer, rows, examples, script_args, training_args) -> dict:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return evaluate_sudoku(
        model,
        trainer.processing_class,
        rows,
        prompt_style=script_args.prompt_style,
        examples=examples,
        gen_length=training_args.max_completion_length,
        block_length=training_args.block_length,
        steps=max(1, round(training_args.max_completion_length * script_args.eval_steps_per_token)),
        batch_size=script_args.eval_batch_size,
        mask_token_id=trainer.mask_token_id,
    )


class HeldOutCurve(TrainerCallback):
    """Held-out accuracy every `every` optimizer steps, appended to `curve` (step, accuracy and its standard errors)."""

    def __init__(self, evaluate_fn, every: int, curve: list):
        self.evaluate_fn, self.every, self.curve = evaluate_fn, every, curve

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            result = self.evaluate_fn()
            self.curve.append(
                {"step": state.global_step, **{k: result[k] for k in ("accuracy", "stderr", "stderr_grid")}}
            )
            logger.info("Held-out accuracy at step %d: %.4f", state.global_step, result["accuracy"])


def summary_line(results: dict) -> str:
    """One line with both evaluations, the paired difference and their standard errors (by puzzle / by grid)."""
    before, after = results["before"], results["after"]
    difference, by_grid = results["difference"], results["paired_stderr_grid"]
    ratio = f", {difference / by_grid:.1f} grid-clustered standard errors" if by_grid else ""
    return (
        f"Held-out Sudoku accuracy ({before['puzzles']} puzzles from {before['grids']} solution grids, "
        f"{before['empty_cells']} empty cells; +- standard error by puzzle / by grid): "
        f"before RL {before['accuracy']:.4f} +- {before['stderr']:.4f} / {before['stderr_grid']:.4f}, "
        f"after RL {after['accuracy']:.4f} +- {after['stderr']:.4f} / {after['stderr_grid']:.4f}, "
        f"difference {difference:+.4f} +- {results['paired_stderr']:.4f} / {by_grid:.4f} (paired){ratio}"
    )


def plot_rewards(log_history: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(entry["step"], entry["reward"]) for entry in log_history if "reward" in entry]
    if not points:
        return
    steps, rewards = zip(*points)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, rewards, marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward (cell accuracy of rollouts)")
    ax.set_title("SPG on 4x4 Sudoku")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_arguments(argv: list[str]) -> tuple:
    """``(trainer_class, script_args, training_args, model_args)`` from flags and an optional ``--config`` YAML."""
    # The method decides the config class, so it is read before the full parse.
    algorithm = flag_or_config_value(argv, "algorithm", default="spg")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"--algorithm {algorithm!r}: expected one of {sorted(ALGORITHMS)}.")
    trainer_class, config_class = ALGORITHMS[algorithm]
    # Without a model the built-in tiny run applies: its settings become the defaults (flags and YAML still win).
    script_args, training_args, model_args = parse_with_tiny_defaults(
        TrlParser((SudokuScriptArguments, config_class, ModelConfig)),
        argv,
        {**tiny_training_defaults(config_class), **TINY_RUN_DEFAULTS},
        lambda model: model is None,
    )
    return trainer_class, script_args, training_args, model_args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    trainer_class, script_args, training_args, model_args = parse_arguments(argv)

    threads = set_cpu_threads(script_args, training_args)
    if threads is not None:
        logger.info("torch uses %d CPU threads", threads)
    train_rows, test_rows = sudoku_split(
        seed=script_args.split_seed,
        train_puzzles_per_grid=script_args.train_puzzles_per_grid,
        num_test_puzzles=script_args.eval_puzzles,
    )
    examples = few_shot_examples(train_rows, script_args.few_shot) if script_args.prompt_style == "instruct" else []
    dataset = sudoku_dataset(
        train_rows, prompt_style=script_args.prompt_style, few_shot=script_args.few_shot, examples=examples or None
    )

    trainer = trainer_class(
        reward_funcs=sudoku_reward,
        args=training_args,
        train_dataset=dataset,
        **build_model(script_args, training_args, model_args, train_rows),
    )

    results = {}
    if not script_args.skip_eval:
        results["before"] = evaluate(trainer, test_rows, examples, script_args, training_args)
        logger.info(
            "Held-out accuracy before RL: %.4f +- %.4f", results["before"]["accuracy"], results["before"]["stderr"]
        )
    if script_args.eval_every > 0 and not script_args.skip_eval:
        trainer.add_callback(
            HeldOutCurve(
                lambda: evaluate(trainer, test_rows, examples, script_args, training_args),
                script_args.eval_every,
                results.setdefault("curve", []),
            )
        )
    train_output = trainer.train()
    results["train_runtime_s"] = train_output.metrics["train_runtime"]
    if not script_args.skip_eval:
        results["after"] = evaluate(trainer, test_rows, examples, script_args, training_args)
        before, after = results["before"]["completions"], results["after"]["completions"]
        puzzles, solutions = [row["puzzle"] for row in test_rows], [row["solution"] for row in test_rows]
        results["difference"] = results["after"]["accuracy"] - results["before"]["accuracy"]
        results["paired_stderr"] = paired_stderr(before, after, puzzles, solutions)
        results["paired_stderr_grid"] = paired_stderr(before, after, puzzles, solutions, by_grid=True)

    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(dataset_name="4x4 Sudoku (trl_spg.tasks.sudoku)")
        plot_rewards(trainer.state.log_history, os.path.join(training_args.output_dir, "reward_curve.png"))
        summary = {
            name: {k: v for k, v in value.items() if k != "completions"} if isinstance(value, dict) else value
            for name, value in results.items()
        }
        with open(os.path.join(training_args.output_dir, "sudoku_results.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        if "after" in results:
            print(summary_line(results))
    return results


if __name__ == "__main__":
    main()
