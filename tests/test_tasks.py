"""Tasks: registry, loading fixture files in each dataset's real schema, prompts in the paper's wording."""

import re
from pathlib import Path

import datasets
import pytest

from trl_spg.tasks import Task, get_task, register_task, task_names
from trl_spg.tasks.countdown import evaluate_expression, generate_problems, uses_numbers
from trl_spg.tasks.sudoku import paper_examples, sudoku_split, worked_example
from trl_spg.tiny import build_char_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"

FORMAT = "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
EVAL_FORMAT = "Respond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>"
MATH_EXPERT = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. "
    "Wrap the final answer in a \\boxed{}."
)
PREFILL = {"role": "assistant", "content": "<reasoning>"}


def test_registry_names_aliases_and_errors():
    assert task_names() == ["countdown", "gsm8k", "math500", "sudoku"]
    assert get_task("GSM") is get_task("gsm8k")
    assert get_task("math").name == "math500"
    with pytest.raises(ValueError, match="available: countdown, gsm8k, math500, sudoku"):
        get_task("arc")
    for name in task_names():
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        assert task.train_prompt in task.prompts and task.eval_prompt in task.prompts
        assert task.gen_lengths == (128, 256, 512)
        assert task.reward_funcs and callable(task.strict_score) and callable(task.paper_score)


def test_register_task_refuses_to_shadow_and_accepts_new_names():
    base = get_task("countdown")
    with pytest.raises(ValueError, match="exists"):
        register_task(base)
    from dataclasses import replace

    custom = register_task(replace(base, name="countdown-custom"))
    try:
        assert get_task("countdown-custom") is custom
        assert "countdown-custom" in task_names()
    finally:
        from trl_spg import tasks

        tasks._REGISTERED.pop("countdown-custom")


# --- GSM8K --------------------------------------------------------------------------------------------------------


def test_gsm8k_fixture_folder_splits_and_gold():
    task = get_task("gsm8k")
    train = task.examples("train", FIXTURES / "gsm8k")
    test = task.examples("test", FIXTURES / "gsm8k")
    assert train.column_names == ["question", "answer"]
    assert train["answer"] == ["7", "60", "1500"]
    assert test["answer"] == ["22", "180", "1300", "7"]
    assert task.hub["train"].path == "openai/gsm8k" and task.hub["test"].name == "main"


def test_gsm8k_prompts_match_the_paper():
    task = get_task("gsm8k")
    train = task.dataset("train", data=FIXTURES / "gsm8k")
    question = "A baker makes 12 muffins and sells 5 of them. How many muffins does the baker have left?"
    assert train[0]["prompt"] == [{"role": "user", "content": FORMAT + "\n\n" + question}]
    assert train[0]["answer"] == "7"
    test = task.dataset("test", data=FIXTURES / "gsm8k")
    user = MATH_EXPERT + " \n" + EVAL_FORMAT + "\n\n" + test[1]["question"]
    assert test[1]["prompt"] == [{"role": "user", "content": user}, PREFILL]


# --- MATH500 ------------------------------------------------------------------------------------------------------


def test_math500_parquet_and_json_fixtures():
    task = get_task("math500")
    test = task.examples("test", FIXTURES / "math500_test.parquet")
    assert test["answer"] == ["4", "\\frac{3}{4}", "3\\sqrt{2}"]
    train = task.examples("train", FIXTURES / "math500_train.json")  # gold = the solution's last \boxed{}
    assert train["answer"] == ["\\frac{5}{6}", "4"]
    assert task.hub["train"].path == "ankner/math-500" and task.hub["test"].path == "HuggingFaceH4/MATH-500"


def test_math500_prompts_match_the_paper():
    task = get_task("math500")
    train = task.dataset("train", data=FIXTURES / "math500_train.json")
    problem = "Solve for $x$: $2x + 3 = 11$."
    assert train[1]["prompt"][0]["content"] == FORMAT + "\n\n" + MATH_EXPERT + " \n\n" + problem
    test = task.dataset("test", data=FIXTURES / "math500_test.parquet")
    user = MATH_EXPERT + "\n" + EVAL_FORMAT + '" \n' + "\n\n" + "Simplify $\\frac{6}{8}$."
    assert test[1]["prompt"] == [{"role": "user", "content": user}, PREFILL]


# --- Countdown ----------------------------------------------------------------------------------------------------


def test_countdown_fixtures_keep_three_number_problems_in_both_schemas():
    task = get_task("countdown")
    rows = task.examples("train", FIXTURES / "countdown.jsonl")
    assert rows["nums"] == [[3, 5, 7], [100, 7, 3], [2, 5, 9]]  # the four-number row is dropped
    assert rows["target"] == [22, 25, 2]
    paper = task.examples("test", FIXTURES / "countdown_paper_format.jsonl")  # {"input": "3,5,7", "output": "22"}
    assert paper["nums"] == [[3, 5, 7], [100, 7, 3]] and paper["target"] == [22, 25]
    assert task.hub["train"].path == "Jiayi-Pan/Countdown-Tasks-3to4"


def test_countdown_prompts_match_the_paper():
    task = get_task("countdown")
    train = task.dataset("train", data=FIXTURES / "countdown.jsonl")
    expected = (
        FORMAT + "\nUsing only the numbers [3, 5, 7], create an arithmetic expression that evaluates to exactly 22. "
        "You must use all numbers from the list, and each number must be used exactly once. You may use the "
        "operations +, -, *, and / as needed. After reasoning, provide only your final expression inside "
        "<answer></answer> tags without including an equals sign or the target number. For example, if the numbers "
        "are [2, 3, 4] and the target is 5, a valid answer is: <answer>\n2*4-3\n</answer>"
    )
    assert train[0]["prompt"] == [{"role": "user", "content": expected}]
    test = task.dataset("test", data=FIXTURES / "countdown.jsonl")
    content = test[1]["prompt"][0]["content"]
    assert content.startswith("Using only the provided numbers, create an arithmetic expression that evaluates to")
    assert "For example: \\boxed{a + b * c}Respond in the following format:\n" in content
    assert content.endswith(EVAL_FORMAT + "\n\nNumbers: [100, 7, 3]\nTarget: 25")
    assert test[1]["prompt"][1] == PREFILL
    assert task.format_prompt(test[1], "compact") == "100 7 3 -> 25:"


def test_countdown_generator_is_seeded_solvable_and_disjoint():
    train = generate_problems(1000, "train", seed=1)
    test = generate_problems(256, "test", seed=1)
    assert generate_problems(256, "test", seed=1) == test
    assert generate_problems(256, "test", seed=2) != test
    for row in train + test:
        assert len(row["nums"]) == 3 and all(1 <= n <= 100 for n in row["nums"])
        assert 1 <= row["target"] <= 100
        assert uses_numbers(row["solution"], row["nums"])
        assert evaluate_expression(row["solution"]) == row["target"]

    def key(row):
        return tuple(sorted(row["nums"])), row["target"]

    assert len({key(r) for r in test}) == 256 and len({key(r) for r in train}) == 1000
    assert not {key(r) for r in train} & {key(r) for r in test}
    assert not {key(r) for r in generate_problems(1000, "train", seed=7)} & {key(r) for r in test}


def test_countdown_generator_without_shuffle_keeps_the_listed_order():
    rows = generate_problems(300, "test", seed=3, max_number=20, shuffle=False)
    assert rows != generate_problems(300, "test", seed=3, max_number=20)
    for row in rows:
        assert all(1 <= n <= 20 for n in row["nums"])
        assert evaluate_expression(row["solution"]) == row["target"]
        # The solution's numbers, read left to right, are the problem's numbers in their listed order.
        assert [int(n) for n in re.findall(r"\d+", row["solution"])] == row["nums"]
    # Shuffled solutions take other orders: the option changes the problems, not only their labels.
    shuffled = generate_problems(300, "test", seed=3, max_number=20)
    assert any([int(n) for n in re.findall(r"\d+", r["solution"])] != r["nums"] for r in shuffled)


def test_countdown_builtin_test_split_has_1024_problems_clustered_by_number_set():
    task = get_task("countdown")
    test = task.examples("test", "builtin")  # the default is the paper's file (tests/test_paper_test_sets.py)
    assert len(test) == 1024 and task.cluster_key == "number_set"
    assert test[0]["number_set"] == " ".join(map(str, sorted(test[0]["nums"])))
    # About five targets per set of numbers: the clusters the standard errors are computed over.
    assert 150 < len(set(test["number_set"])) < 300
    assert test[:3] == task.examples("test", "procedural")[:3]
    assert test["nums"][:3] == [row["nums"] for row in generate_problems(3, "test", max_number=20, shuffle=False)]


# --- Sudoku -------------------------------------------------------------------------------------------------------


def test_sudoku_csv_keeps_leading_zeros_and_builtin_split_trains():
    task = get_task("sudoku")
    rows = task.examples("test", FIXTURES / "sudoku.csv")
    assert rows["puzzle"] == ["0204301001034020", "0310013402003400", "2000040202044301"]
    assert rows["solution"][0] == "1234341221434321"
    builtin_train, builtin_test = sudoku_split(num_test_puzzles=1024)
    assert task.examples("test", "builtin")["puzzle"] == [row["puzzle"] for row in builtin_test]
    assert task.examples("train", "builtin")["puzzle"] == [row["puzzle"] for row in builtin_train]


def test_sudoku_worked_examples_are_correct_and_come_from_training_grids():
    shots = paper_examples()
    assert len(shots) == 3
    train, test = sudoku_split()
    test_solutions = {row["solution"] for row in test}
    for shot in shots:
        puzzle = shot.split("Solve the following Sudoku puzzle: ")[1][:16]
        solution = shot.split("<answer>\n")[1][:16]
        assert any(row["puzzle"] == puzzle and row["solution"] == solution for row in train)
        assert solution not in test_solutions
        assert shot.startswith(f"Question:\nSolve the following Sudoku puzzle: {puzzle}\nAnswer:\n<reasoning>\n")
        assert "Interpret puzzle as 4 rows of 4:\n" in shot and "\n\nFill easy singles:\n" in shot
        assert shot.endswith(f"</reasoning>\n<answer>\n{solution}\n</answer>")
    text = worked_example("0204301001034020", "1234341221434321")
    assert "R1: 0 2 0 4\nR2: 3 0 1 0" in text and "Final grid:\nR1: 1 2 3 4\n" in text
    assert worked_example("0204301001034020", "2234341221434321") is None  # a step contradicts the given solution


def test_sudoku_prompts_match_the_paper():
    task = get_task("sudoku")
    example = {"puzzle": "0204301001034020", "solution": "1234341221434321"}
    paper = task.format_prompt(example, "paper")[0]["content"]
    assert paper.startswith("\nPlease solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character")
    assert "- Each 2x2 box must contain digits 1-4 exactly once\n" in paper
    assert paper.count("Question:\nSolve the following Sudoku puzzle: ") == 3
    assert paper.endswith("</answer>\n\nQuestion: Solve the following Sudoku puzzle: 0204301001034020\nAnswer:\n")
    evaluation = task.format_prompt(example, "paper_eval")
    assert evaluation[1] == PREFILL
    assert evaluation[0]["content"].endswith(
        "Question: Solve the following Sudoku puzzle: 0204301001034020\n\nAnswer:\n"
    )
    zero_shot = task.format_prompt(example, "paper_eval", few_shot=0)[0]["content"]
    assert "Question:" not in zero_shot and zero_shot.endswith(
        "\n\nSolve the following Sudoku puzzle: 0204301001034020\n"
    )
    assert task.format_prompt(example, "compact") == "0204301001034020="
    with pytest.raises(ValueError, match="few_shot"):
        task.format_prompt(example, "paper", few_shot=4)
    with pytest.raises(ValueError, match="prompt styles"):
        task.format_prompt(example, "chat")


# --- shared ---------------------------------------------------------------------------------------------------------


def test_dataset_for_the_trainer_has_prompt_and_reward_columns():
    task = get_task("countdown")
    dataset = task.dataset("train", data=FIXTURES / "countdown.jsonl", prompt_style="compact", limit=2)
    assert dataset.column_names == ["target", "nums", "number_set", "prompt"]
    assert dataset["prompt"] == ["3 5 7 -> 22:", "100 7 3 -> 25:"]
    rows = [{"target": 22, "nums": [3, 5, 7]}]
    assert task.dataset("test", data=rows)["nums"] == [[3, 5, 7]]
    assert task.dataset("test", data=datasets.Dataset.from_list(rows))["target"] == [22]
    with pytest.raises(FileNotFoundError):
        task.examples("test", FIXTURES / "missing.jsonl")
    with pytest.raises(ValueError, match="no Hub data"):
        get_task("sudoku").examples("test", "hub")


def test_prefilled_prompts_continue_the_assistant_turn():
    from trl_spg.evaluation import render_prompts

    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% if not (loop.last and m['role'] == 'assistant')"
        " %}</{{ m['role'] }}>{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    prefilled = [{"role": "user", "content": "q"}, PREFILL]
    plain = [{"role": "user", "content": "q"}]
    assert render_prompts(tokenizer, [prefilled, plain, "raw"]) == [
        "<user>q</user><assistant><reasoning>",
        "<user>q</user><assistant>",
        "raw",
    ]


def test_examples_follow_a_changed_prepare_of_the_same_name(tmp_path, monkeypatch):
    # `datasets` fingerprints a module-level function by its module and name: a cached map of a data file would keep
    # the columns of an older `prepare` after an upgrade. Two versions of one module stand for the upgrade.
    import dataclasses
    import importlib
    import sys

    data = tmp_path / "problems.jsonl"
    data.write_text('{"target": 6, "nums": [1, 2, 3]}\n{"target": 7, "nums": [1, 2, 4]}\n')
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "upgraded_task.py"
    columns = []
    for version in ("old", "new"):
        module.write_text(f"def prepare(row):\n    return {{'target': row['target'], '{version}': 1}}\n")
        sys.modules.pop("upgraded_task", None)
        importlib.invalidate_caches()
        prepare = importlib.import_module("upgraded_task").prepare
        task = dataclasses.replace(get_task("countdown"), prepare=prepare, keep=None)
        columns.append(task.examples("test", str(data)).column_names)
    assert columns == [["target", "old"], ["target", "new"]]
