"""The `trl-spg` command line: TRL's parser over SPG, model and script flags; rewards by name or import path; YAML."""

import functools
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from trl_spg.scripts.spg import main, resolve_reward_function, trl_reward_functions

CONFIGS = Path(__file__).parent.parent / "examples" / "accelerate_configs"
COMMON = ["--bf16", "false", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--seed", "0"]
SMALL = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "4"]
SMALL += ["--max_completion_length", "8", "--block_length", "4", "--diffusion_steps", "4", "--logging_steps", "1"]


@pytest.mark.slow
def test_help_lists_spg_model_and_script_flags():
    command = shutil.which("trl-spg")
    assert command is not None, "the trl-spg console script is not installed"
    text = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=120, check=True).stdout
    for flag in ("--negative_bound", "--masking_strategy", "--block_length", "--use_peft", "--lora_r"):
        assert flag in text
    for flag in ("--load_in_4bit", "--dtype", "--attn_implementation", "--task", "--reward_funcs", "--dataset_name"):
        assert flag in text


def test_trains_with_a_dotted_reward_path_and_lora(tiny_folder, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent)  # dotted paths resolve from the working directory, as in `trl grpo`
    out = tiny_folder / "out"
    args = ["--model_name_or_path", str(tiny_folder / "tiny"), "--dataset_name", str(tiny_folder / "data")]
    args += ["--reward_funcs", "cli_rewards.digit_count", "get_soft_overlong_punishment", "--output_dir", str(out)]
    args += ["--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj"]
    trainer = main(args + COMMON + SMALL)
    assert trainer.state.global_step == 2
    assert trainer.reward_func_names == ["digit_count", "soft_overlong_punishment_reward"]
    assert trainer.model.peft_config["default"].r == 4
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()


def test_yaml_config_sets_every_kind_of_flag(tiny_folder, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent)
    config = {
        "model_name_or_path": str(tiny_folder / "tiny"),
        "dataset_name": str(tiny_folder / "data"),
        "reward_funcs": ["cli_rewards.digit_count"],
        "output_dir": str(tiny_folder / "out"),
        "negative_bound": "eubo",
        "eubo_beta": 2.0,
        "dtype": "float32",
    }
    path = tiny_folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    trainer = main(["--config", str(path), "--max_steps", "1"] + COMMON + SMALL[2:])
    assert trainer.args.negative_bound == "eubo" and trainer.args.eubo_beta == 2.0
    assert trainer.args.model_init_kwargs["dtype"] == "float32"
    assert trainer.state.global_step == 1


def test_reward_resolution_errors_name_the_choices():
    registry = trl_reward_functions(256)
    assert resolve_reward_function("think_format_reward", registry) is registry["think_format_reward"]
    with pytest.raises(ValueError, match="accuracy_reward"):
        resolve_reward_function("nonsense", registry)
    with pytest.raises(ValueError, match="Could not import"):
        resolve_reward_function("no_such_module.reward", registry)


def test_missing_data_or_rewards_is_a_clear_error(tiny_folder):
    base = ["--model_name_or_path", str(tiny_folder / "tiny"), "--output_dir", str(tiny_folder / "out")] + COMMON
    with pytest.raises(ValueError, match="--dataset_name"):
        main(base + ["--reward_funcs", "think_format_reward"])
    with pytest.raises(ValueError, match="--reward_funcs"):
        main(base + ["--dataset_name", str(tiny_folder / "data")])


@pytest.mark.parametrize(
    "name, kind",
    [
        ("multi_gpu.yaml", "MULTI_GPU"),
        ("deepspeed_zero2.yaml", "DEEPSPEED"),
        ("deepspeed_zero3.yaml", "DEEPSPEED"),
        ("fsdp2.yaml", "FSDP"),
    ],
)
def test_accelerate_configs_load(name, kind):
    config = load_config_from_file(str(CONFIGS / name))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == (3 if "zero3" in name else 2)
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2


@pytest.mark.parametrize("algorithm", ["spg", "d1", "wd1"])
@pytest.mark.parametrize("name", ["gsm8k", "math500", "countdown", "sudoku"])
def test_paper_recipes_parse_and_carry_the_task_settings(name, algorithm):
    from trl_spg import DiffuGRPOConfig, SPGConfig, WD1Config
    from trl_spg.scripts.spg import parse_args
    from trl_spg.tasks import get_task

    suffix = "" if algorithm == "spg" else f"_{algorithm}"
    recipe = Path(__file__).parent.parent / "examples" / "configs" / f"{name}_llada{suffix}.yaml"
    argv = ["--config", str(recipe), "--bf16", "false"]  # bf16 needs a GPU here
    script_args, training_args, model_args, _ = parse_args(argv)
    task = get_task(script_args.task)
    assert task.name == name and model_args.model_name_or_path == "GSAI-ML/LLaDA-8B-Instruct"
    assert script_args.algorithm == algorithm and training_args.num_generations == 6
    assert training_args.learning_rate == 3e-6 and training_args.max_grad_norm == 0.2
    assert (training_args.max_completion_length, training_args.block_length, training_args.diffusion_steps) == (
        256,
        32,
        128,
    )
    assert model_args.use_peft and model_args.load_in_4bit and (model_args.lora_r, model_args.lora_alpha) == (128, 64)
    assert set(model_args.lora_target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    if script_args.prompt_style is not None:
        assert script_args.prompt_style in task.prompts
    # Each method's published settings (d1 as SPG's reference d1 runs; wd1 as its own scripts).
    if algorithm == "spg":
        assert isinstance(training_args, SPGConfig) and training_args.num_iterations == 4
        assert training_args.negative_bound == "mix" and training_args.num_mc_masks == 2
    elif algorithm == "d1":
        assert isinstance(training_args, DiffuGRPOConfig) and training_args.num_iterations == 4
        assert (training_args.epsilon, training_args.beta, training_args.p_mask_prompt) == (0.5, 0.04, 0.15)
        assert not training_args.use_bias_correction_kl
    else:
        assert isinstance(training_args, WD1Config) and training_args.psi == 1.0
        assert training_args.num_iterations == (8 if name == "sudoku" else 12) and training_args.p_mask_prompt == 0.15
    assert training_args.output_dir == f"outputs/{name}-llada-{algorithm}"


def test_task_flag_gives_data_prompts_and_rewards(tiny_folder):
    out = tiny_folder / "out"
    args = ["--task", "sudoku", "--prompt_style", "compact", "--model_name_or_path", str(tiny_folder / "tiny")]
    args += ["--output_dir", str(out), "--eval_every", "1", "--eval_limit", "4", "--eval_gen_length", "8"]
    trainer = main(args + COMMON + SMALL)
    assert trainer.state.global_step == 2
    assert trainer.reward_func_names == ["sudoku_reward"]
    assert trainer.train_dataset[0]["prompt"].endswith("=") and len(trainer.train_dataset) == 800
    evaluations = [entry for entry in trainer.state.log_history if "eval_task/sudoku/accuracy" in entry]
    assert [entry["step"] for entry in evaluations] == [1, 2]
    assert "datasets:" not in (out / "README.md").read_text()  # built-in data: no Hub dataset to name


def test_tiny_model_runs_the_builtin_cpu_default(tmp_path, monkeypatch):
    from trl_spg.tiny import sudoku as tiny_sudoku

    # The real warm start takes a minute; a 1-layer, 2-step one goes through the same loading code.
    toy_spec = functools.partial(tiny_sudoku.TinySudokuSpec, hidden_size=32, num_layers=1, sft_batch_size=4)
    monkeypatch.setattr(tiny_sudoku, "TinySudokuSpec", toy_spec)
    monkeypatch.setenv("TRL_SPG_CACHE", str(tmp_path / "cache"))
    args = ["--model_name_or_path", "tiny", "--task", "sudoku", "--output_dir", str(tmp_path / "out")]
    args += ["--max_steps", "1", "--per_device_train_batch_size", "8", "--num_generations", "4", "--seed", "3"]
    args += ["--tiny_warm_start_steps", "2", "--eval_before_after", "false"]
    trainer = main(args + ["--bf16", "false", "--use_cpu", "true"])
    # The tiny run's settings and compact prompts apply; flags still win.
    assert trainer.state.global_step == 1 and trainer.args.per_device_train_batch_size == 8
    assert (trainer.args.max_completion_length, trainer.args.p_mask_prompt) == (20, 0.0)
    assert trainer.args.lr_scheduler_type == tiny_sudoku.TRAINING_DEFAULTS["lr_scheduler_type"]
    assert trainer.args.report_to == []
    assert trainer.train_dataset[0]["prompt"].endswith("=")
    # The policy is the warm start for that seed, cached where the evaluation CLI finds it too.
    assert len(list((tmp_path / "cache").glob("tiny-sudoku-*"))) == 1
    assert trainer.model.config.hidden_size == 32


def test_parse_applies_tiny_defaults_only_for_the_tiny_model(tmp_path):
    from trl_spg import DiffuGRPOConfig, WD1Config
    from trl_spg.scripts.spg import parse_args

    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.002\nnum_generations: 4\nmodel_name_or_path: tiny\n")
    script_args, training_args, model_args, _ = parse_args(["--config", str(config), "--max_steps", "7"])
    # YAML and flags win over the tiny run's settings, which fill in the rest.
    assert training_args.learning_rate == 0.002 and training_args.max_steps == 7
    assert (training_args.max_completion_length, training_args.p_mask_prompt) == (20, 0.0)
    assert script_args.eval_before_after and training_args.output_dir.endswith("outputs/sudoku-tiny-spg")
    # A named model keeps the config's own defaults.
    _, training_args, model_args, _ = parse_args(
        ["--model_name_or_path", "some/model", "--use_peft", "--lora_r", "8", "--bf16", "false"]
    )
    assert training_args.max_completion_length == 256 and training_args.p_mask_prompt == 0.15
    assert model_args.use_peft and model_args.lora_r == 8
    # A baseline gets the shared tiny settings, keeps its own (d1's prompt masking, beta) and its own output folder.
    _, training_args, _, _ = parse_args(["--model_name_or_path", "tiny", "--algorithm", "d1"])
    assert isinstance(training_args, DiffuGRPOConfig) and training_args.output_dir.endswith("sudoku-tiny-d1")
    assert (training_args.max_completion_length, training_args.p_mask_prompt, training_args.beta) == (20, 0.15, 0.04)
    config.write_text("algorithm: wd1\nmodel_name_or_path: tiny\n")
    _, training_args, _, _ = parse_args(["--config", str(config)])
    assert isinstance(training_args, WD1Config) and training_args.psi == 1.0 and not training_args.bf16
    with pytest.raises(ValueError, match="expected one of"):
        parse_args(["--algorithm", "ppo"])


def test_tiny_run_saves_checkpoints_and_resumes_with_its_first_evaluation(tmp_path, monkeypatch):
    from trl_spg.tiny import sudoku as tiny_sudoku

    toy_spec = functools.partial(tiny_sudoku.TinySudokuSpec, hidden_size=32, num_layers=1, sft_batch_size=4)
    monkeypatch.setattr(tiny_sudoku, "TinySudokuSpec", toy_spec)
    monkeypatch.setenv("TRL_SPG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = [
        "--model_name_or_path",
        "tiny",
        "--task",
        "sudoku",
        "--output_dir",
        str(out),
        "--tiny_warm_start_steps",
        "2",
    ]
    args += ["--per_device_train_batch_size", "8", "--num_generations", "4", "--eval_limit", "8", "--save_steps", "1"]
    args += ["--bf16", "false", "--use_cpu", "true"]
    main([*args, "--max_steps", "2"])
    first = json.loads((out / "sudoku_results.json").read_text())
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    # An interrupted run resumes from the last checkpoint, keeping the evaluation made before training.
    shutil.rmtree(out / "checkpoint-2")
    trainer = main([*args, "--max_steps", "2", "--resume_from_checkpoint", "last"])
    resumed = json.loads((out / "sudoku_results.json").read_text())
    assert trainer.state.global_step == 2 and resumed["before"] == first["before"] and resumed["before"]["step"] == 0
    assert resumed["after"] == first["after"]  # the same model at step 2: resuming loses nothing
