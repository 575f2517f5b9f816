"""The 4x4 Sudoku task record: `trl_spg.tasks.sudoku` (grids, puzzles, split, reward) in the shape of every task.

Data: the built-in split of `trl_spg.tasks.sudoku.sudoku_split` (800 training puzzles from 200 solution grids, 256
test puzzles from the other 88 grids), or a local CSV / JSON file with ``Puzzle``/``Solution`` (the paper's files)
or ``puzzle``/``solution`` columns.

Prompts:

* ``paper`` / ``paper_eval``: the paper's wording (rules, the required answer format, worked examples, then
  ``Question: Solve the following Sudoku puzzle: ...``); the evaluation variant opens the reply with
  ``<reasoning>``. The paper shows three worked examples; ours are the first training puzzles of the built-in split
  (solved step by step by `worked_example`), because one of the paper's three example grids is a test grid of
  the built-in split. ``few_shot`` (0-3) sets their number.
* ``instruct``: `trl_spg.tasks.sudoku.instruct_prompt` with worked examples from the training split.
* ``compact``: the puzzle digits and ``=``, for the built-in tiny character-level model.

Reward: `trl_spg.tasks.sudoku.sudoku_reward` (fraction of the empty cells filled correctly). Evaluation: correct
empty cells over empty cells, pooled over puzzles.
"""

from __future__ import annotations

from functools import lru_cache

from .base import Task
from .formats import REASONING_PREFILL
from .sudoku import (
    BOX,
    DIGITS,
    EMPTY,
    NUM_CELLS,
    SIZE,
    cell_accuracy,
    compact_prompt,
    few_shot_examples,
    instruct_prompt,
    parse_answer,
    sudoku_reward,
    sudoku_split,
)

__all__ = ["TASK", "paper_examples", "worked_example"]

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
_BOX_NAMES = "ABCD"


def _rows(grid: list[str]) -> list[str]:
    return [f"R{r + 1}: " + " ".join(grid[r * SIZE : (r + 1) * SIZE]) for r in range(SIZE)]


def _units() -> list[tuple[str, list[int]]]:
    units = [(f"R{r + 1}", [r * SIZE + c for c in range(SIZE)]) for r in range(SIZE)]
    units += [(f"Col{c + 1}", [r * SIZE + c for r in range(SIZE)]) for c in range(SIZE)]
    for b in range(SIZE):
        top, left = BOX * (b // BOX), BOX * (b % BOX)
        cells = [(top + r) * SIZE + left + c for r in range(BOX) for c in range(BOX)]
        units.append((f"Box {_BOX_NAMES[b]}", cells))
    return units


def _cell(index: int) -> str:
    return f"R{index // SIZE + 1}C{index % SIZE + 1}"


def worked_example(puzzle: str, solution: str) -> str | None:
    """A worked solution in the paper's format (grid, ``Fill easy singles:`` steps, final grid), or None.

    Each step is a unit with one empty cell, a cell with one candidate, or a digit with one place in a unit;
    puzzles that need anything else give None.
    """
    grid, steps = list(puzzle), []
    units = _units()
    while EMPTY in grid:
        step = None
        for name, cells in units:  # a unit missing a single digit
            empty = [i for i in cells if grid[i] == EMPTY]
            if len(empty) == 1:
                digit = (set(DIGITS) - {grid[i] for i in cells}).pop()
                step = (empty[0], digit, f"{name} missing {digit} → {_cell(empty[0])}={digit}.")
                break
        if step is None:  # a cell with a single candidate
            for index in (i for i in range(NUM_CELLS) if grid[i] == EMPTY):
                seen = {grid[i] for _, cells in units if index in cells for i in cells}
                candidates = sorted(set(DIGITS) - seen)
                if len(candidates) == 1:
                    step = (index, candidates[0], f"{_cell(index)} can only be {candidates[0]}.")
                    break
        if step is None:  # a digit with a single place in a unit
            for name, cells in units:
                for digit in DIGITS:
                    if digit in (grid[i] for i in cells):
                        continue
                    places = [
                        i
                        for i in cells
                        if grid[i] == EMPTY
                        and digit not in {grid[j] for _, other in units if i in other for j in other}
                    ]
                    if len(places) == 1:
                        step = (places[0], digit, f"{name} needs {digit} only at {_cell(places[0])}.")
                        break
                if step is not None:
                    break
        if step is None:
            return None
        index, digit, text = step
        if solution[index] != digit:
            return None
        grid[index] = digit
        steps.append(text)
    return (
        f"Question:\nSolve the following Sudoku puzzle: {puzzle}\nAnswer:\n<reasoning>\nInterpret puzzle as 4 rows of "
        "4:\n"
        + "\n".join(_rows(list(puzzle)))
        + "\n\nFill easy singles:\n"
        + "\n".join(steps)
        + "\n\nFinal grid:\n"
        + "\n".join(_rows(list(solution)))
        + f"\n</reasoning>\n<answer>\n{solution}\n</answer>"
    )


@lru_cache(maxsize=1)
def _train_rows() -> tuple[dict, ...]:
    return tuple(sudoku_split()[0])


@lru_cache(maxsize=1)
def paper_examples() -> tuple[str, ...]:
    """Three worked examples from the first built-in training puzzles with distinct solutions (never test grids)."""
    shots, solutions = [], set()
    for row in _train_rows():
        if row["solution"] in solutions:
            continue
        text = worked_example(row["puzzle"], row["solution"])
        if text is not None:
            shots.append(text)
            solutions.add(row["solution"])
        if len(shots) == MAX_PAPER_SHOTS:
            break
    return tuple(shots)


def _shots(few_shot: int) -> str:
    if not 0 <= few_shot <= MAX_PAPER_SHOTS:
        raise ValueError(f"few_shot must be in [0, {MAX_PAPER_SHOTS}], got {few_shot}")
    return "\n\n".join(paper_examples()[:few_shot])


def paper_prompt(example: dict, few_shot: int = MAX_PAPER_SHOTS) -> list[dict]:
    """The paper's RL prompt: instructions, worked examples, ``Question: ...\\nAnswer:\\n``."""
    content = (
        f"{PAPER_INSTRUCTIONS}\n\n{_shots(few_shot)}\n\nQuestion: Solve the following Sudoku puzzle: "
        f"{example['puzzle']}\nAnswer:\n"
    )
    return [{"role": "user", "content": content}]


def paper_eval_prompt(example: dict, few_shot: int = MAX_PAPER_SHOTS) -> list[dict]:
    """The paper's evaluation prompt (its question line ends with an extra newline), reply opened by a tag."""
    question = f"Solve the following Sudoku puzzle: {example['puzzle']}\n"
    body = f"{_shots(few_shot)}\n\nQuestion: {question}\nAnswer:\n" if few_shot else question
    return [
        {"role": "user", "content": f"{PAPER_INSTRUCTIONS}\n\n{body}"},
        {"role": "assistant", "content": REASONING_PREFILL},
    ]


def instruct(example: dict, few_shot: int = MAX_PAPER_SHOTS) -> list[dict]:
    examples = few_shot_examples(list(_train_rows()), few_shot) if few_shot else []
    return instruct_prompt(example["puzzle"], examples)


def compact(example: dict) -> str:
    return compact_prompt(example["puzzle"])


def _grid(value) -> str:
    text = str(value).strip()
    return text.zfill(NUM_CELLS) if text.isdigit() else text  # CSV readers turn "0310..." into an integer


def prepare(row: dict) -> dict:
    puzzle = row["puzzle"] if "puzzle" in row else row["Puzzle"]
    solution = row["solution"] if "solution" in row else row["Solution"]
    return {"puzzle": _grid(puzzle), "solution": _grid(solution)}


def score(completion: str, example: dict) -> dict:
    answer = parse_answer(completion)
    correct, total = cell_accuracy(answer, example["puzzle"], example["solution"])
    return {"prediction": answer, "correct": float(correct), "total": float(total)}


def builtin_rows(split: str) -> list[dict]:
    train, test = sudoku_split()
    if split not in ("train", "test"):
        raise ValueError(f"the built-in Sudoku data has splits 'train' and 'test', not {split!r}")
    return train if split == "train" else test


TASK = Task(
    name="sudoku",
    title="Sudoku",
    description="4x4 Sudoku, reward = share of empty cells filled correctly (built-in puzzles)",
    builtin=builtin_rows,
    default_data={"train": "builtin", "test": "builtin"},
    prepare=prepare,
    prompts={"paper": paper_prompt, "paper_eval": paper_eval_prompt, "instruct": instruct, "compact": compact},
    train_prompt="paper",
    eval_prompt="paper_eval",
    reward_funcs=(sudoku_reward,),
    score=score,
    training={
        "eubo_beta": 1.0,
        "max_steps": 2500,
        "temperature": 0.3,
        "per_device_train_batch_size": 3,
        "gradient_accumulation_steps": 4,
    },
)
