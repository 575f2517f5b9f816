"""`trl-spg`: train a masked diffusion LM with SPG from the command line, the way `trl grpo` trains an AR model.

    trl-spg --model_name_or_path GSAI-ML/LLaDA-8B-Instruct --dataset_name openai/gsm8k --dataset_config main \
        --reward_funcs my_lib.rewards.correctness --use_peft --lora_r 128 --output_dir llada-spg

    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml -m trl_spg.scripts.spg \
        --config examples/configs/gsm8k_llada.yaml

Flags are those of `SPGConfig`, TRL's `ModelConfig` (model, LoRA and quantisation) and `SPGScriptArguments`
(data and rewards); `--config file.yaml` sets any of them. LLaDA / Dream checkpoints load through
`trl_spg.checkpoints`, like any string model given to `SPGTrainer`.
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
    Data and reward settings of `trl-spg` (training settings are `SPGConfig`'s, model settings `ModelConfig`'s).

    Parameters:
        task (`str` or `None`, *optional*, defaults to `None`):
            A task of `trl_spg.tasks` (dataset, prompts and reward functions in one flag); replaces
            `dataset_name` and `reward_funcs`.
        reward_funcs (`list[str]` or `None`, *optional*, defaults to `None`):
            Reward functions: TRL's by name (`accuracy_reward`, `reasoning_accuracy_reward`, `think_format_reward`,
            `get_soft_overlong_punishment`), this package's task rewards by name, or dotted import paths.
        reward_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A reward model (sequence classifier) id or path, used as in `trl grpo`.
    """

    task: str | None = field(
        default=None,
        metadata={"help": "A task of trl_spg.tasks: dataset, prompts and reward functions in one flag."},
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions: TRL's by name (accuracy_reward, reasoning_accuracy_reward, think_format_reward, "
            "get_soft_overlong_punishment), this package's task rewards by name, or dotted import paths."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A reward model id or path (a sequence classifier), as in `trl grpo`."}
    )


def trl_reward_functions(max_completion_length: int) -> dict:
    """TRL's built-in reward functions, by the names `trl grpo` accepts."""
    from trl.rewards import (
        accuracy_reward,
        get_soft_overlong_punishment,
        reasoning_accuracy_reward,
        think_format_reward,
    )

    return {
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


def main(argv: list[str] | None = None):
    script_args, training_args, model_args, dataset_args = make_parser().parse_args_and_config(args=argv)
    return train(script_args, training_args, model_args, dataset_args)


def train(script_args, training_args, model_args, dataset_args):
    from datasets import load_dataset
    from trl import get_dataset, get_peft_config, get_quantization_config

    from trl_spg import SPGTrainer

    registry = trl_reward_functions(training_args.max_completion_length)
    reward_funcs = [script_args.reward_model_name_or_path] if script_args.reward_model_name_or_path else []
    reward_funcs += [resolve_reward_function(name, registry) for name in script_args.reward_funcs or []]

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}

    if dataset_args.datasets:
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name:
        dataset = load_dataset(
            script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )
    else:
        raise ValueError("Give --task, --dataset_name or `datasets` (a dataset mixture) to train on.")
    if not reward_funcs:
        raise ValueError("Give --task or at least one of --reward_funcs / --reward_model_name_or_path.")
    if not model_args.model_name_or_path:
        raise ValueError("Give --model_name_or_path (a LLaDA / Dream checkpoint or any masked diffusion LM).")

    trainer = SPGTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.end()  # finish trackers, destroy the process group
    return trainer


if __name__ == "__main__":
    main()
