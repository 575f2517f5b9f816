"""4x4 Sudoku: grids, unique-solution puzzles, a leak-free split, prompts, the reward and the task record.

The SPG paper evaluates on 4x4 Sudoku following d1. Everything here is built from first principles:

* There are exactly 288 valid 4x4 solution grids, so we enumerate them all instead of loading a data file.
* A puzzle is a solution grid with some cells replaced by ``'0'``; we only emit puzzles with a unique solution,
  so the reward (fraction of empty cells filled correctly) has a single well-defined target.
* The train/test split is done on *solution grids*, so no test puzzle shares its solution with any training
  puzzle (a model cannot score on the test set by memorising training solutions).

Grids and puzzles are 16-character strings read row by row, e.g. ``"1234341221434321"``.

Data of the task (`TASK`): training on the built-in split of `sudoku_split` (800 puzzles from 200 solution grids);
the test split is the paper's (``data="paper"``, the default): its 256 puzzles with 7 to 12 empty cells from 88
solution grids (``test_sudoku_split_new.csv`` of the SPG code, shipped in `trl_spg.tasks.data`). ``data="builtin"``
gives the built-in test split instead (1024 puzzles from the other 88 grids of `sudoku_split`; the first 256 are
those of ``sudoku_split()``). A local CSV / JSON file loads with ``data=`` (``Puzzle``/``Solution`` as in the paper's
files, or ``puzzle``/``solution``). The two splits do not match: 61 of the paper's 88 test grids (177 of its 256
puzzles) are training grids of the built-in split, so a model trained on the built-in split is evaluated on
``data="builtin"`` (as the tiny demo is), not on the paper's puzzles.

Prompt styles:

* ``paper`` / ``paper_eval``: the paper's wording (rules, the required answer format, worked examples, then
  ``Question: Solve the following Sudoku puzzle: ...``); the evaluation variant opens the reply with
  ``<reasoning>``. ``few_shot`` (0-3) sets the number of worked examples, ``worked_examples`` which ones:
  ``"paper"``, the paper's three (`reference_examples`, from grids outside its test set), or ``"builtin"``, the
  first puzzles of the built-in training split solved step by step by `worked_example` (`paper_examples`).
  ``paper_eval`` shows the paper's examples, as the paper's evaluation prompt does; ``paper`` (the RL prompt)
  shows the built-in ones, because the paper's second example grid is a test grid of the built-in split, which the
  built-in training data goes with. (The paper's RL prompt shows its three examples too.)
* ``instruct``: `instruct_prompt` with worked examples from the training split.
* ``compact``: the puzzle digits and ``=`` (`compact_prompt`), for the built-in tiny character-level model.

Reward: `sudoku_reward` (fraction of the empty cells filled correctly). Evaluation: correct empty cells over empty
cells, pooled over puzzles (`cell_accuracy`), the answer read from the last complete answer tags
(``grader="strict"``); ``grader="paper"`` reads it as the paper's evaluation does
(`trl_spg.tasks.paper_grader.sudoku_paper_score`: unclosed tags, bare 16-digit strings, ...).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from .base import Task, completion_text
from .data import packaged_rows
from .formats import chat_prompt
from .paper_grader import sudoku_paper_score

SIZE = 4  # rows / columns / digits
BOX = 2  # side of a sub-box
NUM_CELLS = SIZE * SIZE
DIGITS = "1234"
EMPTY = "0"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
COMPACT_SEPARATOR = "="

__all__ = [
    "TASK",
    "all_grids",
    "cell_accuracy",
    "compact_completion",
    "compact_prompt",
    "instruct_prompt",
    "is_valid_grid",
    "make_puzzle",
    "paper_examples",
    "parse_answer",
    "reference_examples",
    "score",
    "solve_count",
    "sudoku_reward",
    "sudoku_split",
    "worked_example",
]


# ---------------------------------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------------------------------

#: The 12 units (rows ``R1``.., columns ``Col1``.., boxes ``Box A``.. left to right, top to bottom) and their cells.
_UNITS: tuple[tuple[str, tuple[int, ...]], ...] = (
    *((f"R{r + 1}", tuple(r * SIZE + c for c in range(SIZE))) for r in range(SIZE)),
    *((f"Col{c + 1}", tuple(r * SIZE + c for r in range(SIZE))) for c in range(SIZE)),
    *(
        (
            f"Box {'ABCD'[b]}",
            tuple((b // BOX * BOX + r) * SIZE + b % BOX * BOX + c for r in range(BOX) for c in range(BOX)),
        )
        for b in range(SIZE)
    ),
)
#: Cells sharing a row, column or box with each cell (excluding itself).
_PEERS = tuple(
    frozenset(other for _, cells in _UNITS if cell in cells for other in cells) - {cell} for cell in range(NUM_CELLS)
)


def is_valid_grid(grid: str) -> bool:
    """True if ``grid`` is a complete 4x4 solution: 16 digits 1-4 with no repeat in any row, column or box."""
    if len(grid) != NUM_CELLS or any(ch not in DIGITS for ch in grid):
        return False
    return all(grid[cell] != grid[peer] for cell in range(NUM_CELLS) for peer in _PEERS[cell])


@lru_cache(maxsize=1)
def _all_grids() -> tuple[str, ...]:
    """Enumerate solution grids by depth-first filling in cell order with ascending digits.

    Trying digits in ascending order cell by cell yields the grids already in lexicographic order, which is the
    deterministic order we promise.
    """
    grids: list[str] = []
    cells = [""] * NUM_CELLS

    def fill(cell: int) -> None:
        if cell == NUM_CELLS:
            grids.append("".join(cells))
            return
        # Only earlier cells are filled, so checking peers against them is enough.
        used = {cells[peer] for peer in _PEERS[cell] if peer < cell}
        for digit in DIGITS:
            if digit not in used:
                cells[cell] = digit
                fill(cell + 1)
        cells[cell] = ""

    fill(0)
    return tuple(grids)


def all_grids() -> list[str]:
    """All 288 valid 4x4 Sudoku solution grids, sorted lexicographically (a fresh list each call)."""
    return list(_all_grids())


@lru_cache(maxsize=1)
def _grid_masks() -> tuple[tuple[int, ...], ...]:
    """For each (cell, digit) a bitset over grid indices of the grids having that digit in that cell.

    With only 288 grids, the solutions of a puzzle are exactly the grids agreeing with its clues, so solving
    reduces to AND-ing one bitset per clue. This is much faster than backtracking and makes generating
    thousands of puzzles (each needing many uniqueness checks) essentially free.
    """
    masks = [[0] * SIZE for _ in range(NUM_CELLS)]
    for index, grid in enumerate(_all_grids()):
        for cell, digit in enumerate(grid):
            masks[cell][int(digit) - 1] |= 1 << index
    return tuple(tuple(row) for row in masks)


# ---------------------------------------------------------------------------------------------------------------------
# Puzzles
# ---------------------------------------------------------------------------------------------------------------------


def _check_puzzle(puzzle: str) -> None:
    """Raise ``ValueError`` unless ``puzzle`` is 16 characters from ``'0'``-``'4'``."""
    if len(puzzle) != NUM_CELLS or any(ch not in EMPTY + DIGITS for ch in puzzle):
        raise ValueError(f"puzzle must be {NUM_CELLS} characters from '0'-'4', got {puzzle!r}")


def solve_count(puzzle: str, limit: int = 2) -> int:
    """Number of solutions of ``puzzle`` (``'0'`` = empty), capped at ``limit``.

    The cap mirrors a backtracking solver that stops early; ``limit=2`` is all a uniqueness check needs.
    """
    _check_puzzle(puzzle)
    masks = _grid_masks()
    candidates = (1 << len(_all_grids())) - 1  # grids consistent with every clue
    for cell, ch in enumerate(puzzle):
        if ch != EMPTY:
            candidates &= masks[cell][int(ch) - 1]
    return min(candidates.bit_count(), limit)


def _greedy_blank(grid: str, num_empty: int, rng: random.Random) -> str:
    """Blank cells in a random order, skipping any whose removal would make the solution ambiguous."""
    puzzle = list(grid)
    order = list(range(NUM_CELLS))
    rng.shuffle(order)
    blanked = 0
    for cell in order:
        if blanked == num_empty:
            break
        puzzle[cell] = EMPTY
        if solve_count("".join(puzzle)) == 1:
            blanked += 1
        else:
            puzzle[cell] = grid[cell]
    return "".join(puzzle)


def make_puzzle(grid: str, num_empty: int = 8, rng: random.Random | None = None, max_tries: int = 50) -> str:
    """Blank ``num_empty`` cells of solution ``grid`` so that the resulting puzzle has a unique solution.

    Cells are removed greedily in an ``rng``-shuffled order, keeping a removal only if the puzzle stays uniquely
    solvable. A greedy pass can get stuck at a puzzle where every further removal is ambiguous, so we retry with
    fresh orders (up to ``max_tries``).

    If no try reaches ``num_empty`` empty cells (always the case above 12, since a unique 4x4 puzzle needs at least
    4 clues), the puzzle with the most empty cells found is returned: the count is silently *reduced* rather than
    uniqueness being sacrificed. For the default of 8 the target is reached in practice on the first few tries.
    """
    if not is_valid_grid(grid):
        raise ValueError(f"not a valid 4x4 Sudoku grid: {grid!r}")
    if not 0 <= num_empty <= NUM_CELLS:
        raise ValueError(f"num_empty must be in [0, {NUM_CELLS}], got {num_empty}")
    rng = rng if rng is not None else random.Random()
    best = grid
    for _ in range(max(1, max_tries)):
        puzzle = _greedy_blank(grid, num_empty, rng)
        if puzzle.count(EMPTY) > best.count(EMPTY):
            best = puzzle
        if best.count(EMPTY) == num_empty:
            break
    return best


# ---------------------------------------------------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------------------------------------------------

#: Test puzzles of the built-in split (about 12 per test grid); the first 256 are those of ``sudoku_split()``.
BUILTIN_TEST_PUZZLES = 1024


def _distinct_puzzles(
    grids: Sequence[str], count: int, num_empty: int, rng: random.Random, max_tries_per_puzzle: int = 100
) -> list[dict[str, str]]:
    """``count`` distinct puzzles made round-robin over ``grids`` (so each grid gets a near-equal share)."""
    if count > 0 and not grids:
        raise ValueError("cannot make puzzles without solution grids")
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for index in range(count):
        grid = grids[index % len(grids)]
        for _ in range(max_tries_per_puzzle):
            puzzle = make_puzzle(grid, num_empty, rng)
            if puzzle not in seen:
                break
        else:
            raise RuntimeError(f"could not find a new distinct puzzle for grid {grid} with {num_empty} empty cells")
        seen.add(puzzle)
        rows.append({"puzzle": puzzle, "solution": grid})
    return rows


def sudoku_split(
    num_train_grids: int = 200,
    num_test_puzzles: int = 256,
    seed: int = 0,
    num_empty: int = 8,
    train_puzzles_per_grid: int = 4,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Deterministic ``(train_rows, test_rows)`` split; each row is ``{"puzzle": ..., "solution": ...}``.

    The 288 grids are shuffled with ``random.Random(seed)``; the first ``num_train_grids`` are training solutions
    and the rest are test solutions. Test puzzles come only from test grids (several distinct puzzles per grid), so
    no test solution ever appears in training. Each training grid yields ``train_puzzles_per_grid`` distinct
    puzzles. All puzzles have a unique solution; puzzles are distinct within each side (and across sides, since
    their solutions differ). Test puzzles are made one after the other, so the first ``n`` of a larger
    ``num_test_puzzles`` are those of ``num_test_puzzles=n``.
    """
    grids = all_grids()
    if not 0 <= num_train_grids <= len(grids):
        raise ValueError(f"num_train_grids must be in [0, {len(grids)}], got {num_train_grids}")
    random.Random(seed).shuffle(grids)
    train_grids, test_grids = grids[:num_train_grids], grids[num_train_grids:]
    # Separate generators per side, so changing e.g. train_puzzles_per_grid does not change the test set.
    train_rng = random.Random(f"sudoku-train-{seed}")
    test_rng = random.Random(f"sudoku-test-{seed}")
    train_rows = _distinct_puzzles(train_grids, len(train_grids) * train_puzzles_per_grid, num_empty, train_rng)
    test_rows = _distinct_puzzles(test_grids, num_test_puzzles, num_empty, test_rng)
    return train_rows, test_rows


@lru_cache(maxsize=1)
def _builtin_split() -> tuple[tuple[dict[str, str], ...], tuple[dict[str, str], ...]]:
    """The task's built-in split, computed once: ``sudoku_split(num_test_puzzles=BUILTIN_TEST_PUZZLES)``."""
    train, test = sudoku_split(num_test_puzzles=BUILTIN_TEST_PUZZLES)
    return tuple(train), tuple(test)


def builtin_rows(split: str) -> list[dict]:
    """Rows of the built-in ``"train"`` or ``"test"`` split (fresh copies)."""
    if split not in ("train", "test"):
        raise ValueError(f"the built-in Sudoku data has splits 'train' and 'test', not {split!r}")
    train, test = _builtin_split()
    return [dict(row) for row in (train if split == "train" else test)]


# ---------------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------------

_INSTRUCTIONS = (
    "Solve this 4x4 Sudoku puzzle. The grid has 4 rows and 4 columns and is divided into four 2x2 boxes. "
    "When solved, every row, every column and every 2x2 box contains each of the digits 1, 2, 3 and 4 exactly once.\n"
    "The puzzle is written as 16 digits, row by row from the top-left cell: the first 4 digits are the first row, "
    "the next 4 the second row, and so on. A 0 marks an empty cell that you must fill; the other digits are given "
    "and must stay as they are.\n"
    "Think briefly, then write the complete solved grid as 16 digits (row by row, no spaces) between "
    f"{ANSWER_OPEN} and {ANSWER_CLOSE}."
)
#: The paper's Sudoku instructions (its exact text).
PAPER_INSTRUCTIONS = (
    "\nPlease solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading "
    "left-to-right, top-to-bottom, where '0' represents empty cells.\n\nRules:\n- Fill empty cells with digits 1-4\n"
    "- Each row must contain digits 1-4 exactly once\n- Each column must contain digits 1-4 exactly once\n"
    "- Each 2x2 box must contain digits 1-4 exactly once\n\nImportant: Your solution must be a COMPLETE 16-character "
    "string with only the digits 1-4, representing your final solved grid.\n\nRespond in this exact format:\n"
    "<reasoning>\nYour step-by-step solving process\n</reasoning>\n<answer>\n"
    "[16-character solution string with no spaces or separators]\n</answer>\n"
)
MAX_PAPER_SHOTS = 3


def compact_prompt(puzzle: str) -> str:
    """Short prompt for a tiny character-level model: the puzzle digits followed by a separator."""
    _check_puzzle(puzzle)
    return puzzle + COMPACT_SEPARATOR


def compact_completion(solution: str) -> str:
    """Target completion for a solved puzzle (used for warm-start supervised fine-tuning)."""
    if not is_valid_grid(solution):
        raise ValueError(f"not a valid 4x4 Sudoku grid: {solution!r}")
    return ANSWER_OPEN + solution + ANSWER_CLOSE


def instruct_prompt(puzzle: str, examples: Sequence[dict[str, str]] = ()) -> list[dict[str, str]]:
    """Conversational prompt (a single user message) explaining the rules, with optional worked examples.

    ``examples`` are rows with ``puzzle``/``solution`` keys; they must come from training grids, never from the
    evaluation set (the ``instruct`` style of `TASK` shows the first training puzzles with distinct solutions).
    """
    _check_puzzle(puzzle)
    parts = [_INSTRUCTIONS]
    if examples:
        shots = [
            f"Example {i}:\nPuzzle: {ex['puzzle']}\n{ANSWER_OPEN}{ex['solution']}{ANSWER_CLOSE}"
            for i, ex in enumerate(examples, start=1)
        ]
        parts.append("Here are some solved examples.\n\n" + "\n\n".join(shots))
    parts.append(f"Now solve this puzzle.\nPuzzle: {puzzle}")
    return chat_prompt("\n\n".join(parts))


def _first_distinct(rows: Sequence[dict[str, str]], k: int, render: Callable[[dict[str, str]], Any]) -> list:
    """``render(row)`` of the first rows (up to ``k``) with distinct solutions, skipping rows it renders as None."""
    picked: list = []
    solutions: set[str] = set()
    for row in rows:
        if len(picked) == k:
            break
        if row["solution"] not in solutions and (rendered := render(row)) is not None:
            solutions.add(row["solution"])
            picked.append(rendered)
    return picked


def _grid_rows(grid: str) -> list[str]:
    return [f"R{r + 1}: " + " ".join(grid[r * SIZE : (r + 1) * SIZE]) for r in range(SIZE)]


def _cell(index: int) -> str:
    return f"R{index // SIZE + 1}C{index % SIZE + 1}"


def _next_single(grid: list[str]) -> tuple[int, str, str] | None:
    """The next ``(cell, digit, explanation)`` of `worked_example`, or None when no single applies."""
    for name, cells in _UNITS:  # a unit missing a single digit
        empty = [i for i in cells if grid[i] == EMPTY]
        if len(empty) == 1:
            digit = (set(DIGITS) - {grid[i] for i in cells}).pop()
            return empty[0], digit, f"{name} missing {digit} → {_cell(empty[0])}={digit}."
    for index in (i for i in range(NUM_CELLS) if grid[i] == EMPTY):  # a cell with a single candidate
        candidates = sorted(set(DIGITS) - {grid[i] for i in _PEERS[index]})
        if len(candidates) == 1:
            return index, candidates[0], f"{_cell(index)} can only be {candidates[0]}."
    for name, cells in _UNITS:  # a digit with a single place in a unit
        for digit in DIGITS:
            if digit in (grid[i] for i in cells):
                continue
            places = [i for i in cells if grid[i] == EMPTY and digit not in {grid[j] for j in _PEERS[i]}]
            if len(places) == 1:
                return places[0], digit, f"{name} needs {digit} only at {_cell(places[0])}."
    return None


def worked_example(puzzle: str, solution: str) -> str | None:
    """A worked solution in the paper's format (grid, ``Fill easy singles:`` steps, final grid), or None.

    Each step is a unit with one empty cell, a cell with one candidate, or a digit with one place in a unit;
    puzzles that need anything else give None.
    """
    grid, steps = list(puzzle), []
    while EMPTY in grid:
        step = _next_single(grid)
        if step is None or solution[step[0]] != step[1]:
            return None
        grid[step[0]] = step[1]
        steps.append(step[2])
    return _worked_text(puzzle, solution, steps)


def _worked_text(puzzle: str, solution: str, steps: Sequence[str]) -> str:
    """A worked example in the paper's layout: question, the puzzle's rows, the steps, the final grid, the answer."""
    return (
        f"Question:\nSolve the following Sudoku puzzle: {puzzle}\nAnswer:\n<reasoning>\nInterpret puzzle as 4 rows of "
        "4:\n"
        + "\n".join(_grid_rows(puzzle))
        + "\n\nFill easy singles:\n"
        + "\n".join(steps)
        + "\n\nFinal grid:\n"
        + "\n".join(_grid_rows(solution))
        + f"\n</reasoning>\n<answer>\n{solution}\n</answer>"
    )


#: The paper's three worked examples (puzzle, solution, solving steps), as its evaluation and RL prompts show them
#: (SPG code: ``short_example_1`` to ``_3`` of eval/sudoku.py and spg/data_utils.py). Their solution grids are
#: training grids of the paper's split, none of its 88 test grids; the second is a test grid of the built-in split.
PAPER_WORKED_EXAMPLES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "3014002020004130",
        "3214142323414132",
        (
            "R1 missing 2 → R1C2=2.",
            "R4 missing 2 → R4C4=2.",
            "Box D (R3-4,C3-4) then needs {1,4}; column4 can only accept 1 → R3C4=1, R3C3=4.",
            "R3 now missing 3 → R3C2=3.",
            "Column1 missing 1 → R2C1=1.",
            "Column2 missing 4 → R2C2=4.",
            "Last cell R2C4=3.",
        ),
    ),
    (
        "0000100420013142",
        "4213132424313142",
        (
            "Col1 missing 4 → R1C1=4.",
            "Col4 missing 3 → R1C4=3.",
            "Box A (R1-2,C1-2) missing {2,3} and R1 now needs {1,2} → R1C2=2, R2C2=3.",
            "R1C3=1.",
            "R2 now missing 2 → R2C3=2.",
            "Col2 missing 4 → R3C2=4, then R3C3=3.",
        ),
    ),
    (
        "2001403002001420",
        "2341413232141423",
        (
            "R1 missing {3,4}; Col2 can't be 1 so R1C2=3 → R1C3=4.",
            "R4 missing 3 → R4C4=3.",
            "Col4 missing {2,4}; R2 must take 2 → R2C4=2 → R2C2=1.",
            "Col1 missing 3 → R3C1=3.",
            "Col3 missing 1 → R3C3=1 → R3C4=4.",
        ),
    ),
)


@lru_cache(maxsize=1)
def reference_examples() -> tuple[str, ...]:
    """The paper's three worked examples (`PAPER_WORKED_EXAMPLES`), shown by ``paper_eval``."""
    return tuple(_worked_text(*example) for example in PAPER_WORKED_EXAMPLES)


@lru_cache(maxsize=1)
def paper_examples() -> tuple[str, ...]:
    """Three worked examples from the first built-in training puzzles with distinct solutions (never test grids of the
    built-in split, nor of the paper's test set); shown by ``paper``."""
    train = _builtin_split()[0]
    return tuple(_first_distinct(train, MAX_PAPER_SHOTS, lambda row: worked_example(row["puzzle"], row["solution"])))


#: Sources of the worked examples of the ``paper`` / ``paper_eval`` prompts (their ``worked_examples`` option).
WORKED_EXAMPLES = {"paper": reference_examples, "builtin": paper_examples}


def _shots(few_shot: int, worked_examples: str) -> str:
    if not 0 <= few_shot <= MAX_PAPER_SHOTS:
        raise ValueError(f"few_shot must be in [0, {MAX_PAPER_SHOTS}], got {few_shot}")
    if worked_examples not in WORKED_EXAMPLES:
        raise ValueError(f"worked_examples must be one of {sorted(WORKED_EXAMPLES)}, got {worked_examples!r}")
    return "\n\n".join(WORKED_EXAMPLES[worked_examples]()[:few_shot])


def paper_prompt(example: dict, few_shot: int = MAX_PAPER_SHOTS, worked_examples: str = "paper") -> list[dict]:
    """The paper's RL prompt: instructions, the paper's worked examples (``worked_examples="builtin"``: the built-in
    training ones, for runs on the built-in split, whose test grids include the paper's second example grid),
    ``Question: ...\\nAnswer:\\n``."""
    return chat_prompt(
        f"{PAPER_INSTRUCTIONS}\n\n{_shots(few_shot, worked_examples)}\n\nQuestion: Solve the following Sudoku "
        f"puzzle: {example['puzzle']}\nAnswer:\n"
    )


def paper_eval_prompt(example: dict, few_shot: int = MAX_PAPER_SHOTS, worked_examples: str = "paper") -> list[dict]:
    """The paper's evaluation prompt with its worked examples (its question line ends with an extra newline), reply
    opened by a tag. ``worked_examples="builtin"`` shows the built-in training ones instead (for the built-in test
    split, which holds the paper's second example grid)."""
    question = f"Solve the following Sudoku puzzle: {example['puzzle']}\n"
    body = f"{_shots(few_shot, worked_examples)}\n\nQuestion: {question}\nAnswer:\n" if few_shot else question
    return chat_prompt(f"{PAPER_INSTRUCTIONS}\n\n{body}", prefill=True)


def _instruct_example(example: dict, few_shot: int = MAX_PAPER_SHOTS) -> list[dict]:
    """`instruct_prompt` showing the first ``few_shot`` built-in training puzzles with distinct solutions."""
    examples = _first_distinct(_builtin_split()[0], few_shot, dict) if few_shot else []
    if len(examples) < few_shot:
        raise ValueError(f"need {few_shot} distinct training solutions for few-shot examples, found {len(examples)}")
    return instruct_prompt(example["puzzle"], examples)


def _compact_example(example: dict) -> str:
    return compact_prompt(example["puzzle"])


# ---------------------------------------------------------------------------------------------------------------------
# Answers and reward
# ---------------------------------------------------------------------------------------------------------------------


def _normalize_digits(text: str) -> str:
    """Keep ASCII digits only, then pad with ``'0'`` (counts as wrong) or truncate to exactly 16 characters."""
    digits = "".join(ch for ch in text if ch in string.digits)
    return digits[:NUM_CELLS].ljust(NUM_CELLS, EMPTY)


def parse_answer(text: str) -> str | None:
    """16-digit grid from the last complete ``<answer>...</answer>`` pair in ``text``, or ``None`` if there is none.

    We anchor on the last closing tag and take the nearest opening tag before it, so stray unmatched tags (e.g. a
    truncated trailing ``<answer>``) do not swallow or shift the answer.
    """
    end = text.rfind(ANSWER_CLOSE)
    if end < 0:
        return None
    start = text.rfind(ANSWER_OPEN, 0, end)
    if start < 0:
        return None
    return _normalize_digits(text[start + len(ANSWER_OPEN) : end])


def cell_accuracy(answer_digits: str | None, puzzle: str, solution: str) -> tuple[int, int]:
    """``(correct, total)`` over the puzzle's empty cells; prefilled cells are ignored.

    Summing both numbers over puzzles gives the Sudoku accuracy used in evaluation. ``None`` (no parsable answer)
    counts every empty cell as wrong.
    """
    _check_puzzle(puzzle)
    empty_cells = [cell for cell, ch in enumerate(puzzle) if ch == EMPTY]
    if answer_digits is None:
        return 0, len(empty_cells)
    answer = _normalize_digits(answer_digits)
    correct = sum(answer[cell] == solution[cell] for cell in empty_cells)
    return correct, len(empty_cells)


def sudoku_reward(
    completions: Sequence[Any], puzzle: Sequence[str], solution: Sequence[str], **kwargs: Any
) -> list[float]:
    """TRL reward function: fraction of each puzzle's empty cells filled correctly in the last answer tag pair.

    ``puzzle`` and ``solution`` arrive from the dataset columns of the same name; other keyword arguments TRL passes
    (``prompts``, ``completion_ids``, ``trainer_state``, ...) are ignored. A completion without a complete
    ``<answer>...</answer>`` pair scores 0.0. A puzzle with no empty cell scores 1.0 if an answer is present.
    """
    if not len(completions) == len(puzzle) == len(solution):
        raise ValueError(
            f"length mismatch: {len(completions)} completions, {len(puzzle)} puzzles, {len(solution)} solutions"
        )
    rewards: list[float] = []
    for completion, puz, sol in zip(completions, puzzle, solution):
        answer = parse_answer(completion_text(completion))
        if answer is None:
            rewards.append(0.0)
            continue
        correct, total = cell_accuracy(answer, puz, sol)
        rewards.append(correct / total if total else 1.0)
    return rewards


def score(completion: str, example: dict) -> dict:
    """Evaluation rule: correct empty cells out of the puzzle's empty cells."""
    answer = parse_answer(completion)
    correct, total = cell_accuracy(answer, example["puzzle"], example["solution"])
    return {"prediction": answer, "correct": float(correct), "total": float(total)}


# ---------------------------------------------------------------------------------------------------------------------
# The task record
# ---------------------------------------------------------------------------------------------------------------------


def _grid(value) -> str:
    text = str(value).strip()
    return text.zfill(NUM_CELLS) if text.isdigit() else text  # CSV readers turn "0310..." into an integer


def prepare(row: dict) -> dict:
    puzzle = row["puzzle"] if "puzzle" in row else row["Puzzle"]
    solution = row["solution"] if "solution" in row else row["Solution"]
    return {"puzzle": _grid(puzzle), "solution": _grid(solution)}


PAPER_TEST_FILE = "test_sudoku_split_new.csv"


@lru_cache(maxsize=1)
def _paper_train() -> tuple[dict[str, str], ...]:
    """Training puzzles from the 200 solution grids outside the paper's test file: the paper splits by grid, and its
    training file is not shipped, so these are our puzzles (4 per grid, 7-12 empty cells like its test puzzles,
    unique solutions) on its training grids. No test grid of the paper's occurs in them."""
    test_grids = {prepare(row)["solution"] for row in packaged_rows(PAPER_TEST_FILE)}
    rng, rows, seen = random.Random("sudoku-paper-train"), [], set()
    for grid in (grid for grid in all_grids() if grid not in test_grids):
        for _ in range(4):
            puzzle = next(
                (p for p in (make_puzzle(grid, rng.randint(7, 12), rng) for _ in range(100)) if p not in seen), None
            )
            if puzzle is not None:
                seen.add(puzzle)
                rows.append({"puzzle": puzzle, "solution": grid})
    return tuple(rows)


def paper_rows(split: str):
    """The paper's split: its 256 test puzzles (shipped) or puzzles on its 200 training grids (`_paper_train`)."""
    if split == "test":
        return packaged_rows(PAPER_TEST_FILE)
    if split == "train":
        return [dict(row) for row in _paper_train()]
    raise ValueError(f"the paper's Sudoku data has splits 'train' and 'test', not {split!r}")


TASK = Task(
    name="sudoku",
    title="Sudoku",
    description="4x4 Sudoku, reward = share of empty cells filled correctly (the paper's split by solution grid)",
    paper=paper_rows,
    builtin=builtin_rows,
    default_data={"train": "paper", "test": "paper"},
    prepare=prepare,
    prompts={
        "paper": paper_prompt,
        "paper_eval": paper_eval_prompt,
        "instruct": _instruct_example,
        "compact": _compact_example,
    },
    train_prompt="paper",
    eval_prompt="paper_eval",
    reward_funcs=(sudoku_reward,),
    strict_score=score,
    paper_score=sudoku_paper_score,
    cluster_key="solution",
)
