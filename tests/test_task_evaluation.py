"""The evaluation harness: every task end to end with a tiny model on fixture data, the command line in one and two
processes, the Table 1 report, and the periodic evaluation callback during SPG training."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import trl_spg.evaluation.evaluate as harness
from trl_spg import DecodingConfig, SPGTrainer
from trl_spg.evaluation import TaskEvaluationCallback, evaluate_task, markdown_table, ratio_stderr
from trl_spg.scripts.evaluate import main as evaluate_cli
from trl_spg.tasks import get_task

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent
DATA = {
    "gsm8k": FIXTURES / "gsm8k",
    "math500": FIXTURES / "math500_test.parquet",
    "countdown": FIXTURES / "countdown.jsonl",
    "sudoku": FIXTURES / "sudoku.csv",
}
SIZES = {"gsm8k": 4, "math500": 3, "countdown": 3, "sudoku": 3}


@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory):
    from trl_spg.tiny import SIMPLE_CHAT_TEMPLATE, build_char_tokenizer, build_tiny_diffusion_lm

    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    model = build_tiny_diffusion_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    folder = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def read_jsonl(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def expected_stderr(correct, total):
    """The per-problem ratio standard error, written out independently of the harness."""
    n, acc = len(correct), sum(correct) / sum(total)
    return math.sqrt(sum((c - acc * t) ** 2 for c, t in zip(correct, total)) * n / (n - 1)) / sum(total)


@pytest.mark.parametrize("name", ["gsm8k", "math500", "countdown", "sudoku"])
def test_each_task_end_to_end_with_paper_prompts(name, tiny_model, tiny_tokenizer, tmp_path):
    task = get_task(name)
    result = evaluate_task(
        task, tiny_model, tiny_tokenizer, data=DATA[name], gen_lengths=[8], batch_size=4, output_dir=tmp_path
    )
    summary = json.loads((tmp_path / f"{name}_summary.json").read_text())
    records = read_jsonl(tmp_path / f"{name}_generations.jsonl")
    assert [r["index"] for r in records] == list(range(SIZES[name]))
    (entry,) = summary["results"]
    assert entry["gen_length"] == 8 and entry["block_length"] == 8 and entry["steps"] == 4
    assert entry["problems"] == SIZES[name] == len(result["records"])
    assert summary["prompt_style"] == task.eval_prompt and summary["num_processes"] == 1
    assert records[0]["prompt"].endswith("<reasoning>")  # the paper's prefill, rendered by the chat template
    scores = [(task.score(r["completion"], r)["correct"], task.score(r["completion"], r)["total"]) for r in records]
    assert [(r["correct"], r["total"]) for r in records] == scores
    assert entry["correct"] == sum(c for c, _ in scores) and entry["total"] == sum(t for _, t in scores)
    assert entry["accuracy"] == sum(c for c, _ in scores) / sum(t for _, t in scores)
    # The paper's grader reads the whole generation with its special tokens, as the reference decodes it.
    paper = [task.score(r["raw_completion"], r, grader="paper") for r in records]
    assert [(r["paper_correct"], r["paper_total"], r["paper_prediction"]) for r in records] == [
        (p["correct"], p["total"], p["prediction"]) for p in paper
    ]
    assert entry["paper_accuracy"] == sum(p["correct"] for p in paper) / sum(p["total"] for p in paper)
    assert all(r["raw_completion"].startswith(r["completion"]) for r in records)
    assert (tmp_path / f"{name}_table.md").read_text().startswith(f"| Model | {task.title} 8 |")


RAW_TAIL = "<|eot_id|>" + "<|endoftext|>" * 4


def canned(answers):
    """A stand-in for greedy decoding: prompt i of each call gets answers[i] (calls' settings are recorded); the
    raw generation, for the paper's grader, is the answer followed by EOS and padding tokens."""
    calls = []

    def generate(model, tokenizer, prompts, decoding, raw=False, **kwargs):
        calls.append(decoding)
        texts = [answers[i % len(answers)] for i in range(len(prompts))]
        return (texts, [text + RAW_TAIL for text in texts]) if raw else texts

    return generate, calls


def test_accuracy_and_stderr_of_known_completions(monkeypatch, tiny_model, tiny_tokenizer, tmp_path):
    answers = ["\\boxed{22}", "<answer>\n180\n</answer>", "I get 1,300.", "<answer>\n8\n</answer>"]  # 3 of 4 right
    generate, calls = canned(answers)
    monkeypatch.setattr(harness, "generate_completions", generate)
    result = evaluate_task(
        "gsm8k", tiny_model, tiny_tokenizer, data=DATA["gsm8k"], gen_lengths=[128, 256], output_dir=tmp_path
    )
    assert [(c.gen_length, c.block_length, c.steps, c.temperature) for c in calls] == [
        (128, 32, 64, 0.0),
        (256, 32, 128, 0.0),
    ]
    for entry in result["results"]:
        assert entry["accuracy"] == 0.75 and entry["problems"] == 4
        assert entry["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
        # The paper's parser reads "1,300." as its last number, 300: 2 of 4.
        assert (entry["paper_correct"], entry["paper_total"], entry["paper_accuracy"]) == (2.0, 4.0, 0.5)
        assert entry["paper_stderr"] == pytest.approx(math.sqrt(0.5 * 0.5 / 3))
    records = read_jsonl(tmp_path / "gsm8k_generations.jsonl")
    assert [r["prediction"] for r in records[:4]] == [22.0, 180.0, 1300.0, 8.0]
    assert [r["paper_prediction"] for r in records[:4]] == [22.0, 180.0, 300.0, 8.0]
    assert [r["raw_completion"] for r in records[:4]] == [answer + RAW_TAIL for answer in answers]
    assert [r["gen_length"] for r in records] == [128] * 4 + [256] * 4
    table = (tmp_path / "gsm8k_table.md").read_text()
    assert table == (
        "| Model | GSM8K 128 | GSM8K 256 |\n|---|---|---|\n"
        "| model | 50.0 ± 28.9 (strict 75.0) (n=4) | 50.0 ± 28.9 (strict 75.0) (n=4) |\n"
    )


def test_sudoku_keeps_the_cell_level_ratio_and_its_stderr(monkeypatch, tiny_model, tiny_tokenizer, tmp_path):
    task = get_task("sudoku")
    rows = task.examples("test", DATA["sudoku"])
    answers = [f"<answer>{rows[0]['solution']}</answer>", "<answer>1111111111111111</answer>", "nothing"]
    monkeypatch.setattr(harness, "generate_completions", canned(answers)[0])
    result = evaluate_task(task, tiny_model, tiny_tokenizer, data=DATA["sudoku"], gen_lengths=[128])
    (entry,) = result["results"]
    correct = [r["correct"] for r in result["records"]]
    total = [r["total"] for r in result["records"]]
    assert entry["accuracy"] == sum(correct) / sum(total) == (8 + 2) / (8 + 8 + 8)
    assert entry["stderr"] == pytest.approx(expected_stderr(correct, total))
    paper_correct = [r["paper_correct"] for r in result["records"]]
    assert paper_correct == correct and entry["paper_accuracy"] == entry["accuracy"]
    assert entry["paper_stderr_clustered"] == entry["stderr_clustered"]
    # Puzzles made from one solution grid are correlated: the clustered standard error sums them first.
    assert entry["clusters"] == len({r["solution"] for r in result["records"]})


def test_ratio_stderr_reduces_to_the_binomial_formula():
    outcomes = [1.0] * 7 + [0.0] * 13
    assert ratio_stderr(outcomes, [1.0] * 20) == pytest.approx(math.sqrt(0.35 * 0.65 / 19))
    assert ratio_stderr([1.0], [1.0]) == 0.0


def test_markdown_table_merges_tasks_and_models():
    def summary(model, title, lengths, paper=True):
        results = [{"gen_length": g, "accuracy": 0.5, "stderr": 0.01, "problems": 256} for g in lengths]
        if paper:  # the paper grader's accuracy heads the cell, the strict one beside it
            results = [{**r, "paper_accuracy": 0.48, "paper_stderr": 0.011} for r in results]
        return {"model": model, "title": title, "results": results}

    table = markdown_table(
        [
            summary("base", "GSM8K", [256, 128]),
            summary("base", "Sudoku", [128]),
            summary("spg", "GSM8K", [128], paper=False),  # e.g. a summary saved before the paper grader
        ]
    )
    assert table.splitlines() == [
        "| Model | GSM8K 128 | GSM8K 256 | Sudoku 128 |",
        "|---|---|---|---|",
        "| base | 48.0 ± 1.1 (strict 50.0) (n=256) | 48.0 ± 1.1 (strict 50.0) (n=256) | 48.0 ± 1.1 (strict 50.0) (n=256) |",
        "| spg | 50.0 ± 1.0 (n=256) |  |  |",
    ]


def test_cli_builtin_countdown_prints_the_table(saved_tiny_model, tmp_path, capsys):
    result = evaluate_cli(
        ["--task", "countdown", "--model_name_or_path", saved_tiny_model, "--model_label", "tiny-random",
         "--gen_lengths", "8", "--limit", "4", "--prompt_style", "compact", "--output_dir", str(tmp_path)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.startswith("| Model | Countdown 8 |\n|---|---|\n| tiny-random | ")
    assert "(n=4) |" in printed
    assert result["results"][0]["problems"] == 4 and result["data"] is None
    merged = evaluate_cli(["--merge", str(tmp_path / "countdown_summary.json")])
    assert merged["table"] == (tmp_path / "countdown_table.md").read_text()


FAST_FLAGS = ["--decoding", "threshold", "--threshold", "0.5", "--min_tokens_per_step", "1",
              "--kv_cache", "dual", "--cache_refresh_every", "2"]  # fmt: skip


def test_cli_fast_decoding_flags_reach_diffusion_generate(saved_tiny_model, tmp_path, monkeypatch):
    import trl_spg.evaluation.decode as decode

    calls, sampler = [], decode.diffusion_generate

    def recording(model, ids, mask, config, **kwargs):
        calls.append(vars(config))
        return sampler(model, ids, mask, config, **kwargs)

    monkeypatch.setattr(decode, "diffusion_generate", recording)
    common = ["--task", "countdown", "--model_name_or_path", saved_tiny_model, "--gen_lengths", "8",
              "--limit", "2", "--prompt_style", "compact"]  # fmt: skip
    result = evaluate_cli([*common, *FAST_FLAGS, "--output_dir", str(tmp_path / "fast")])
    fast = {"decoding": "threshold", "threshold": 0.5, "min_tokens_per_step": 1, "kv_cache": "dual",
            "cache_refresh_every": 2}  # fmt: skip
    assert calls and all({key: call[key] for key in fast} == fast for call in calls)
    assert result["fast_decoding"] == fast and result["model"].endswith("cache_refresh_every=2)")
    summary = json.loads((tmp_path / "fast" / "countdown_summary.json").read_text())
    assert summary["fast_decoding"] == fast

    # Without the flags: the exact sampler. A KV cache refreshed at every forward decodes exactly like it.
    calls.clear()
    exact = evaluate_cli([*common, "--output_dir", str(tmp_path / "exact")])
    assert calls[0]["decoding"] == "fixed" and calls[0]["kv_cache"] == "none"
    assert exact["fast_decoding"] == {}
    refreshed = evaluate_cli(
        [*common, "--kv_cache", "prefix", "--cache_refresh_every", "1", "--output_dir", str(tmp_path / "refreshed")]
    )
    assert calls[-1]["kv_cache"] == "prefix" and calls[-1]["cache_refresh_every"] == 1
    assert [r["completion"] for r in refreshed["records"]] == [r["completion"] for r in exact["records"]]


def test_callback_decodes_greedily_with_the_exact_sampler_at_the_rollouts_protocol(tmp_path):
    from types import SimpleNamespace

    from tiny_models import make_args

    args = make_args(tmp_path, rollout_decoding="threshold", rollout_threshold=0.8, rollout_kv_cache="prefix")
    options = dict(data=DATA["countdown"], prompt_style="compact", limit=2)
    callback = TaskEvaluationCallback(SimpleNamespace(args=args), "countdown", every=1, **options)
    rollout = args.rollout_config()
    assert rollout.fast_options() == {"decoding": "threshold", "threshold": 0.8, "kv_cache": "prefix"}
    assert callback.decoding.is_exact and callback.decoding.fast_options() == {}
    protocol = ("gen_length", "block_length", "steps", "remasking")
    assert [getattr(callback.decoding, k) for k in protocol] == [getattr(rollout, k) for k in protocol]
    assert callback.decoding.temperature == 0.0
    exact = DecodingConfig(gen_length=8)
    assert TaskEvaluationCallback(SimpleNamespace(args=args), "countdown", decoding=exact, **options).decoding == exact


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_split_the_problems_and_gather_them(saved_tiny_model, tmp_path):
    common = ["--task", "countdown", "--model_name_or_path", saved_tiny_model, "--gen_lengths", "8",
              "--limit", "5", "--prompt_style", "compact", "--batch_size", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "trl_spg.scripts.evaluate",
               *common, "--output_dir", str(tmp_path / "two")]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("| Model | Countdown 8 |") == 1  # only the main process prints
    summary = json.loads((tmp_path / "two" / "countdown_summary.json").read_text())
    assert summary["num_processes"] == 2
    records = read_jsonl(tmp_path / "two" / "countdown_generations.jsonl")
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    (entry,) = summary["results"]
    assert entry["problems"] == 5 and entry["correct"] == sum(r["correct"] for r in records)

    single = evaluate_cli([*common, "--output_dir", str(tmp_path / "one")])
    assert [r["completion"] for r in single["records"]] == [r["completion"] for r in records]


def test_callback_logs_task_accuracy_during_spg_training(tmp_path, tiny_model, tiny_tokenizer):
    from tiny_models import make_args

    task = get_task("countdown")
    dataset = task.dataset("train", data=DATA["countdown"], prompt_style="compact")
    trainer = SPGTrainer(
        model=tiny_model,
        reward_funcs=list(task.reward_funcs),
        args=make_args(tmp_path, max_steps=1),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )
    callback = TaskEvaluationCallback(
        trainer,
        "countdown",
        every=1,
        data=DATA["countdown"],
        prompt_style="compact",
        limit=2,
        eval_on_start=True,
    )
    trainer.add_callback(callback)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "eval_task/countdown/accuracy" in entry]
    assert [entry["step"] for entry in logged] == [0, 1]
    assert [entry["eval_task/countdown/accuracy"] for entry in logged] == [h["accuracy"] for h in callback.history]
    paper = [entry["eval_task/countdown/paper_accuracy"] for entry in logged]
    assert paper == [h["paper_accuracy"] for h in callback.history]
    saved = json.loads(Path(callback._path()).read_text())
    assert set(saved["records"]["1"][0]) == {"correct", "total", "paper_correct", "paper_total", "number_set"}
    assert all(h["problems"] == 2 for h in callback.history)
    # The trainer's own running metrics are still logged at every logging step.
    steps_logged = [e["step"] for e in trainer.state.log_history if "reward" in e and "train_runtime" not in e]
    assert steps_logged == [1]
