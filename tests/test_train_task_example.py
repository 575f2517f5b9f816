"""The generic training example and the paper's recipe files: every recipe parses and carries the task's settings."""

import importlib.util
import sys
from pathlib import Path

import pytest

from trl_spg.tasks import get_task

EXAMPLES = Path(__file__).parent.parent / "examples"


def load_example():
    spec = importlib.util.spec_from_file_location("train_task", EXAMPLES / "train_task.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["gsm8k", "math500", "countdown", "sudoku"])
def test_recipe_parses_and_matches_the_task(name, tmp_path):
    example = load_example()
    recipe = EXAMPLES / "configs" / f"{name}_llada.yaml"
    argv = ["--config", str(recipe), "--output_dir", str(tmp_path), "--bf16", "false"]  # bf16 needs a GPU
    if name == "sudoku":  # the Sudoku recipe is shared with examples/train_sudoku.py, which has no --task
        argv += ["--task", "sudoku"]
    script_args, training_args = example.parse_args(argv)
    task = get_task(script_args.task)
    assert task.name == name and script_args.model_name_or_path == "GSAI-ML/LLaDA-8B-Instruct"
    assert {key: getattr(training_args, key) for key in task.training} == dict(task.training)
    assert training_args.num_generations == 6 and training_args.num_iterations == 4
    assert training_args.learning_rate == 3e-6 and training_args.max_grad_norm == 0.2
    assert training_args.max_completion_length == 256 and training_args.block_length == 32
    assert training_args.diffusion_steps == 128 and training_args.num_mc_masks == 2
    assert training_args.negative_bound == "mix" and training_args.mix_weight == 0.5
    assert script_args.use_peft and script_args.lora_r == 128 and script_args.lora_alpha == 64
    if script_args.prompt_style is not None:
        assert script_args.prompt_style in task.prompts


def test_script_requires_a_task_and_a_model():
    with pytest.raises(SystemExit, match="--task and --model_name_or_path"):
        load_example().parse_args(["--output_dir", "unused", "--bf16", "false"])
