"""`trl-spg`: train a masked diffusion LM with SPG (or d1 / wd1) from the command line, as `trl grpo` trains an AR model.

    # a task of the registry: data, prompts and rewards in one flag
    trl-spg --task gsm8k --model_name_or_path GSAI-ML/LLaDA-8B-Instruct --use_peft --lora_r 128 --output_dir out
    # any dataset with a "prompt" column and any TRL reward functions
    trl-spg --model_name_or_path GSAI-ML/LLaDA-8B-Instruct --dataset_name my/dataset \
        --reward_funcs my_lib.rewards.correctness think_format_reward --output_dir out
    # on a CPU: the built-in tiny Sudoku (or Countdown) policy, held-out accuracy before and after training
    trl-spg --task sudoku --model_name_or_path tiny
    trl-spg --task countdown --model_name_or_path tiny
    # a baseline on the same run
    trl-spg --task sudoku --model_name_or_path tiny --algorithm wd1
    # the paper's recipe on 8 GPUs
    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml -m trl_spg.scripts.spg \
        --config examples/configs/gsm8k_llada.yaml

Flags are those of the method's config (`SPGConfig`, `DiffuGRPOConfig` or `WD1Config`), TRL's `ModelConfig` (model,
LoRA and quantisation) and `SPGScriptArguments` (method, task, data, rewards, evaluation); `--config file.yaml` sets
any of them. LLaDA / Dream checkpoints load through `trl_spg.models`, like any string model given to a trainer.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field

from trl import ScriptArguments

from . import _cli

logger = logging.getLogger("trl_spg.scripts.spg")

#: ``--algorithm``: the trainer and config class of each method (same rollouts, rewards, data and evaluation).
ALGORITHMS = {
    "spg": ("SPGTrainer", "SPGConfig"),
    "d1": ("DiffuGRPOTrainer", "DiffuGRPOConfig"),
    "wd1": ("WD1Trainer", "WD1Config"),
}


@dataclass
class SPGScriptArguments(ScriptArguments):
    """
    Method, data, reward and evaluation settings of `trl-spg` (training settings are the method config's, model
    settings `ModelConfig`'s).

    Parameters:
        algorithm (`str`, *optional*, defaults to `"spg"`):
            The RL method: `spg` (`SPGTrainer`), `d1` (`DiffuGRPOTrainer`) or `wd1` (`WD1Trainer`); the method's
            config fields are the training flags.
        task (`str` or `None`, *optional*, defaults to `None`):
            A task of `trl_spg.tasks` (`gsm8k`, `math500`, `countdown`, `sudoku`): its training data, prompts and
            reward functions, in place of `dataset_name` and `reward_funcs` (extra `reward_funcs` are added).
        train_data (`str` or `None`, *optional*, defaults to `None`):
            Where the task's training split comes from: `hub`, `builtin`, or a local file / folder (default: the
            task's own source).
        prompt_style (`str` or `None`, *optional*, defaults to `None`):
            The task's prompt style for training and evaluation (default: the paper's).
        few_shot (`int` or `None`, *optional*, defaults to `None`):
            Worked examples in the prompt, for tasks that have them (Sudoku).
        reward_funcs (`list[str]` or `None`, *optional*, defaults to `None`):
            Reward functions: TRL's by name (`accuracy_reward`, `reasoning_accuracy_reward`, `think_format_reward`,
            `get_soft_overlong_punishment`), dotted import paths, or a task's reward functions as `task/function`
            (e.g. `gsm8k/correctness_reward`).
        reward_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A reward model (sequence classifier) id or path, used as in `trl grpo`.
        eval_every (`int`, *optional*, defaults to `0`):
            With `task`: evaluate its test split every this many steps and log `eval_task/<task>/accuracy` (0:
            never). Greedy, with the rollouts' decoding settings.
        eval_before_after (`bool`, *optional*, defaults to `False`):
            With `task`: also evaluate before and after training, and write both, their paired difference and the
            periodic curve to `<task>_results.json` in `output_dir`.
        eval_data, eval_gen_length, eval_limit, eval_batch_size:
            Source of the test split, generation length (default: `max_completion_length`), number of problems and
            decoding batch of those evaluations.
        num_threads (`int`, *optional*, defaults to `0`):
            torch CPU threads per process on a CPU run; 0: the CPUs this process may use divided by the local
            processes (`accelerate launch` sets OMP_NUM_THREADS to 1, which halves the speed of a 2-core machine).
        tiny_warm_start_steps (`int` or `None`, *optional*, defaults to `None`):
            With `--model_name_or_path tiny`: SFT steps of the warm start (default: the built-in policy's).
    """

    algorithm: str = field(
        default="spg", metadata={"help": "The RL method: spg, d1 or wd1.", "choices": sorted(ALGORITHMS)}
    )
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
    eval_before_after: bool = field(
        default=False,
        metadata={"help": "With --task: evaluate before and after training; write <task>_results.json."},
    )
    eval_data: str | None = field(default=None, metadata={"help": "Source of the evaluation split (same forms)."})
    eval_gen_length: int | None = field(
        default=None, metadata={"help": "Generation length of the evaluations (default: max_completion_length)."}
    )
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate the first N test problems only."})
    eval_batch_size: int = field(default=16, metadata={"help": "Problems decoded together per process."})
    num_threads: int = field(
        default=0, metadata={"help": "torch CPU threads per process on a CPU run (0: usable CPUs / local processes)."}
    )
    tiny_warm_start_steps: int | None = field(
        default=None, metadata={"help": "With --model_name_or_path tiny: SFT steps of the warm start."}
    )


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


def trainer_and_config_classes(algorithm: str) -> tuple[type, type]:
    import trl_spg

    if algorithm not in ALGORITHMS:
        raise ValueError(f"--algorithm {algorithm!r}: expected one of {sorted(ALGORITHMS)}.")
    trainer_name, config_name = ALGORITHMS[algorithm]
    return getattr(trl_spg, trainer_name), getattr(trl_spg, config_name)


def make_parser(algorithm: str = "spg"):
    from trl import DatasetMixtureConfig, ModelConfig, TrlParser

    config_class = trainer_and_config_classes(algorithm)[1]
    return TrlParser((SPGScriptArguments, config_class, ModelConfig, DatasetMixtureConfig), prog="trl-spg")


def tiny_defaults(algorithm: str, task: str | None) -> dict:
    """Settings of the built-in tiny CPU run (`--model_name_or_path tiny`); flags and YAML values override them.

    The task's own tiny policy (`trl_spg.tiny.TINY_POLICIES`: Sudoku's, or Countdown's) sets the training settings.
    """
    from trl_spg.tiny import tiny_policy_module

    policy = tiny_policy_module(task)
    return {
        **policy.TRAINING_DEFAULTS,
        **(policy.SPG_DEFAULTS if algorithm == "spg" else {}),
        "prompt_style": "compact",
        "train_data": "builtin",
        "eval_data": "builtin",  # the built-in held-out split: the tiny model trains on the built-in training split
        "eval_before_after": True,
        "eval_batch_size": 128,
        "output_dir": f"outputs/{task or 'sudoku'}-tiny-{algorithm}",
        # A checkpoint every 20 steps (the last two kept): an interrupted run resumes with --resume_from_checkpoint last.
        "save_strategy": "steps",
        "save_steps": 20,
        "save_total_limit": 2,
    }


def parse_args(argv: list[str]) -> tuple:
    """``(script_args, training_args, model_args, dataset_args)`` from flags and an optional ``--config`` YAML."""
    from trl_spg.tiny.sudoku import TINY_MODEL

    algorithm = _cli.flag_or_config_value(argv, "algorithm", default="spg")
    parser = make_parser(algorithm)
    if _cli.flag_or_config_value(argv, "model_name_or_path") == TINY_MODEL:
        parser.set_defaults(**tiny_defaults(algorithm, _cli.flag_or_config_value(argv, "task")))
    return parser.parse_args_and_config(args=argv)


def set_cpu_threads(num_threads: int, training_args) -> int | None:
    """Use every CPU this process may run on, shared among the processes of this machine (CPU runs only).

    `accelerate launch` sets OMP_NUM_THREADS itself (to 1 on a machine without GPUs unless the variable is already
    set), and small models are compute-bound: on 2 cores 1 thread makes a tiny run's step about 1.8x slower than 2.
    The variable cannot tell a user's choice from accelerate's default, so it is not read; ``num_threads`` sets the
    count explicitly. GPU runs keep torch's setting. Returns the count set, or None.
    """
    import torch

    on_cpu = training_args.use_cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
    if not on_cpu and num_threads <= 0:
        return None
    if num_threads <= 0:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        num_threads = max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    torch.set_num_threads(num_threads)
    return num_threads


def trainer_model_arguments(model_args, training_args, script_args) -> dict:
    """The trainer's ``model`` and what goes with it, from TRL's `ModelConfig`.

    A checkpoint id or folder stays a string: the trainer resolves LLaDA / Dream conversions and loads it through
    TRL with ``model_init_kwargs`` (revision, dtype, attention, ``trust_remote_code``) and the quantisation config.
    ``tiny`` is the task's built-in tiny policy (Sudoku's unless the task has its own), built here with its
    tokenizer. PEFT settings apply to both.
    """
    from trl import get_peft_config, get_quantization_config

    from trl_spg.tiny import tiny_policy_module
    from trl_spg.tiny.sudoku import TINY_MODEL

    if not model_args.model_name_or_path:
        raise ValueError("Give --model_name_or_path (a LLaDA / Dream checkpoint, any masked diffusion LM, or 'tiny').")
    peft_config = get_peft_config(model_args)
    if model_args.model_name_or_path == TINY_MODEL:
        load_tiny_policy = tiny_policy_module(script_args.task).load_tiny_policy
        model, tokenizer = load_tiny_policy(seed=training_args.seed, sft_steps=script_args.tiny_warm_start_steps)
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
    """Parse, check, train, save; returns the trainer (exceptions propagate: `cli` reports them)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return train(*parse_args(sys.argv[1:] if argv is None else argv))


def cli() -> int:
    """The `trl-spg` console script: exit status 0 on success, 2 with a one-line message on a user error."""
    return _cli.run(main, "trl-spg")


def check_arguments(script_args, training_args, model_args) -> None:
    """Every check that needs no model or data, before anything loads (each error names its flag)."""
    from trl_spg.tiny.sudoku import TINY_MODEL

    _cli.check_output_dir(training_args.output_dir)
    if model_args.model_name_or_path != TINY_MODEL:
        _cli.check_model_name(model_args.model_name_or_path)
    else:
        _cli.check(
            not (model_args.load_in_4bit or model_args.load_in_8bit),
            "--load_in_4bit / --load_in_8bit quantise a checkpoint loaded by name; the tiny model is built in code "
            "in float32 (drop the flag).",
        )
    for flag in ("eval_limit", "eval_batch_size", "eval_gen_length"):
        _cli.check_positive(getattr(script_args, flag), f"--{flag}")
    if script_args.task:
        from trl_spg.tasks import get_task

        task = get_task(script_args.task)
        _cli.check(
            script_args.prompt_style in (None, *task.prompts),
            f"--prompt_style {script_args.prompt_style}: the {task.name} task has {sorted(task.prompts)}.",
        )
        evaluation = _evaluation_decoding(training_args, script_args)
        problems = evaluation.problems({"gen_length": "--eval_gen_length", "block_length": "--block_length"})
        _cli.check(not problems, "The evaluation's decoding: " + " ".join(problems))
    elif script_args.eval_every or script_args.eval_before_after:
        raise ValueError("--eval_every / --eval_before_after evaluate a task: give --task.")
    training_args.resume_from_checkpoint = _cli.resolve_checkpoint_flag(
        training_args.resume_from_checkpoint, training_args.output_dir
    )


def _evaluation_decoding(training_args, script_args):
    """The paper's protocol: greedy exact decoding with the rollouts' block and steps, at the evaluation length (the
    rollouts' fast modes are left out, so runs that differ only in them are evaluated alike)."""
    from dataclasses import replace

    rollout = training_args.rollout_config().exact()
    return replace(rollout.at_length(script_args.eval_gen_length or rollout.gen_length), temperature=0.0)


def load_training_data(script_args, dataset_args, training_args):
    """``(train_dataset, eval_dataset, task, hub dataset name)`` from ``--task``, ``--dataset_name`` (a Hub id, or a
    local file or folder) or a dataset mixture."""
    from datasets import load_dataset
    from trl import get_dataset

    from trl_spg.tasks import get_task
    from trl_spg.tasks.base import load_rows

    if script_args.task:
        task = get_task(script_args.task)
        options = {"few_shot": script_args.few_shot} if script_args.few_shot is not None else {}
        train_dataset = task.dataset(
            "train", prompt_style=script_args.prompt_style, data=script_args.train_data, **options
        )
        hub = task.hub.get("train")  # the card's `datasets` metadata names Hub datasets only
        return (
            train_dataset,
            None,
            task,
            hub.path if hub is not None and script_args.train_data in (None, "hub") else None,
        )
    name, eval_dataset = script_args.dataset_name, None
    if dataset_args.datasets:
        dataset = get_dataset(dataset_args)
    elif name and os.path.exists(name):
        splits = [script_args.dataset_train_split]
        if training_args.eval_strategy != "no":
            splits.append(script_args.dataset_test_split)
        dataset = {split: load_rows(name, split) for split in splits}
        name = None  # a local file: no Hub dataset to name in the card
    elif name:
        dataset = load_dataset(name, name=script_args.dataset_config, streaming=script_args.dataset_streaming)
    else:
        raise ValueError("Give --task, --dataset_name (a Hub id, or a local file or folder) or a `datasets` mixture.")
    train_dataset = dataset[script_args.dataset_train_split]
    _cli.check_prompt_column(train_dataset, "--dataset_name")
    if training_args.eval_strategy != "no":
        eval_dataset = dataset[script_args.dataset_test_split]
    return train_dataset, eval_dataset, None, name


def train(script_args, training_args, model_args, dataset_args):
    trainer_class, _ = trainer_and_config_classes(script_args.algorithm)
    check_arguments(script_args, training_args, model_args)
    threads = set_cpu_threads(script_args.num_threads, training_args)
    if threads is not None:
        logger.info("torch uses %d CPU threads", threads)
    registry = trl_reward_functions(training_args.max_completion_length)
    reward_funcs = [script_args.reward_model_name_or_path] if script_args.reward_model_name_or_path else []
    reward_funcs += [resolve_reward_function(name, registry) for name in script_args.reward_funcs or []]
    train_dataset, eval_dataset, task, dataset_name = load_training_data(script_args, dataset_args, training_args)
    if task is not None:
        if not reward_funcs and task.reward_weights is not None and training_args.reward_weights is None:
            training_args.reward_weights = list(task.reward_weights)
        reward_funcs = list(task.reward_funcs) + reward_funcs
    if not reward_funcs:
        raise ValueError("Give --task or at least one of --reward_funcs / --reward_model_name_or_path.")

    with _cli.naming_hub_errors("--model_name_or_path", model_args.model_name_or_path):
        trainer = trainer_class(
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            **trainer_model_arguments(model_args, training_args, script_args),
        )
    evaluation = None
    if task is not None and (script_args.eval_every > 0 or script_args.eval_before_after):
        evaluation = _task_evaluation(trainer, task, script_args)
        trainer.add_callback(evaluation)
    train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(dataset_name=dataset_name)
        title = f"{trainer_class._name} on {task.title}" if task is not None else trainer_class._name
        plot_rewards(trainer.state.log_history, os.path.join(training_args.output_dir, "reward_curve.png"), title)
        # The logged metrics (rewards, completions/mean_length, evaluations) stay with the model, not only on screen.
        trainer.state.save_to_json(os.path.join(training_args.output_dir, "trainer_state.json"))
        if task is not None:
            save_evaluation_settings(
                training_args.output_dir, script_args, _evaluation_decoding(training_args, script_args)
            )
        if evaluation is not None and script_args.eval_before_after:
            results = before_after_results(evaluation, script_args.eval_every)
            results["train_runtime_s"] = train_output.metrics["train_runtime"]
            path = os.path.join(training_args.output_dir, f"{task.name}_results.json")
            with open(path, "w") as handle:
                json.dump(results, handle, indent=2)
            print(summary_line(task, results))
    if training_args.push_to_hub:
        with _cli.naming_hub_errors("--hub_model_id", training_args.hub_model_id):
            trainer.push_to_hub(dataset_name=dataset_name)
    trainer.end()  # finish trackers, destroy the process group
    return trainer


def save_evaluation_settings(output_dir: str, script_args, decoding) -> None:
    """The task, prompts and greedy decoding of the run, which `trl-spg-evaluate` takes as its defaults."""
    settings = {
        "task": script_args.task,
        "prompt_style": script_args.prompt_style,
        "few_shot": script_args.few_shot,
        "data": script_args.eval_data,
        "gen_lengths": [decoding.gen_length],
        **{key: value for key, value in vars(decoding).items() if key != "gen_length"},
    }
    with open(os.path.join(output_dir, _cli.EVALUATION_SETTINGS), "w") as handle:
        json.dump(settings, handle, indent=2)


def _task_evaluation(trainer, task, script_args):
    from trl_spg.evaluation import TaskEvaluationCallback

    return TaskEvaluationCallback(
        trainer,
        task,
        every=script_args.eval_every,
        eval_on_start=script_args.eval_before_after,
        eval_on_end=script_args.eval_before_after,
        decoding=_evaluation_decoding(trainer.args, script_args),
        data=script_args.eval_data,
        prompt_style=script_args.prompt_style,
        prompt_options={"few_shot": script_args.few_shot} if script_args.few_shot is not None else {},
        limit=script_args.eval_limit,
        batch_size=script_args.eval_batch_size,
    )


def before_after_results(evaluation, eval_every: int) -> dict:
    """Held-out accuracy before and after training, the paired difference and the periodic curve."""
    from trl_spg.evaluation import paired_difference

    first, last = evaluation.history[0], evaluation.history[-1]
    key = evaluation.task.cluster_key
    paired = paired_difference(evaluation.records[first["step"]], evaluation.records[last["step"]], key)
    curve = [point for point in evaluation.history[1:] if eval_every and point["step"] % eval_every == 0]
    return {
        "before": first,
        "after": last,
        "difference": paired["difference"],
        "paired_stderr": paired["stderr"],
        **({"paired_stderr_clustered": paired["stderr_clustered"]} if key else {}),
        "curve": curve,
    }


def summary_line(task, results: dict) -> str:
    """Both evaluations and the paired difference in one line, with the standard errors the gain is judged by
    (clustered where the task has clusters: Sudoku's solution grids)."""
    before, after, difference = results["before"], results["after"], results["difference"]
    key = "stderr_clustered" if "paired_stderr_clustered" in results else "stderr"
    paired = results[f"paired_{key}"]
    units = f"{before['problems']} problems" + (
        f" in {before['clusters']} {task.cluster_key} clusters" if key != "stderr" else ""
    )
    return (
        f"Held-out {task.title} accuracy ({units}; +- {'clustered ' if key != 'stderr' else ''}standard error): "
        f"before {before['accuracy']:.4f} +- {before[key]:.4f}, after {after['accuracy']:.4f} +- {after[key]:.4f}, "
        f"difference {difference:+.4f} +- {paired:.4f} (paired)"
        + (f", {difference / paired:.1f} standard errors" if paired else "")
    )


def plot_rewards(log_history: list[dict], path: str, title: str) -> None:
    """The logged mean reward per step, as a PNG; beside it the mean completion length when TRL logged it
    (``completions/mean_length``: tasks whose answers vary in length, such as Countdown, shorten or grow them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(entry["step"], entry["reward"]) for entry in log_history if "reward" in entry]
    if not points:
        return
    lengths = [(e["step"], e["completions/mean_length"]) for e in log_history if "completions/mean_length" in e]
    fig, axes = plt.subplots(1, 2 if lengths else 1, figsize=(11 if lengths else 6, 3.5), squeeze=False)
    panels = [(points, "mean reward of the rollouts"), (lengths, "mean completion length (tokens)")][: len(axes[0])]
    for ax, (series, label) in zip(axes[0], panels):
        steps, values = zip(*series)
        ax.plot(steps, values, marker=".")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(cli())
