"""`trl-spg`: train a masked diffusion LM with SPG from the command line, the way `trl grpo` trains an AR model.

    # a task of the registry: data, prompts and rewards in one flag
    trl-spg --task gsm8k --model_name_or_path GSAI-ML/LLaDA-8B-Instruct --use_peft --lora_r 128 --output_dir out
    # any dataset with a "prompt" column and any TRL reward functions
    trl-spg --model_name_or_path GSAI-ML/LLaDA-8B-Instruct --dataset_name my/dataset \
        --reward_funcs my_lib.rewards.correctness think_format_reward --output_dir out
    # on a CPU: the built-in tiny Sudoku policy with the Sudoku example's settings
    trl-spg --task sudoku --model_name_or_path tiny --output_dir out
    # the paper's recipe on 8 GPUs
    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml -m trl_spg.scripts.spg \
        --config examples/configs/gsm8k_llada.yaml

Flags are those of `SPGConfig`, TRL's `ModelConfig` (model, LoRA and quantisation) and `SPGScriptArguments`
(task, data, rewards, periodic evaluation); `--config file.yaml` sets any of them. LLaDA / Dream checkpoints load
through `trl_spg.checkpoints`, like any string model given to `SPGTrainer`.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field

from trl import ScriptArguments


@dataclass
class SPGScriptArguments(ScriptArguments):
    """
    Data, reward and evaluation settings of `trl-spg` (training settings are `SPGConfig`'s, model settings
    `ModelConfig`'s).

    Parameters:
        task (`str` or `None`, *optional*, defaults to `None`):
            A task of `trl_spg.tasks` (`gsm8k`, `math500`, `countdown`, `sudoku`): its training data, prompts and
            reward functions, in place of `dataset_name` and `reward_funcs` (extra `reward_funcs` are added).
        train_data (`str` or `None`, *optional*, defaults to `None`):
            Where the task's training split comes from: `hub`, `builtin`, or a local file / folder (default: the
            task's own source).
        prompt_style (`str` or `None`, *optional*, defaults to `None`):
            The task's prompt style for training (default: the paper's).
        few_shot (`int` or `None`, *optional*, defaults to `None`):
            Worked examples in the prompt, for tasks that have them (Sudoku).
        reward_funcs (`list[str]` or `None`, *optional*, defaults to `None`):
            Reward functions: TRL's by name (`accuracy_reward`, `reasoning_accuracy_reward`, `think_format_reward`,
            `get_soft_overlong_punishment`), dotted import paths, or a task's reward functions as `task/function`
            (e.g. `gsm8k/correctness_reward`).
        reward_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A reward model (sequence classifier) id or path, used as in `trl grpo`.
        eval_every (`int`, *optional*, defaults to `0`):
            With `task`: evaluate the task's test split every this many steps with the paper's protocol and log
            `eval_task/<task>/accuracy` (0: never). It decodes with the rollouts' fast modes (`--rollout_decoding`,
            `--rollout_kv_cache`, ...), the exact sampler by default.
        eval_data, eval_gen_length, eval_limit, eval_batch_size:
            Source of the test split, generation length, number of problems and decoding batch of that evaluation.
    """

    task: str | None = field(
        default=None,
        metadata={"help": "A task of trl_spg.tasks (gsm8k, math500, countdown, sudoku): data, prompts and rewards."},
    )
    train_data: str | None = field(
        default=None, metadata={"help": "The task's training data: hub, builtin, or a local file / folder."}
    )
    prompt_style: str | None = field(
        default=None, metadata={"help": "The task's prompt style (default: the paper's)."}
    )
    few_shot: int | None = field(default=None, metadata={"help": "Worked examples in the prompt (Sudoku)."})
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions: TRL's by name (accuracy_reward, reasoning_accuracy_reward, think_format_reward, "
            "get_soft_overlong_punishment), dotted import paths, or a task's as task/function (gsm8k/correctness_reward)."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A reward model id or path (a sequence classifier), as in `trl grpo`."}
    )
    eval_every: int = field(
        default=0, metadata={"help": "With --task: evaluate its test split every N steps (0: never)."}
    )
    eval_data: str | None = field(default=None, metadata={"help": "Source of the evaluation split (same forms)."})
    eval_gen_length: int = field(default=256, metadata={"help": "Generation length of the periodic evaluation."})
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate the first N test problems only."})
    eval_batch_size: int = field(default=16, metadata={"help": "Problems decoded together per process."})


def trl_reward_functions(max_completion_length: int) -> dict:
    """TRL's built-in reward functions, by the names `trl grpo` accepts, and every task's as `task/function`."""
    from trl.rewards import (
        accuracy_reward,
        get_soft_overlong_punishment,
        reasoning_accuracy_reward,
        think_format_reward,
    )

    from trl_spg.tasks import get_task, task_names

    # `gsm8k/correctness_reward`: task rewards share function names across tasks, so the task qualifies them.
    task_rewards = {f"{name}/{func.__name__}": func for name in task_names() for func in get_task(name).reward_funcs}
    return task_rewards | {
        "accuracy_reward": accuracy_reward,
        "reasoning_accuracy_reward": reasoning_accuracy_reward,
        "think_format_reward": think_format_reward,
        "get_soft_overlong_punishment": get_soft_overlong_punishment(
            max_completion_len=max_completion_length, soft_punish_cache=max(1, max_completion_length // 4)
        ),
    }


def resolve_reward_function(name: str, registry: dict):
    """A reward function by registry name or dotted import path (``package.module.function``)."""
    if name in registry:
        return registry[name]
    if "." in name:
        module_path, attribute = name.rsplit(".", 1)
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `trl grpo` does: modules next to the command work
        try:
            return getattr(importlib.import_module(module_path), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"Could not import reward function {name!r}: {error}") from error
    raise ValueError(f"Unknown reward function {name!r}: expected one of {sorted(registry)} or a dotted import path.")


def make_parser():
    from trl import DatasetMixtureConfig, ModelConfig, TrlParser

    from trl_spg import SPGConfig

    return TrlParser((SPGScriptArguments, SPGConfig, ModelConfig, DatasetMixtureConfig), prog="trl-spg")


def flag_or_config_value(argv: list[str], name: str, default=None):
    """The value of ``--name`` in ``argv``, else of ``name`` in the ``--config`` YAML file, else ``default``.

    For the few settings that decide how the rest is parsed (which defaults apply, which config class), read before
    the full parse: building the configs first would already validate them against the wrong defaults.
    """
    import argparse

    import yaml

    pre_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre_parser.add_argument(f"--{name}", default=None)
    pre_parser.add_argument("--config", default=None)
    known = pre_parser.parse_known_args(argv)[0]
    if getattr(known, name) is not None:
        return getattr(known, name)
    if known.config:
        with open(known.config) as handle:
            value = (yaml.safe_load(handle) or {}).get(name)
        if value is not None:
            return value
    return default


def parse_with_tiny_defaults(parser, argv: list[str], tiny_defaults: dict, use_tiny) -> tuple:
    """Parse ``argv`` with ``tiny_defaults`` as defaults when ``use_tiny(model name or None)`` holds.

    Flags and YAML values still win over the tiny defaults (TRL's parser applies a YAML file as defaults too, after
    these).
    """
    if use_tiny(flag_or_config_value(argv, "model_name_or_path")):
        parser.set_defaults(**tiny_defaults)
    return parser.parse_args_and_config(args=argv)


def trainer_model_arguments(model_args, training_args) -> dict:
    """The trainer's ``model`` and what goes with it, from TRL's `ModelConfig`.

    A checkpoint id or folder stays a string: the trainer resolves LLaDA / Dream conversions and loads it through
    TRL with ``model_init_kwargs`` (revision, dtype, attention, ``trust_remote_code``) and the quantisation config.
    ``tiny`` is the built-in tiny Sudoku policy, built here with its tokenizer. PEFT settings apply to both.
    """
    from trl import get_peft_config, get_quantization_config

    from trl_spg.tasks.sudoku_tiny import TINY_MODEL, load_tiny_policy

    if not model_args.model_name_or_path:
        raise ValueError("Give --model_name_or_path (a LLaDA / Dream checkpoint, any masked diffusion LM, or 'tiny').")
    peft_config = get_peft_config(model_args)
    if model_args.model_name_or_path == TINY_MODEL:
        model, tokenizer = load_tiny_policy(seed=training_args.seed)
        return {"model": model, "processing_class": tokenizer, "peft_config": peft_config}
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
    return {
        "model": model_args.model_name_or_path,
        "quantization_config": get_quantization_config(model_args),
        "peft_config": peft_config,
    }


def main(argv: list[str] | None = None):
    from trl_spg import SPGConfig
    from trl_spg.tasks.sudoku_tiny import TINY_COMPLETION_LENGTH, TINY_MODEL, tiny_training_defaults

    # `--model_name_or_path tiny`: the built-in CPU run (compact Sudoku prompts, the example's training settings).
    tiny = {**tiny_training_defaults(SPGConfig), "prompt_style": "compact", "eval_gen_length": TINY_COMPLETION_LENGTH}
    argv = sys.argv[1:] if argv is None else argv
    script_args, training_args, model_args, dataset_args = parse_with_tiny_defaults(
        make_parser(), argv, tiny, lambda model: model == TINY_MODEL
    )
    return train(script_args, training_args, model_args, dataset_args)


def train(script_args, training_args, model_args, dataset_args):
    from datasets import load_dataset
    from trl import get_dataset

    from trl_spg import SPGTrainer

    registry = trl_reward_functions(training_args.max_completion_length)
    reward_funcs = [script_args.reward_model_name_or_path] if script_args.reward_model_name_or_path else []
    reward_funcs += [resolve_reward_function(name, registry) for name in script_args.reward_funcs or []]

    task, eval_dataset, dataset_name = None, None, script_args.dataset_name
    if script_args.task:
        from trl_spg.tasks import get_task

        task = get_task(script_args.task)
        options = {"few_shot": script_args.few_shot} if script_args.few_shot is not None else {}
        train_dataset = task.dataset(
            "train", prompt_style=script_args.prompt_style, data=script_args.train_data, **options
        )
        if not reward_funcs and task.reward_weights is not None and training_args.reward_weights is None:
            training_args.reward_weights = list(task.reward_weights)
        reward_funcs = list(task.reward_funcs) + reward_funcs
        # The card's `datasets` metadata names Hub datasets only.
        hub = task.hub.get("train")
        dataset_name = hub.path if hub is not None and script_args.train_data in (None, "hub") else None
    elif dataset_args.datasets or script_args.dataset_name:
        if dataset_args.datasets:
            dataset = get_dataset(dataset_args)
        else:
            dataset = load_dataset(
                script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
            )
        train_dataset = dataset[script_args.dataset_train_split]
        if training_args.eval_strategy != "no":
            eval_dataset = dataset[script_args.dataset_test_split]
    else:
        raise ValueError("Give --task, --dataset_name or `datasets` (a dataset mixture) to train on.")
    if not reward_funcs:
        raise ValueError("Give --task or at least one of --reward_funcs / --reward_model_name_or_path.")

    trainer = SPGTrainer(
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        **trainer_model_arguments(model_args, training_args),
    )
    if task is not None and script_args.eval_every > 0:
        from trl_spg.task_evaluation import TaskEvaluationCallback

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
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(dataset_name=dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
    trainer.end()  # finish trackers, destroy the process group
    return trainer


if __name__ == "__main__":
    main()
