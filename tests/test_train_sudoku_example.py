"""The Sudoku example, end to end at toy size (warm start, evaluation, a few SPG steps, artefacts), and the\nbenchmark scripts built on it."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_sudoku.py"


def load_benchmark(name: str):
    """A script of `benchmarks/` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLE.parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    seeds = load_benchmark("sudoku_seeds")
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
def test_ablation_runs_each_method_from_the_same_warm_start_resumes_and_writes_its_report(tmp_path, capsys):
    ablation = load_benchmark("ablation")
    toy = "--tiny_warm_start_steps 2 --max_steps 2 --per_device_train_batch_size 8 --num_generations 4"
    toy += " --num_threads 1 --logging_steps 1"
    store, doc = tmp_path / "results.jsonl", tmp_path / "ablation.md"
    own = ["--methods", "spg-mix", "wd1", "--eval_every", "1", "--eval_limit", "8", "--results", str(store)]
    own += ["--output_root", str(tmp_path / "runs"), "--doc", str(doc)]
    ablation.main(own + ["--seeds", "0", "--", *toy.split()])
    runs = {m: json.loads((tmp_path / "runs" / "sudoku" / m / "seed-0" / "sudoku_results.json").read_text())
            for m in ("spg-mix", "wd1")}  # fmt: skip
    # One warm start per seed, shared: both methods start from the same held-out accuracy.
    assert len(list((tmp_path / "runs" / "sudoku" / "cache" / "seed-0").glob("tiny-sudoku-*"))) == 1
    assert runs["spg-mix"]["before"] == runs["wd1"]["before"]
    assert "wd1/sequence_logp" in (tmp_path / "runs" / "sudoku" / "wd1" / "seed-0" / "run.log").read_text()
    assert len(store.read_text().splitlines()) == 2

    # A second sitting: seed 0's runs are skipped, and --max_runs stops after one new run (spg-mix on seed 1).
    capsys.readouterr()
    summaries = ablation.main(own + ["--seeds", "0", "1", "--max_runs", "1", "--", *toy.split()])
    printed = capsys.readouterr().out
    assert "spg-mix seed 1:" in printed and "seed 0:" not in printed and "wd1 seed 1:" not in printed
    rows = [json.loads(line) for line in store.read_text().splitlines()]
    assert [(row["method"], row["seed"]) for row in rows] == [("spg-mix", 0), ("wd1", 0), ("spg-mix", 1)]
    mix = {row["seed"]: row["difference"] for row in rows if row["method"] == "spg-mix"}
    by_method = {summary["method"]: summary for summary in summaries}
    assert by_method["spg-mix"]["gain"] == pytest.approx((mix[0] + mix[1]) / 2)
    assert by_method["spg-mix"]["gain_se"] == pytest.approx(abs(mix[0] - mix[1]) / 2)  # SD / sqrt(2) of two values
    assert by_method["wd1"]["vs_reference"] == pytest.approx(runs["wd1"]["difference"] - mix[0])
    assert by_method["wd1"]["curve"] == {
        0: runs["wd1"]["before"]["accuracy"],
        1: runs["wd1"]["curve"][0]["accuracy"],
        2: runs["wd1"]["after"]["accuracy"],
    }
    report = doc.read_text()
    assert "| spg-mix | 2 |" in report and "| wd1 | 1 |" in report
    assert (tmp_path / "ablation_sudoku.png").stat().st_size > 0 and str(tmp_path) not in report


def test_ablation_results_are_keyed_by_the_task_defaults(monkeypatch):
    from trl_spg.tiny import countdown as tiny_countdown

    ablation = load_benchmark("ablation")
    args = SimpleNamespace(eval_every=40, eval_limit=None, device="cpu")
    key = ablation.run_key("countdown", "spg-mix", 0, args, ["--num_threads", "1"])
    assert key["defaults"] == ablation.defaults_fingerprint("countdown") != ablation.defaults_fingerprint("sudoku")
    # Another default step count is another experiment: its stored results are neither reused nor reported.
    ablation.defaults_fingerprint.cache_clear()
    monkeypatch.setitem(tiny_countdown.TRAINING_DEFAULTS, "max_steps", 80)
    assert ablation.run_key("countdown", "spg-mix", 0, args, ["--num_threads", "1"]) != key
    ablation.defaults_fingerprint.cache_clear()


def test_ablation_states_each_paper_ordering_per_task_from_seed_paired_differences():
    ablation = load_benchmark("ablation")
    gains = {"spg-mix": [0.05, 0.07, 0.06], "d1": [0.02, 0.02, 0.02], "wd1": [0.06, 0.05, 0.08]}
    rows = [{"method": m, "seed": s, "difference": g} for m, per_seed in gains.items() for s, g in enumerate(per_seed)]
    by_claim = {v["claim"]: v for v in ablation.orderings(rows)}
    # mix - d1 per seed: 0.03, 0.05, 0.04 -> 0.04 +- 0.01 / sqrt(3); mix - wd1: -0.01, 0.02, -0.02.
    assert by_claim["spg-mix > d1"]["difference"] == pytest.approx(0.04)
    assert by_claim["spg-mix > d1"]["se"] == pytest.approx(0.01 / 3**0.5)
    assert by_claim["spg-mix > d1"]["verdict"] == "holds"
    assert by_claim["spg-mix > wd1"]["verdict"] == "not resolved"
    assert set(by_claim) == {"spg-mix > d1", "spg-mix > wd1"}  # an ordering needs both methods on 2 seeds
    eubo_wins = [{"method": m, "seed": s, "difference": g + (m == "spg-eubo") * (0.01 + s / 1000)}
                 for m in ("spg-mix", "spg-eubo") for s, g in enumerate([0.05, 0.07])]  # fmt: skip
    table = ablation.format_across_tasks(
        {"sudoku": ablation.orderings(eubo_wins), "countdown": ablation.orderings(rows)}
    )
    lines = table.splitlines()
    assert lines[0] == "| paper's ordering | tiny Countdown | tiny 4x4 Sudoku |"
    assert len(lines) == 2 + len(ablation.ORDERINGS)
    assert "| spg-mix > spg-eubo | - | reversed: -0.0105 +- 0.0005 (2 seeds) |" in lines
    assert "| spg-mix > d1 | holds: +0.0400 +- 0.0058 (3 seeds) | - |" in lines
