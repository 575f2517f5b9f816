"""4x4 Sudoku task: grids, unique-solution puzzles, a leak-free split, prompts and the reward.

The SPG paper evaluates on 4x4 Sudoku following d1. Everything here is built from first principles:

* There are exactly 288 valid 4x4 solution grids, so we enumerate them all instead of loading a data file.
* A puzzle is a solution grid with some cells replaced by ``'0'``; we only emit puzzles with a unique solution,
  so the reward (fraction of empty cells filled correctly) has a single well-defined target.
* The train/test split is done on *solution grids*, so no test puzzle shares its solution with any training
  puzzle (a model cannot score on the test set by memorising training solutions).

Grids and puzzles are 16-character strings read row by row, e.g. ``"1234341221434321"``.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import datasets

SIZE = 4  # rows / columns / digits
BOX = 2  # side of a sub-box
NUM_CELLS = SIZE * SIZE
DIGITS = "1234"
EMPTY = "0"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
COMPACT_SEPARATOR = "="
# At least 4 clues are needed for a unique 4x4 solution, so more than 12 empty cells can never be unique.
MAX_UNIQUE_EMPTY = NUM_CELLS - 4

__all__ = [
    "all_grids",
    "cell_accuracy",
    "compact_completion",
    "compact_prompt",
    "few_shot_examples",
    "instruct_prompt",
    "is_valid_grid",
    "make_puzzle",
    "parse_answer",
    "solve_count",
    "sudoku_dataset",
    "sudoku_reward",
    "sudoku_split",
]


# ---------------------------------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------------------------------


def _peers(cell: int) -> frozenset[int]:
    """Cells sharing a row, column or 2x2 box with ``cell`` (excluding itself)."""
    row, col = divmod(cell, SIZE)
    box_row, box_col = row - row % BOX, col - col % BOX
    peers = {row * SIZE + c for c in range(SIZE)}
    peers |= {r * SIZE + col for r in range(SIZE)}
    peers |= {(box_row + r) * SIZE + box_col + c for r in range(BOX) for c in range(BOX)}
    peers.discard(cell)
    return frozenset(peers)


_PEERS = tuple(_peers(cell) for cell in range(NUM_CELLS))


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
    grids = _all_grids()
    masks = [[0] * SIZE for _ in range(NUM_CELLS)]
    for index, grid in enumerate(grids):
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


def _solution_mask(puzzle: str) -> int:
    """Bitset of grid indices consistent with every clue of ``puzzle``."""
    masks = _grid_masks()
    candidates = (1 << len(_all_grids())) - 1
    for cell, ch in enumerate(puzzle):
        if ch != EMPTY:
            candidates &= masks[cell][int(ch) - 1]
    return candidates


def solve_count(puzzle: str, limit: int = 2) -> int:
    """Number of solutions of ``puzzle`` (``'0'`` = empty), capped at ``limit``.

    The cap mirrors a backtracking solver that stops early; ``limit=2`` is all a uniqueness check needs.
    """
    _check_puzzle(puzzle)
    return min(_solution_mask(puzzle).bit_count(), limit)


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
    their solutions differ).
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

    ``examples`` are rows with ``puzzle``/``solution`` keys; they must come from training grids (see
    ``few_shot_examples``), never from the evaluation set.
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
    return [{"role": "user", "content": "\n\n".join(parts)}]


def few_shot_examples(train_rows: Sequence[dict[str, str]], k: int = 3) -> list[dict[str, str]]:
    """Deterministically pick ``k`` worked examples (distinct solutions) from *training* rows: the first ones."""
    picked: list[dict[str, str]] = []
    solutions: set[str] = set()
    for row in train_rows:
        if len(picked) == k:
            break
        if row["solution"] not in solutions:
            solutions.add(row["solution"])
            picked.append({"puzzle": row["puzzle"], "solution": row["solution"]})
    if len(picked) < k:
        raise ValueError(f"need {k} distinct training solutions for few-shot examples, found {len(picked)}")
    return picked


def sudoku_dataset(
    split_rows: Sequence[dict[str, str]],
    prompt_style: str = "compact",
    few_shot: int = 3,
    examples: Sequence[dict[str, str]] | None = None,
) -> datasets.Dataset:
    """Build a ``datasets.Dataset`` with columns ``prompt``, ``puzzle`` and ``solution``.

    ``prompt_style="compact"`` gives plain-string prompts (``few_shot`` and ``examples`` are ignored).
    ``prompt_style="instruct"`` gives conversational prompts; with ``few_shot > 0`` the first ``few_shot`` of
    ``examples`` are shown as worked examples. Examples must be passed explicitly (e.g.
    ``few_shot_examples(train_rows)``) because this function cannot tell training rows from test rows, and picking
    examples from the evaluation set would leak solutions.
    """
    if prompt_style == "compact":
        prompts: list[Any] = [compact_prompt(row["puzzle"]) for row in split_rows]
    elif prompt_style == "instruct":
        shots: list[dict[str, str]] = []
        if few_shot > 0:
            if examples is None:
                raise ValueError("few_shot > 0 needs explicit training examples, e.g. few_shot_examples(train_rows)")
            if len(examples) < few_shot:
                raise ValueError(f"asked for {few_shot} few-shot examples but only {len(examples)} were given")
            shots = list(examples[:few_shot])
        prompts = [instruct_prompt(row["puzzle"], shots) for row in split_rows]
    else:
        raise ValueError(f"prompt_style must be 'compact' or 'instruct', got {prompt_style!r}")
    return datasets.Dataset.from_dict(
        {
            "prompt": prompts,
            "puzzle": [row["puzzle"] for row in split_rows],
            "solution": [row["solution"] for row in split_rows],
        }
    )


# ---------------------------------------------------------------------------------------------------------------------
# Answer parsing and reward
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


def _completion_text(completion: Any) -> str:
    """Text of a completion given either as a string or as a conversational list of messages (last message)."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    content = completion[-1].get("content", "")
    if isinstance(content, list):
        # Multimodal-style content parts: concatenate the text parts.
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else str(content)


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
        answer = parse_answer(_completion_text(completion))
        if answer is None:
            rewards.append(0.0)
            continue
        correct, total = cell_accuracy(answer, puz, sol)
        rewards.append(correct / total if total else 1.0)
    return rewards
