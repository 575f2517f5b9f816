"""The Sudoku example, end to end at toy size (warm start, evaluation, a few SPG steps, artefacts), and the\nbenchmark scripts built on it."""

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_sudoku.py"


TOY = ["--tiny_warm_start_steps", "3", "--per_device_train_batch_size", "8", "--num_generations", "4"]
TOY += ["--use_cpu", "true", "--num_threads", "1"]


@pytest.mark.slow
def test_example_runs_two_steps_and_writes_artefacts(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(EXAMPLE), "--output_dir", str(out), "--max_steps", "2", "--eval_limit", "8"]
    command += ["--eval_every", "1", *TOY]
    env = {**os.environ, "TRL_SPG_CACHE": str(tmp_path / "cache")}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((out / "sudoku_results.json").read_text())
    assert set(results) == {
        *("before", "after", "difference", "paired_stderr", "paired_stderr_clustered", "curve", "train_runtime_s")
    }
    assert results["train_runtime_s"] > 0
    # Greedy evaluation is deterministic: the curve's last point is the final model's accuracy.
    assert [point["step"] for point in results["curve"]] == [1, 2] and results["curve"][-1] == results["after"]
    assert results["difference"] == results["after"]["accuracy"] - results["before"]["accuracy"]
    # The first 8 held-out puzzles, made round-robin from 8 distinct test grids, 8 empty cells each.
    before = results["before"]
    assert (before["problems"], before["clusters"], before["total"]) == (8, 8, 64)
    assert "Held-out Sudoku accuracy (8 problems in 8 solution clusters" in completed.stdout
    assert (out / "reward_curve.png").stat().st_size > 0
    assert (out / "README.md").exists() and (out / "model.safetensors").exists()
    # The warm start is cached: a second build loads it instead of training.
    assert len(list((tmp_path / "cache").glob("tiny-sudoku-*"))) == 1


def test_tiny_model_is_deterministic_and_loads_from_its_cache(tmp_path, monkeypatch):
    from trl_spg.tasks.sudoku import sudoku_split
    from trl_spg.tiny import sudoku as sudoku_tiny

    train, _ = sudoku_split()
    spec = sudoku_tiny.TinySudokuSpec(hidden_size=32, num_layers=1, sft_steps=2, sft_batch_size=4)
    model_a, _ = sudoku_tiny.tiny_sudoku_model(train[:16], spec, tmp_path / "a")
    model_b, _ = sudoku_tiny.tiny_sudoku_model(train[:16], spec, tmp_path / "b")

    def no_training(*args, **kwargs):
        raise AssertionError("the cached warm start was trained again")

    monkeypatch.setattr(sudoku_tiny, "diffusion_sft", no_training)
    loaded, tokenizer = sudoku_tiny.tiny_sudoku_model(train[:16], spec, tmp_path / "a")
    for a, b, c in zip(model_a.parameters(), model_b.parameters(), loaded.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert tokenizer.mask_token_id is not None
    # Another setting is another cache entry, so it trains.
    with pytest.raises(AssertionError, match="trained again"):
        sudoku_tiny.tiny_sudoku_model(train[:16], dataclasses.replace(spec, seed=1), tmp_path / "a")


@pytest.mark.slow
def test_seeds_script_runs_the_example_and_tabulates_its_results(tmp_path, capsys):
    path = EXAMPLE.parents[1] / "benchmarks" / "sudoku_seeds.py"
    spec = importlib.util.spec_from_file_location("sudoku_seeds", path)
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)
    toy = "--tiny_warm_start_steps 2 --max_steps 1 --per_device_train_batch_size 8 --num_generations 4"
    toy += " --eval_limit 12 --use_cpu true --num_threads 1"
    root = tmp_path / "runs"
    rows = seeds.main(
        ["--seeds", "3", "--launcher", "python", "--output_root", str(root), "--output", str(tmp_path / "rows.json")]
        + ["--", *toy.split()]
    )
    saved = json.loads((root / "seed-3" / "sudoku_results.json").read_text())
    assert len(rows) == 1 and rows[0]["seed"] == 3 and rows[0]["wall_s"] > 0
    assert {k: rows[0][k] for k in saved} == saved
    assert (saved["before"]["problems"], saved["before"]["clusters"]) == (12, 12)
    # A fresh warm-start cache in the seed's folder, and the run's own log beside its results.
    assert len(list((root / "seed-3" / "cache").glob("tiny-sudoku-*"))) == 1
    assert "Held-out Sudoku accuracy (12 problems" in (root / "seed-3" / "run.log").read_text()
    table = capsys.readouterr().out.strip().splitlines()[-3:]
    assert table[0].startswith("| seed | before RL | after RL | gain |")
    before, after = saved["before"]["accuracy"], saved["after"]["accuracy"]
    cells = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert cells[:4] == ["3", f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}"]
    assert cells[4] == f"{saved['paired_stderr_clustered']:.4f} ({saved['paired_stderr']:.4f})"
    assert json.loads((tmp_path / "rows.json").read_text())[0]["difference"] == saved["difference"]
    assert seeds._flag_value(["--output_dir", "a", "--output_dir=b"], "--output_dir") == "b"


@pytest.mark.slow
def test_ablation_runs_each_method_from_the_same_warm_start_and_writes_its_report(tmp_path):
    path = EXAMPLE.parents[1] / "benchmarks" / "ablation.py"
    spec = importlib.util.spec_from_file_location("ablation", path)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    toy = "--tiny_warm_start_steps 2 --per_device_train_batch_size 8 --num_generations 4 --num_threads 1 --logging_steps 1"
    own = ["--methods", "spg-elbo", "wd1", "--seeds", "1", "--steps", "2", "--eval_every", "1", "--eval_puzzles", "8"]
    own += ["--output_root", str(tmp_path / "runs"), "--doc", str(tmp_path / "ablation.md")]
    summaries = ablation.main(own + ["--", *toy.split()])
    runs = {
        m: json.loads((tmp_path / "runs" / m / "seed-0" / "sudoku_results.json").read_text())
        for m in ("spg-elbo", "wd1")
    }
    # One warm start, shared: both methods start from the same held-out accuracy and their own curves.
    assert len(list((tmp_path / "runs" / "cache").glob("tiny-sudoku-*"))) == 1
    assert runs["spg-elbo"]["before"] == runs["wd1"]["before"]
    for summary in summaries:
        run = runs[summary["method"]]
        assert summary["gain"] == run["difference"] and math.isnan(summary["gain_stderr"])  # one seed: no spread
        assert summary["curve"] == {
            0: run["before"]["accuracy"],
            1: run["curve"][0]["accuracy"],
            2: run["after"]["accuracy"],
        }
    # The method's flags reached the example: wd1's log names its own metric.
    assert "wd1/sequence_logp" in (tmp_path / "runs" / "wd1" / "seed-0" / "run.log").read_text()
    report = (tmp_path / "ablation.md").read_text()
    assert "| spg-elbo |" in report and "| wd1 |" in report and (tmp_path / "ablation.png").stat().st_size > 0
    assert "--methods spg-elbo wd1 --seeds 1 --steps 2" in report and str(tmp_path) not in report
