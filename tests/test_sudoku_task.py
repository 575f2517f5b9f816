"""Tests for the 4x4 Sudoku task (grids, puzzles, split, prompts, reward)."""

import math
import random

import datasets
import pytest

from trl_spg.tasks import get_task
from trl_spg.tasks.sudoku import (
    TASK,
    all_grids,
    cell_accuracy,
    compact_completion,
    instruct_prompt,
    is_valid_grid,
    make_puzzle,
    parse_answer,
    solve_count,
    sudoku_reward,
    sudoku_split,
)

GRID = "1234341221434321"
# GRID with 8 cells blanked (indices 0, 2, 5, 7, 8, 10, 13, 15); it has a unique solution.
PUZZLE = "0204301001034020"


@pytest.fixture(scope="module")
def split():
    """The default split, built once per module (it is deterministic)."""
    return sudoku_split()


def _brute_force_count(puzzle, limit=2):
    """Independent backtracking solver, used to cross-check ``solve_count``."""
    cells = list(puzzle)

    def ok(cell, digit):
        row, col = divmod(cell, 4)
        for other in range(16):
            orow, ocol = divmod(other, 4)
            same_box = orow // 2 == row // 2 and ocol // 2 == col // 2
            if other != cell and (orow == row or ocol == col or same_box) and cells[other] == digit:
                return False
        return True

    def count():
        if "0" not in cells:
            return 1
        cell = cells.index("0")
        total = 0
        for digit in "1234":
            if ok(cell, digit):
                cells[cell] = digit
                total += count()
                cells[cell] = "0"
                if total >= limit:
                    break
        return total

    # Given clues must not already clash with each other.
    if any(ch != "0" and not ok(i, ch) for i, ch in enumerate(cells)):
        return 0
    return min(count(), limit)


# --- grids -------------------------------------------------------------------------------------------------------


def test_all_grids_count_valid_distinct_and_ordered():
    grids = all_grids()
    assert len(grids) == 288
    assert len(set(grids)) == 288
    assert all(is_valid_grid(g) for g in grids)
    assert grids == sorted(grids)
    assert grids == all_grids()


def test_is_valid_grid_rejects_bad_grids():
    assert is_valid_grid(GRID)
    assert not is_valid_grid(GRID[:-1])
    assert not is_valid_grid("1234123412341234")  # columns repeat
    assert not is_valid_grid("1234214334124321")  # rows and columns fine, boxes repeat
    assert not is_valid_grid("5234341221434321")


# --- puzzles ----------------------------------------------------------------------------------------------------


def test_solve_count_matches_brute_force():
    rng = random.Random(123)
    for _ in range(40):
        puzzle = "".join(ch if rng.random() < 0.4 else "0" for ch in rng.choice(all_grids()))
        for limit in (1, 2, 5):
            assert solve_count(puzzle, limit=limit) == _brute_force_count(puzzle, limit=limit)
    assert solve_count("0" * 16, limit=1000) == 288
    assert solve_count("1100000000000000") == 0
    assert solve_count(PUZZLE) == 1
    with pytest.raises(ValueError):
        solve_count("123")


def test_make_puzzle_unique_with_requested_empty_cells():
    rng = random.Random(0)
    for grid in all_grids()[::7]:
        for num_empty in (1, 8, 10):
            puzzle = make_puzzle(grid, num_empty, rng)
            assert puzzle.count("0") == num_empty
            assert all(p in ("0", g) for p, g in zip(puzzle, grid))
            assert solve_count(puzzle) == 1


def test_make_puzzle_reduces_empty_count_when_impossible():
    # A unique 4x4 puzzle needs at least 4 clues, so 14 empty cells is reduced (uniqueness is kept).
    puzzle = make_puzzle(GRID, 14, random.Random(0))
    assert puzzle.count("0") <= 12
    assert solve_count(puzzle) == 1


def test_make_puzzle_is_deterministic_given_rng():
    assert make_puzzle(GRID, 8, random.Random(5)) == make_puzzle(GRID, 8, random.Random(5))
    with pytest.raises(ValueError):
        make_puzzle("1234123412341234", 8, random.Random(0))


# --- split ------------------------------------------------------------------------------------------------------


def test_split_puzzles_are_unique_and_match_their_grid(split):
    train, test = split
    assert len(train) == 200 * 4
    assert len(test) == 256
    for row in train + test:
        assert set(row) == {"puzzle", "solution"}
        assert row["puzzle"].count("0") == 8
        assert solve_count(row["puzzle"]) == 1
        assert _brute_force_count(row["puzzle"]) == 1
        assert all(p in ("0", s) for p, s in zip(row["puzzle"], row["solution"]))


def test_split_is_deterministic_and_seed_dependent(split):
    assert sudoku_split() == split
    assert sudoku_split(seed=1) != split


def test_split_grids_disjoint_and_puzzles_distinct(split):
    train, test = split
    train_solutions = {row["solution"] for row in train}
    test_solutions = {row["solution"] for row in test}
    assert len(train_solutions) == 200
    assert len(test_solutions) == 88
    assert not train_solutions & test_solutions
    assert len({row["puzzle"] for row in test}) == 256
    assert len({row["puzzle"] for row in train}) == len(train)


def test_builtin_test_split_extends_the_default_one(split):
    train, test = split
    builtin_train, builtin_test = sudoku_split(num_test_puzzles=1024)
    assert builtin_train == train
    assert len(builtin_test) == 1024 and builtin_test[:256] == test  # puzzles are generated one after the other
    assert len({row["puzzle"] for row in builtin_test}) == 1024
    assert {row["solution"] for row in builtin_test} == {row["solution"] for row in test}
    assert TASK.builtin("test") == builtin_test and TASK.builtin("train") == train
    assert TASK.builtin("test") is not TASK.builtin("test")  # fresh copies of the cached split
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        TASK.builtin("validation")


def test_split_options():
    train, test = sudoku_split(num_train_grids=100, num_test_puzzles=50, seed=3, num_empty=6, train_puzzles_per_grid=2)
    assert len(train) == 200 and len(test) == 50
    assert all(row["puzzle"].count("0") == 6 for row in train + test)
    assert not {r["solution"] for r in train} & {r["solution"] for r in test}


# --- prompts and dataset ----------------------------------------------------------------------------------------


def test_compact_dataset_and_completion(split):
    train, _ = split
    ds = get_task("sudoku").dataset("train", prompt_style="compact", data="builtin", limit=5)
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["puzzle", "solution", "prompt"]
    assert ds[0]["prompt"] == train[0]["puzzle"] + "="
    assert ds[0]["solution"] == train[0]["solution"]
    assert compact_completion(GRID) == f"<answer>{GRID}</answer>"
    assert (
        sudoku_reward([compact_completion(r["solution"]) for r in train[:5]], ds["puzzle"], ds["solution"])
        == [1.0] * 5
    )


def test_instruct_dataset_zero_shot(split):
    _, test = split
    ds = get_task("sudoku").dataset("test", prompt_style="instruct", data="builtin", few_shot=0, limit=3)
    prompt = ds[0]["prompt"]
    assert isinstance(prompt, list) and len(prompt) == 1 and prompt[0]["role"] == "user"
    content = prompt[0]["content"]
    assert test[0]["puzzle"] in content
    assert "0" in content and "<answer>" in content and "</answer>" in content
    assert "Example" not in content


def test_instruct_dataset_few_shot_uses_training_examples_only(split):
    train, test = split
    # The worked examples are the first training rows with distinct solutions (round-robin over training grids).
    examples = train[:3]
    assert len({ex["solution"] for ex in examples}) == 3
    test_solutions = {row["solution"] for row in test}
    assert not {ex["solution"] for ex in examples} & test_solutions
    ds = get_task("sudoku").dataset("test", prompt_style="instruct", data="builtin", few_shot=3)
    assert ds["puzzle"] == [row["puzzle"] for row in sudoku_split(num_test_puzzles=1024)[1]]
    assert ds[0]["prompt"] == instruct_prompt(ds[0]["puzzle"], examples)
    for content in (ds[i]["prompt"][0]["content"] for i in (0, len(ds) - 1)):
        for ex in examples:
            assert ex["puzzle"] in content and f"<answer>{ex['solution']}</answer>" in content
        assert not any(sol in content for sol in test_solutions)
    example = {"puzzle": test[0]["puzzle"], "solution": test[0]["solution"]}
    assert TASK.format_prompt(example, "instruct", few_shot=200)[0]["content"].count("Example ") == 200
    with pytest.raises(ValueError, match="need 201 distinct training solutions"):  # 200 training grids
        TASK.format_prompt(example, "instruct", few_shot=201)
    with pytest.raises(ValueError, match="prompt styles"):
        get_task("sudoku").dataset("test", prompt_style="chat", limit=2)


# --- parsing and reward -----------------------------------------------------------------------------------------


def _with_cells(grid, cells, digit_for):
    """Copy of ``grid`` with the given cell indices replaced by ``digit_for(original_digit)``."""
    chars = list(grid)
    for cell in cells:
        chars[cell] = digit_for(chars[cell])
    return "".join(chars)


def _wrong(digit):
    return "1" if digit != "1" else "2"


EMPTY_CELLS = [i for i, ch in enumerate(PUZZLE) if ch == "0"]


def _reward(text):
    return sudoku_reward([text], [PUZZLE], [GRID])[0]


def test_reward_fully_and_partially_correct():
    assert _reward(f"<answer>{GRID}</answer>") == 1.0
    three_right = _with_cells(GRID, EMPTY_CELLS[3:], _wrong)  # 3 of 8 empty cells correct
    assert _reward(f"<answer>{three_right}</answer>") == 0.375
    assert cell_accuracy(three_right, PUZZLE, GRID) == (3, 8)
    assert cell_accuracy(None, PUZZLE, GRID) == (0, 8)


def test_reward_wrong_length_is_padded_or_truncated():
    # Short answer: the first 8 digits are kept, the rest padded with '0' (wrong). Empty cells 0, 2, 5, 7 are right.
    assert parse_answer(f"<answer>{GRID[:8]}</answer>") == GRID[:8] + "0" * 8
    assert _reward(f"<answer>{GRID[:8]}</answer>") == 0.5
    assert _reward(f"<answer>{GRID}4444</answer>") == 1.0
    assert parse_answer(f"<answer>4444{GRID}</answer>") == ("4444" + GRID)[:16]
    # Non-digit separators are dropped before counting.
    spaced = " ".join(GRID[i : i + 4] for i in range(0, 16, 4))
    assert _reward(f"<answer>\n{spaced}\n</answer>") == 1.0


def test_reward_missing_tags_is_zero():
    assert parse_answer(GRID) is None
    assert _reward(GRID) == 0.0
    assert _reward(f"<answer>{GRID}") == 0.0
    assert _reward(f"{GRID}</answer>") == 0.0
    assert _reward("") == 0.0


def test_reward_uses_last_answer_and_ignores_surrounding_text():
    wrong = _with_cells(GRID, EMPTY_CELLS, _wrong)
    assert _reward(f"Let me think 1234.\n<answer>{GRID}</answer>\nDone, 4321.") == 1.0
    assert _reward(f"<answer>{wrong}</answer> wait, fix: <answer>{GRID}</answer>") == 1.0
    assert _reward(f"<answer>{GRID}</answer> hmm <answer>{wrong}</answer>") == 0.0
    # A dangling opening tag after the last pair does not matter.
    assert _reward(f"<answer>{GRID}</answer><answer>1111") == 1.0


def test_reward_ignores_prefilled_cells():
    prefilled = [i for i in range(16) if i not in EMPTY_CELLS]
    bad_clues = _with_cells(GRID, prefilled, _wrong)
    assert _reward(f"<answer>{bad_clues}</answer>") == 1.0


def test_reward_conversational_and_batched():
    completions = [
        [{"role": "assistant", "content": f"Thinking...<answer>{GRID}</answer>"}],
        [{"role": "assistant", "content": "no idea"}],
        f"<answer>{_with_cells(GRID, EMPTY_CELLS[:4], _wrong)}</answer>",
    ]
    rewards = sudoku_reward(completions, [PUZZLE] * 3, [GRID] * 3, prompts=["p"] * 3, trainer_state=None)
    assert rewards == [1.0, 0.0, 0.5]
    assert all(isinstance(r, float) for r in rewards)
    with pytest.raises(ValueError):
        sudoku_reward(completions, [PUZZLE], [GRID])


# --- accuracy and standard errors -------------------------------------------------------------------------------


def test_ratio_stderr_by_unit_and_by_cluster():
    from trl_spg.evaluation import ratio_stderr

    # r = 8 / 10; unit residuals y - r x = -0.2, 0.8, -0.6; cluster residuals (7 - 6.4, 1 - 1.6) = 0.6, -0.6.
    assert ratio_stderr([3, 4, 1], [4, 4, 2]) == pytest.approx(math.sqrt(1.04 * 3 / 2) / 10, abs=1e-15)
    assert ratio_stderr([3, 4, 1], [4, 4, 2], clusters=["a", "a", "b"]) == pytest.approx(0.12, abs=1e-15)
    assert ratio_stderr([3, 4, 1], [4, 4, 2], clusters=["a", "a", "a"]) == 0.0
    assert ratio_stderr([], []) == 0.0
    with pytest.raises(ValueError):
        ratio_stderr([1, 2], [2, 2], clusters=["a"])


# A second puzzle of GRID and a puzzle of another grid, 8 empty cells each.
PUZZLE_B = "1030040201400301"
GRID_2 = "2143341212344321"
PUZZLE_2 = "2000301010044301"


def _answer_with_wrong(puzzle, grid, wrong):
    """An answer to ``puzzle`` with exactly ``wrong`` of its empty cells wrong."""
    empty = [i for i, ch in enumerate(puzzle) if ch == "0"]
    return f"<answer>{_with_cells(grid, empty[:wrong], _wrong)}</answer>"


def test_sudoku_accuracy_and_paired_stderr_hand_computed():
    from trl_spg.evaluation import paired_difference, summarize

    puzzles, solutions = [PUZZLE, PUZZLE_B, PUZZLE_2], [GRID, GRID, GRID_2]
    assert [solve_count(p) for p in puzzles] == [1, 1, 1] and [p.count("0") for p in puzzles] == [8, 8, 8]

    def records(wrong):
        answers = [_answer_with_wrong(p, g, w) for p, g, w in zip(puzzles, solutions, wrong)]
        examples = [{"puzzle": p, "solution": g} for p, g in zip(puzzles, solutions)]
        return [{**TASK.score(a, e), **e} for a, e in zip(answers, examples)]

    # Correct cells before: 6, 8, 2 of 8; after: 8, 8, 4 (per-puzzle differences 2, 0, 2; per grid 2 and 2).
    before, after = records([2, 0, 6]), records([0, 0, 4])
    result = summarize(before, TASK.cluster_key)
    assert (result["correct"], result["total"], result["problems"], result["clusters"]) == (16, 24, 3, 2)
    assert result["accuracy"] == pytest.approx(2 / 3, abs=1e-15)
    # Residuals c - (2/3) n: 2/3, 8/3, -10/3 (puzzles); 10/3, -10/3 (grids).
    assert result["stderr"] == pytest.approx(math.sqrt(28) / 24, abs=1e-15)
    assert result["stderr_clustered"] == pytest.approx(5 / 18, abs=1e-15)
    # Difference 4 / 24 = 1/6; residuals d - n / 6: 2/3, -4/3, 2/3 (puzzles); -2/3, 2/3 (grids of 16 and 8 cells).
    paired = paired_difference(before, after, TASK.cluster_key)
    assert paired["difference"] == pytest.approx(1 / 6, abs=1e-15)
    assert paired["stderr"] == pytest.approx(1 / 12, abs=1e-15)
    assert paired["stderr_clustered"] == pytest.approx(1 / 18, abs=1e-15)
    assert paired_difference(before, before)["stderr"] == 0.0
