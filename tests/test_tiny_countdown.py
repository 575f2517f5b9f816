"""The built-in tiny Countdown policy (`trl_spg.tiny.countdown`): held-out split, SFT targets, cache and CLI run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from trl_spg.tasks.countdown import BUILTIN_PROBLEMS, builtin_rows, generate_problems, reward_value
from trl_spg.tiny import countdown as tiny_countdown
from trl_spg.tiny.warm_start import _encode_completions


def _number_sets(rows):
    return {tuple(sorted(row["nums"])) for row in rows}


def test_held_out_number_sets_never_occur_in_training():
    # The first rows of the built-in training split (the whole split takes seconds to generate; same generator).
    train, test = generate_problems(4000, "train", **BUILTIN_PROBLEMS), builtin_rows("test")
    assert len(test) == 1024 and train[:5] == builtin_rows("train")[:5]
    assert not _number_sets(train) & _number_sets(test)
    # The split is by number set, not by seed or size: other draws keep to their side too.
    others = generate_problems(2000, "train", seed=5) + generate_problems(300, "train", seed=1, max_number=20)
    held_out = generate_problems(300, "test", seed=5) + generate_problems(100, "test", seed=1, max_number=20)
    assert not _number_sets(others) & _number_sets(test)
    assert not _number_sets(others) & _number_sets(held_out)


def test_sft_targets_are_correct_solutions_of_varying_length_ending_with_eos(tiny_tokenizer):
    rows = generate_problems(400, "train", **BUILTIN_PROBLEMS)
    completions = [tiny_countdown.compact_completion(row) for row in rows]
    for row, completion in zip(rows, completions):
        assert completion.startswith("<answer>") and completion.endswith("</answer>") and " " not in completion
        assert reward_value(completion, row["target"], row["nums"]) == 1.0
        assert tiny_countdown.canonical_solution(row["nums"], row["target"]) == completion[8:-9]
    length = tiny_countdown.TINY_COMPLETION_LENGTH
    ids = _encode_completions(tiny_tokenizer, completions, length, tiny_tokenizer.eos_token_id)
    eos = ids == tiny_tokenizer.eos_token_id
    answer_lengths = (~eos).sum(1)
    # Every target ends with EOS (padding to the canvas is EOS too), at several lengths, all shorter than the canvas.
    assert eos[:, -1].all() and len(set(answer_lengths.tolist())) >= 4 and answer_lengths.max() < length
    assert all(eos[i, n:].all() and not eos[i, :n].any() for i, n in enumerate(answer_lengths.tolist()))
    # The canonical answer keeps the prompt's order when that works, and says so when nothing does.
    assert tiny_countdown.canonical_solution([3, 4, 2], 5) == "3+4-2"
    assert tiny_countdown.canonical_solution([1, 1, 1], 100) is None
    with pytest.raises(ValueError, match="no solution"):
        tiny_countdown.compact_completion({"nums": [1, 1, 1], "target": 100})


def test_tiny_countdown_settings_reach_the_command_line():
    from trl_spg.scripts.spg import parse_args, tiny_defaults

    defaults = tiny_defaults("spg", "countdown")
    assert defaults["max_completion_length"] == tiny_countdown.TINY_COMPLETION_LENGTH
    assert defaults["output_dir"] == "outputs/countdown-tiny-spg" and defaults["eval_data"] == "builtin"
    assert not set(tiny_countdown.TRAINING_DEFAULTS) & set(tiny_countdown.SPG_DEFAULTS)
    script_args, training_args, _, _ = parse_args(["--task", "countdown", "--model_name_or_path", "tiny"])
    assert training_args.max_steps == tiny_countdown.TRAINING_DEFAULTS["max_steps"]
    assert training_args.learning_rate == tiny_countdown.TRAINING_DEFAULTS["learning_rate"]
    assert script_args.eval_before_after and script_args.prompt_style == "compact"
    # Sudoku keeps its own settings.
    assert parse_args(["--model_name_or_path", "tiny"])[1].max_completion_length == 20


def test_warm_start_is_cached_and_reused(tmp_path, monkeypatch, caplog):
    rows = generate_problems(16, "train")
    spec = tiny_countdown.TinyCountdownSpec(hidden_size=32, num_layers=1, sft_steps=2, sft_batch_size=4)
    with caplog.at_level("INFO", logger="trl_spg.tiny.countdown"):
        trained, _ = tiny_countdown.tiny_countdown_model(rows, spec, tmp_path)
    assert caplog.records[0].getMessage().startswith("Warm-starting the tiny Countdown policy: 2 SFT steps")
    assert len(list(tmp_path.glob("tiny-countdown-*"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached warm start was trained again")

    monkeypatch.setattr(tiny_countdown, "diffusion_sft", no_training)
    loaded, tokenizer = tiny_countdown.tiny_countdown_model(rows, spec, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))
    assert tokenizer.mask_token_id == loaded.config.mask_token_id
    with pytest.raises(AssertionError, match="trained again"):  # another setting is another cache entry
        tiny_countdown.tiny_countdown_model(rows, tiny_countdown.TinyCountdownSpec(hidden_size=32, seed=1), tmp_path)


@pytest.mark.slow
def test_cli_trains_the_tiny_countdown_policy_and_reuses_its_warm_start(tmp_path):
    out = tmp_path / "out"
    # The console script of this environment (the one next to its Python).
    command = [os.path.join(os.path.dirname(sys.executable), "trl-spg"), "--task", "countdown"]
    command += ["--model_name_or_path", "tiny", "--max_steps", "2"]
    command += ["--output_dir", str(out), "--tiny_warm_start_steps", "3", "--eval_limit", "16", "--logging_steps", "1"]
    command += ["--per_device_train_batch_size", "8", "--num_generations", "4", "--use_cpu", "true"]
    command += ["--num_threads", "1", "--save_strategy", "no"]
    env = {**os.environ, "TRL_SPG_CACHE": str(tmp_path / "cache")}
    for attempt in range(2):
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, completed.stderr[-3000:]
        log = completed.stdout + completed.stderr
        assert ("Warm-starting the tiny Countdown" in log) == (attempt == 0)
        assert ("Loading the warm-started tiny Countdown" in log) == (attempt == 1)
    assert len(list((tmp_path / "cache").glob("tiny-countdown-*"))) == 1
    results = json.loads((out / "countdown_results.json").read_text())
    assert results["before"]["problems"] == 16 and results["after"]["step"] == 2
    assert results["difference"] == results["after"]["accuracy"] - results["before"]["accuracy"]
    assert "Held-out Countdown accuracy (16 problems in " in completed.stdout  # "... N number_set clusters"
    assert results["paired_stderr_clustered"] >= 0
    # Completion lengths are logged and recorded with the run, and plotted beside the reward.
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    lengths = [entry["completions/mean_length"] for entry in history if "reward" in entry]
    assert lengths and all(0 < length <= tiny_countdown.TINY_COMPLETION_LENGTH for length in lengths)
    assert (out / "reward_curve.png").stat().st_size > 0


def test_seeds_table_uses_the_plain_paired_stderr_for_unclustered_tasks():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tiny_seeds.py"
    spec = importlib.util.spec_from_file_location("tiny_seeds", path)
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)
    row = {"seed": 0, "before": {"accuracy": 0.1}, "after": {"accuracy": 0.2}, "difference": 0.1}
    row.update(paired_stderr=0.02, wall_s=605.0)
    table = seeds.format_table([row]).splitlines()
    assert table[0].startswith("| seed | before RL | after RL | gain | +- paired SE | gain / SE | wall time |")
    assert table[2] == "| 0 | 0.1000 | 0.2000 | +0.1000 | 0.0200 | 5.0 | 10 min 05 s |"
    assert seeds.ENTRY_POINTS["countdown"][-4:] == ["--task", "countdown", "--model_name_or_path", "tiny"]
