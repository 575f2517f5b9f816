"""Bad input on the command lines: each case is a one-line error naming the fix, with exit status 2, before any
model loads where no model is needed; success is status 0 (docs/troubleshooting.md lists the cases)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trl_spg.scripts import _cli
from trl_spg.scripts import evaluate as evaluate_script
from trl_spg.scripts import spg as spg_script

CPU = ["--bf16", "false", "--use_cpu", "true", "--report_to", "none", "--seed", "0"]
SMALL = ["--max_steps", "1", "--per_device_train_batch_size", "4", "--num_generations", "4"]
SMALL += ["--max_completion_length", "8", "--block_length", "4", "--diffusion_steps", "4"]


def run(script, argv, capsys):
    """``(status, the error line)`` of the command run in process (stderr also holds progress bars and logs)."""
    status = _cli.run(script.main, script.__name__, argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == (status != 0), errors
    return status, errors[0] if errors else ""


@pytest.fixture
def never_load(monkeypatch):
    """Makes every model load an error: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("trl_spg.tiny.sudoku.load_tiny_policy", refuse)
    monkeypatch.setattr("trl_spg.models.load_model_and_tokenizer", refuse)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model_name_or_path", "/nonexistent", "--task", "sudoku"], "--model_name_or_path /nonexistent: no such folder"),
        (["--model_name_or_path", "not a repo!", "--task", "sudoku"], "neither a local folder nor a Hub id"),
        (["--model_name_or_path", "tiny", "--task", "sudoku", "--temperature", "-1"], "temperature=-1.0: must be >= 0"),
        (["--model_name_or_path", "tiny", "--task", "sudoku", "--load_in_4bit"], "the tiny model is built in code"),
        (["--model_name_or_path", "tiny", "--task", "sudoku", "--eval_limit", "0"], "--eval_limit 0: must be at least 1"),
        (["--model_name_or_path", "tiny", "--task", "sudoku", "--eval_gen_length", "0"], "--eval_gen_length 0"),
        (["--model_name_or_path", "tiny", "--task", "sudoku", "--prompt_style", "poem"], "--prompt_style poem: the sudoku"),
        (["--model_name_or_path", "tiny", "--task", "sudoku", "--resume_from_checkpoint", "true"], "no checkpoint-*"),
        (["--model_name_or_path", "tiny", "--task", "sudoku", "--resume_from_checkpoint", "/nope"], "no such checkpoint"),
        (["--model_name_or_path", "tiny", "--eval_every", "2", "--dataset_name", "x"], "give --task"),
        (["--model_name_or_path", "tiny", "--task", "sudoku", "--algorithm", "ppo"], "expected one of"),
        (["--model_name_or_path", "tiny", "--task", "sudoku", "--bogus", "1"], "unknown arguments: '--bogus', '1'"),
        (["--model_name_or_path", "tiny", "--task", "gsm9k"], "Unknown task 'gsm9k'"),
    ],
)  # fmt: skip
def test_training_errors_come_before_any_model_loads(argv, message, tmp_path, capsys, never_load):
    status, err = run(spg_script, [*argv, "--output_dir", str(tmp_path / "out"), *CPU], capsys)
    assert status == 2 and message in err, err


def test_training_errors_on_files(tmp_path, capsys, never_load):
    (tmp_path / "file").write_text("x")
    status, err = run(spg_script, ["--model_name_or_path", "tiny", "--task", "sudoku", "--output_dir",
                                   str(tmp_path / "file"), *CPU], capsys)  # fmt: skip
    assert status == 2 and "--output_dir" in err and "a file is in the way" in err
    config = tmp_path / "run.yaml"
    config.write_text("model_name_or_path: tiny\ntask: sudoku\nlearning_rat: 0.1\n")
    status, err = run(spg_script, ["--config", str(config), "--output_dir", str(tmp_path / "out"), *CPU], capsys)
    assert status == 2 and "the --config file sets unknown keys: learning_rat" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "1234", "answer": "4321"}) + "\n")
    argv = ["--model_name_or_path", "tiny", "--task", "sudoku", "--train_data", str(bad)]
    status, err = run(spg_script, [*argv, "--output_dir", str(tmp_path / "out"), *CPU], capsys)
    assert status == 2 and "columns ['question', 'answer'], not 'Puzzle'" in err
    status, err = run(
        spg_script, ["--model_name_or_path", "tiny", "--output_dir", str(tmp_path), "--bf16", "true"], capsys
    )
    assert status == 2 and "bf16 needs a GPU: on a CPU pass --bf16 false --use_cpu true" in err


def test_training_data_as_a_local_file_and_its_checks(tiny_folder, capsys, monkeypatch):
    monkeypatch.chdir(tiny_folder)
    base = ["--model_name_or_path", "tiny", "--reward_funcs", "cli_rewards.digit_count", *CPU, *SMALL]
    # A JSONL file (not only a folder) is a dataset; it trains.
    argv = [*base, "--dataset_name", "data/train.jsonl", "--output_dir", "out"]
    argv[1] = str(tiny_folder / "tiny")
    assert run(spg_script, argv, capsys)[0] == 0 and (tiny_folder / "out" / "model.safetensors").is_file()
    # Without a prompt column: named before training.
    (tiny_folder / "noprompt.jsonl").write_text(json.dumps({"question": "1+1"}) + "\n")
    status, err = run(spg_script, [*argv[:-4], "--dataset_name", "noprompt.jsonl", "--output_dir", "o2"], capsys)
    assert status == 2 and "no 'prompt' column" in err
    # Two prompts cannot fill one rollout batch of 4 / 4 * ... : 0 steps would be trained, so it is an error.
    (tiny_folder / "two.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in ["1=", "2="]) + "\n")
    status, err = run(
        spg_script,
        [*argv[:-4], "--dataset_name", "two.jsonl", "--per_device_train_batch_size", "16", "--output_dir", "o3"],
        capsys,
    )
    assert status == 2 and "The training data has 2 prompts; one rollout batch takes" in err
    # A real token as the mask id: the trainer refuses at start.
    status, err = run(spg_script, [*argv[:-2], "--mask_token_id", "5", "--output_dir", "o4"], capsys)
    assert status == 2 and "mask_token_id=5 is not the model's mask token" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--gen_lengths", "20", "48", "--block_length", "32"], "--block_length=32 must divide --gen_lengths=20"),
        (["--gen_lengths", "0"], "--gen_lengths=0: a positive number"),
        (["--batch_size", "0"], "--batch_size 0: must be at least 1"),
        (["--limit", "0"], "--limit 0: must be at least 1"),
        (["--temperature", "-1"], "--temperature=-1.0: must be >= 0"),
        (["--cache_refresh_every", "2"], "--cache_refresh_every needs --kv_cache"),
        (["--prompt_style", "poem"], "--prompt_style poem"),
        (["--task", "sudoku", "--data", "/no/such.jsonl"], "No such data file or folder"),
    ],
)
def test_evaluation_errors_come_before_any_model_loads(argv, message, capsys, never_load, tmp_path):
    status, err = run(evaluate_script, ["--model_name_or_path", "tiny", "--output_dir", str(tmp_path), *argv], capsys)
    assert status == 2 and message in err, err


def test_evaluation_checks_output_folder_mask_id_and_length(tiny_folder, capsys, tmp_path):
    model = str(tiny_folder / "tiny")
    common = ["--model_name_or_path", model, "--task", "countdown", "--prompt_style", "compact", "--limit", "2"]
    (tmp_path / "file").write_text("x")
    status, err = run(evaluate_script, [*common, "--gen_lengths", "8", "--output_dir", str(tmp_path / "file")], capsys)
    assert status == 2 and "a file is in the way" in err
    out = ["--output_dir", str(tmp_path / "eval")]
    for mask, message in [("999", "is outside the model's vocabulary"), ("5", "is not the model's mask token")]:
        status, err = run(evaluate_script, [*common, "--gen_lengths", "8", "--mask_token_id", mask, *out], capsys)
        assert status == 2 and f"--mask_token_id={mask} {message}" in err
    status, err = run(evaluate_script, [*common, "--gen_lengths", "512", *out], capsys)
    assert status == 2 and "exceeds the model's 256 positions" in err
    # 48 is no multiple of 32: the whole generation is one block, as in training; it evaluates.
    assert run(evaluate_script, [*common, "--gen_lengths", "48", *out], capsys)[0] == 0
    summary = json.loads((tmp_path / "eval" / "countdown_summary.json").read_text())
    assert (summary["results"][0]["block_length"], summary["results"][0]["steps"]) == (48, 24)


def test_hub_errors_carry_the_offline_hint():
    from huggingface_hub.errors import OfflineModeIsEnabled

    message = _cli.user_message(OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/models/x: offline mode"))
    assert "HF_HUB_OFFLINE=1" in message and "local folder" in message


def test_evaluation_reads_the_settings_of_a_trained_folder_and_matches_the_callback(tmp_path, capsys, monkeypatch):
    """A folder trained by `trl-spg` evaluates with the run's prompts and decoding, to the callback's accuracy."""
    import functools

    from trl_spg.tiny import sudoku as tiny_sudoku

    toy_spec = functools.partial(tiny_sudoku.TinySudokuSpec, hidden_size=32, num_layers=1, sft_batch_size=4)
    monkeypatch.setattr(tiny_sudoku, "TinySudokuSpec", toy_spec)
    monkeypatch.setenv("TRL_SPG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["--model_name_or_path", "tiny", "--task", "sudoku", "--tiny_warm_start_steps", "20", "--max_steps", "1"]
    argv += ["--per_device_train_batch_size", "8", "--num_generations", "4", "--eval_limit", "12", *CPU]
    assert run(spg_script, [*argv, "--output_dir", str(out)], capsys)[0] == 0
    after = json.loads((out / "sudoku_results.json").read_text())["after"]
    settings = json.loads((out / _cli.EVALUATION_SETTINGS).read_text())
    assert (settings["prompt_style"], settings["gen_lengths"], settings["temperature"]) == ("compact", [20], 0.0)
    status = run(evaluate_script, ["--model_name_or_path", str(out), "--limit", "12", "--output_dir", str(tmp_path / "e")],
                 capsys)[0]  # fmt: skip
    assert status == 0
    summary = json.loads((tmp_path / "e" / "sudoku_summary.json").read_text())
    assert summary["prompt_style"] == "compact" and summary["results"][0]["gen_length"] == 20
    assert summary["results"][0]["accuracy"] == after["accuracy"] and summary["results"][0]["problems"] == 12


@pytest.mark.slow
@pytest.mark.parametrize("command", ["trl-spg", "trl-spg-evaluate"])
def test_installed_commands_exit_0_on_success_and_2_on_error(command, tiny_folder, tmp_path):
    executable = shutil.which(command)
    assert executable is not None, f"the {command} console script is not installed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    model = str(tiny_folder / "tiny")
    if command == "trl-spg":
        good = ["--model_name_or_path", model, "--dataset_name", str(tiny_folder / "data"), "--reward_funcs",
                "cli_rewards.digit_count", *CPU, *SMALL, "--output_dir", str(tmp_path / "out")]  # fmt: skip
    else:
        good = ["--model_name_or_path", model, "--task", "countdown", "--prompt_style", "compact", "--limit", "2",
                "--gen_lengths", "8", "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    for argv, status in [(good, 0), (["--model_name_or_path", "/nonexistent", *good[2:]], 2)]:
        completed = subprocess.run(
            [executable, *argv], env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent
        )
        assert completed.returncode == status, completed.stderr[-2000:]
    module = "trl_spg.scripts.spg" if command == "trl-spg" else "trl_spg.scripts.evaluate"
    completed = subprocess.run(
        [sys.executable, "-m", module, *good], env=env, capture_output=True, timeout=300, cwd=Path(__file__).parent
    )
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_interrupt_and_bug_statuses(capsys, monkeypatch):
    def interrupted(argv):
        raise KeyboardInterrupt

    def buggy(argv):
        raise RuntimeError("a bug")

    assert _cli.run(interrupted, "trl-spg", []) == 130
    assert "resumes with --resume_from_checkpoint last" in capsys.readouterr().err
    with pytest.raises(RuntimeError):  # not a user error: the traceback stays
        _cli.run(buggy, "trl-spg", [])
    monkeypatch.setenv(_cli.DEBUG_ENV, "1")
    with pytest.raises(ValueError):  # --debug / TRL_SPG_DEBUG=1: user errors show their traceback too
        _cli.run(lambda argv: _cli.check(False, "bad"), "trl-spg", [])
