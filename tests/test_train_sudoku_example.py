"""The Sudoku example script, end to end at toy size (warm start, evaluation, a few SPG steps, artefacts)."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_sudoku.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_sudoku", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_example_runs_two_steps_and_writes_artefacts(tmp_path):
    example = load_example()
    out = tmp_path / "out"
    results = example.main(
        [
            "--output_dir",
            str(out),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--tiny_warm_start_steps",
            "3",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--num_generations",
            "4",
            "--eval_puzzles",
            "8",
            "--eval_every",
            "1",
            "--use_cpu",
            "true",
        ]
    )
    assert set(results) == {"before", "after", "difference", "paired_stderr", "paired_stderr_grid", "curve"}
    # Greedy evaluation is deterministic: the curve's last point is the final model's accuracy.
    assert [point["step"] for point in results["curve"]] == [1, 2]
    last = {"step": 2, **{key: results["after"][key] for key in ("accuracy", "stderr", "stderr_grid")}}
    assert results["curve"][-1] == last
    assert results["difference"] == results["after"]["accuracy"] - results["before"]["accuracy"]
    # The first 8 held-out puzzles, made round-robin from 8 distinct test grids.
    assert (results["before"]["puzzles"], results["before"]["grids"]) == (8, 8)
    summary = json.loads((out / "sudoku_results.json").read_text())
    assert summary["before"]["empty_cells"] == 64 and len(summary["curve"]) == 2
    assert summary["paired_stderr_grid"] == results["paired_stderr_grid"]
    assert (out / "reward_curve.png").stat().st_size > 0
    assert (out / "README.md").exists() and (out / "model.safetensors").exists()
    # The warm start is cached: a second build loads it instead of training.
    assert len(list((tmp_path / "cache").glob("tiny-sudoku-*"))) == 1


def test_yaml_config_and_tiny_defaults(tmp_path):
    example = load_example()
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.002\nnum_generations: 4\n")
    from trl import TrlParser

    from trl_spg import SPGConfig

    parser = TrlParser((example.SudokuScriptArguments, SPGConfig))
    parser.set_defaults(**example.TINY_DEFAULTS)
    script_args, training_args = parser.parse_args_and_config(args=["--config", str(config), "--max_steps", "7"])
    assert training_args.learning_rate == 0.002 and training_args.max_steps == 7
    assert training_args.max_completion_length == 20 and script_args.model_name_or_path is None
    # The shipped paper recipe parses and names a real model.
    recipe = EXAMPLE.parent / "configs" / "sudoku_llada.yaml"
    assert example._config_sets_model(["--config", str(recipe)])


def test_tiny_model_is_deterministic_and_cached(tmp_path):
    from trl_spg.tasks.sudoku import sudoku_split
    from trl_spg.tasks.sudoku_tiny import TinySudokuSpec, tiny_sudoku_model

    train, _ = sudoku_split()
    spec = TinySudokuSpec(hidden_size=32, num_layers=1, sft_steps=2, sft_batch_size=4)
    model_a, _ = tiny_sudoku_model(train[:16], spec, tmp_path / "a")
    model_b, _ = tiny_sudoku_model(train[:16], spec, tmp_path / "b")
    loaded, tokenizer = tiny_sudoku_model(train[:16], spec, tmp_path / "a")
    for a, b, c in zip(model_a.parameters(), model_b.parameters(), loaded.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert tokenizer.mask_token_id is not None


def test_update_direction_benchmark_runs_at_toy_size(tmp_path):
    path = EXAMPLE.parents[1] / "benchmarks" / "sudoku_update_direction.py"
    spec = importlib.util.spec_from_file_location("sudoku_update_direction", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    flags = "--warm_start_steps 2 --prompts 2 --generations 4 --step_lr 1e-4 --settings mix:0:0.3 elbo:0.15:0"
    results = module.main(flags.split() + ["--cache_dir", str(tmp_path), "--output", str(tmp_path / "r.json")])
    assert results["rollouts"] == 8 and set(results["settings"]) == {"mix:0:0.3", "elbo:0.15:0"}
    for entry in results["settings"].values():
        assert -1.0 <= entry["cosine"] <= 1.0 and -1.0 <= entry["sign_agreement"] <= 1.0
        assert abs(entry["step_gain"]) <= 1.0
    assert json.loads((tmp_path / "r.json").read_text()) == results


def test_seeds_script_runs_the_example_and_tabulates_its_results(tmp_path, capsys):
    path = EXAMPLE.parents[1] / "benchmarks" / "sudoku_seeds.py"
    spec = importlib.util.spec_from_file_location("sudoku_seeds", path)
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)
    toy = "--tiny_warm_start_steps 2 --max_steps 1 --per_device_train_batch_size 8 --num_generations 4"
    toy += " --eval_puzzles 12 --use_cpu true --num_threads 1"
    root = tmp_path / "runs"
    rows = seeds.main(
        ["--seeds", "3", "--launcher", "python", "--output_root", str(root), "--output", str(tmp_path / "rows.json")]
        + ["--", *toy.split()]
    )
    saved = json.loads((root / "seed-3" / "sudoku_results.json").read_text())
    assert len(rows) == 1 and rows[0]["seed"] == 3 and rows[0]["wall_s"] > 0
    assert {k: rows[0][k] for k in saved} == saved
    assert (saved["before"]["puzzles"], saved["before"]["grids"]) == (12, 12)
    # A fresh warm-start cache in the seed's folder, and the run's own log beside its results.
    assert len(list((root / "seed-3" / "cache").glob("tiny-sudoku-*"))) == 1
    assert "Held-out Sudoku accuracy (12 puzzles" in (root / "seed-3" / "run.log").read_text()
    table = capsys.readouterr().out.strip().splitlines()[-3:]
    assert table[0].startswith("| seed | before RL | after RL | gain |")
    before, after = saved["before"]["accuracy"], saved["after"]["accuracy"]
    cells = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert cells[:4] == ["3", f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}"]
    assert cells[4] == f"{saved['paired_stderr_grid']:.4f} ({saved['paired_stderr']:.4f})"
    assert json.loads((tmp_path / "rows.json").read_text())[0]["difference"] == saved["difference"]
    assert seeds._flag_value(["--output_dir", "a", "--output_dir=b"], "--output_dir") == "b"
