"""The paper's Countdown and Sudoku test sets, shipped as package data and used as the tasks' default test data."""

import hashlib
import importlib.resources
import re
from pathlib import Path

import pytest

import trl_spg
from trl_spg.tasks import get_task
from trl_spg.tasks.base import PAPER
from trl_spg.tasks.countdown import builtin_rows as countdown_builtin_rows
from trl_spg.tasks.data import packaged_rows
from trl_spg.tasks.sudoku import (
    PAPER_WORKED_EXAMPLES,
    is_valid_grid,
    paper_examples,
    reference_examples,
    solve_count,
    sudoku_split,
)

#: SHA-256 of facebookresearch/SPG's dataset/countdown_cd3_test.jsonl and dataset/test_sudoku_split_new.csv
#: (commit a1c712091aee3fde759bbf73b7850546265cd52d), as the data folder's NOTICE lists them.
CHECKSUMS = {
    "countdown_cd3_test.jsonl": "9916f614621e26fb2b035ed4ea641e35e4fff0d533bb9b9c7bcaaa61017d88c6",
    "test_sudoku_split_new.csv": "bd93420f34f57f6b73c1a4080e70dd2f9366901b9b759132bb8f098c5339929d",
}


@pytest.fixture(scope="module")
def countdown():
    return get_task("countdown").examples("test", PAPER)


@pytest.fixture(scope="module")
def sudoku():
    return get_task("sudoku").examples("test", PAPER)


# --- the packaged files ---------------------------------------------------------------------------------------------


def test_packaged_files_are_found_through_importlib_resources_and_match_the_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing relative to the working directory
    package = Path(trl_spg.__file__).parent
    for name, checksum in CHECKSUMS.items():
        resource = importlib.resources.files("trl_spg.tasks.data") / name
        assert resource.is_file() and len(packaged_rows(name)) == 256
        assert hashlib.sha256(resource.read_bytes()).hexdigest() == checksum
        with importlib.resources.as_file(resource) as path:
            assert Path(path).resolve().is_relative_to(package.resolve())  # found with the package, not the repo
    notice = (importlib.resources.files("trl_spg.tasks.data") / "NOTICE").read_text()
    assert "a1c712091aee3fde759bbf73b7850546265cd52d" in notice and "MIT License" in notice
    assert all(name in notice and checksum in notice for name, checksum in CHECKSUMS.items())
    assert len(get_task("countdown").examples("test")) == 256 and len(get_task("sudoku").examples("test")) == 256
    with pytest.raises(FileNotFoundError):
        packaged_rows("missing.csv")


def test_package_data_ships_the_files_in_the_wheel():
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not run from a checkout")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["trl_spg.tasks.data"]
    for name in [*CHECKSUMS, "NOTICE"]:
        assert any(Path(name).match(pattern) for pattern in patterns), name


# --- Countdown ------------------------------------------------------------------------------------------------------


def test_countdown_paper_set_loads_256_three_number_problems(countdown):
    assert len(countdown) == 256
    # The file's first row: "30,100,93" -> "23".
    assert countdown[0] == {"target": 23, "nums": [30, 100, 93], "number_set": "30 93 100"}
    assert all(len(nums) == 3 for nums in countdown["nums"])
    assert all(type(target) is int and 1 <= target <= 100 for target in countdown["target"])
    assert all(1 <= n <= 100 for nums in countdown["nums"] for n in nums)
    assert len({(tuple(sorted(nums)), t) for nums, t in zip(countdown["nums"], countdown["target"])}) == 256


def test_countdown_test_default_is_the_paper_set_and_builtin_stays_selectable(countdown):
    task = get_task("countdown")
    assert task.default_data == {"train": "hub", "test": PAPER}  # training data unchanged
    assert task.examples("test")[:] == countdown[:]
    test = task.dataset("test")
    assert test[0]["prompt"][0]["content"].endswith("\n\nNumbers: [30, 100, 93]\nTarget: 23")
    builtin = task.examples("test", "builtin")
    assert builtin["nums"] == [row["nums"] for row in countdown_builtin_rows("test")] and len(builtin) == 1024
    with pytest.raises(ValueError, match="test split, not 'train'; train on 'hub'"):
        task.examples("train", PAPER)


# --- Sudoku ---------------------------------------------------------------------------------------------------------


def test_sudoku_paper_set_is_256_unique_puzzles_from_88_grids(sudoku):
    assert len(sudoku) == 256 and len(set(sudoku["puzzle"])) == 256
    assert sudoku[0] == {"puzzle": "0310200404001043", "solution": "4312213434211243"}  # leading zero kept
    assert len(set(sudoku["solution"])) == 88
    for puzzle, solution in zip(sudoku["puzzle"], sudoku["solution"]):
        assert is_valid_grid(solution)
        assert 7 <= puzzle.count("0") <= 12
        assert all(p in ("0", s) for p, s in zip(puzzle, solution))  # clues agree with the grid
        assert solve_count(puzzle) == 1  # so the grid is its only solution


def test_sudoku_test_default_is_the_paper_set_and_builtin_stays_selectable(sudoku):
    task = get_task("sudoku")
    assert task.default_data == {"train": PAPER, "test": PAPER}
    assert task.examples("test")[:] == sudoku[:]
    builtin_train, builtin_test = sudoku_split(num_test_puzzles=1024)
    assert task.examples("test", "builtin")["puzzle"] == [row["puzzle"] for row in builtin_test]
    assert task.examples("train", "builtin")["puzzle"] == [row["puzzle"] for row in builtin_train]
    # The paper splits by solution grid: the default training puzzles use its other 200 grids, never a test grid.
    train = task.examples("train")
    assert len(train) == 800 and len(set(train["puzzle"])) == 800 and len(set(train["solution"])) == 200
    assert not set(train["solution"]) & set(sudoku["solution"])
    assert all(7 <= puzzle.count("0") <= 12 and solve_count(puzzle) == 1 for puzzle in train["puzzle"])
    prompt = task.dataset("test", limit=1)[0]["prompt"][0]["content"]
    assert prompt.endswith("Question: Solve the following Sudoku puzzle: 0310200404001043\n\nAnswer:\n")


def test_paper_test_grids_against_the_builtin_split(sudoku):
    """The fact docs/tasks.md states: most of the paper's test grids are training grids of the built-in split."""
    train, test = sudoku_split(num_test_puzzles=1024)
    paper_grids = set(sudoku["solution"])
    train_grids = {row["solution"] for row in train}
    assert len(paper_grids & train_grids) == 61 and len(paper_grids & {row["solution"] for row in test}) == 27
    assert sum(solution in train_grids for solution in sudoku["solution"]) == 177
    assert not set(sudoku["puzzle"]) & {row["puzzle"] for row in train + test}  # no identical puzzle


# --- Sudoku worked examples -----------------------------------------------------------------------------------------


def test_paper_worked_examples_are_consistent_and_outside_the_paper_test_set(sudoku):
    builtin_train, builtin_test = sudoku_split()
    for (puzzle, solution, steps), text in zip(PAPER_WORKED_EXAMPLES, reference_examples(), strict=True):
        assert is_valid_grid(solution) and solve_count(puzzle) == 1
        assert all(p in ("0", s) for p, s in zip(puzzle, solution))
        filled = {}
        for row, col, digit in re.findall(r"R(\d)C(\d)=(\d)", " ".join(steps)):
            filled[(int(row) - 1) * 4 + int(col) - 1] = digit
        assert filled == {i: solution[i] for i, p in enumerate(puzzle) if p == "0"}  # every empty cell, rightly
        assert text.startswith(f"Question:\nSolve the following Sudoku puzzle: {puzzle}\nAnswer:\n<reasoning>\n")
        assert "\n".join(steps) in text and text.endswith(f"</reasoning>\n<answer>\n{solution}\n</answer>")
        assert solution not in set(sudoku["solution"])
    grids = [solution for _, solution, _ in PAPER_WORKED_EXAMPLES]
    assert [grid in {row["solution"] for row in builtin_test} for grid in grids] == [False, True, False]
    assert not {text.split("<answer>\n")[1][:16] for text in paper_examples()} & set(sudoku["solution"])


def test_paper_prompts_show_the_papers_worked_examples_and_builtin_on_request():
    task = get_task("sudoku")
    example = {"puzzle": "0310200404001043", "solution": "4312213434211243"}
    evaluation = task.format_prompt(example, "paper_eval")[0]["content"]
    assert "\n\n".join(reference_examples()) in evaluation and not any(s in evaluation for s in paper_examples())
    training = task.format_prompt(example, "paper")[0]["content"]
    assert "\n\n".join(reference_examples()) in training and not any(s in training for s in paper_examples())
    builtin = task.format_prompt(example, "paper", worked_examples="builtin")[0]["content"]
    assert "\n\n".join(paper_examples()) in builtin
    swapped = task.format_prompt(example, "paper_eval", worked_examples="builtin")[0]["content"]
    assert swapped == evaluation.replace("\n\n".join(reference_examples()), "\n\n".join(paper_examples()))
    one = task.format_prompt(example, "paper", few_shot=1, worked_examples="paper")[0]["content"]
    assert reference_examples()[0] in one and reference_examples()[1] not in one
    with pytest.raises(ValueError, match="worked_examples"):
        task.format_prompt(example, "paper_eval", worked_examples="test")


# --- the tiny demo --------------------------------------------------------------------------------------------------


def test_tiny_demo_evaluates_on_the_builtin_split():
    from trl_spg.scripts.spg import parse_args, tiny_defaults

    assert tiny_defaults("spg", "sudoku")["eval_data"] == "builtin"
    script_args, *_ = parse_args(["--model_name_or_path", "tiny", "--task", "sudoku"])
    assert script_args.eval_data == "builtin"
    script_args, *_ = parse_args(["--model_name_or_path", "tiny", "--task", "sudoku", "--eval_data", "paper"])
    assert script_args.eval_data == "paper"  # a flag still wins
    script_args, *_ = parse_args(["--model_name_or_path", "some/model", "--task", "sudoku", "--bf16", "false"])
    assert script_args.eval_data is None  # other models: the task's default, the paper's test set
