"""Countdown: combine the given numbers with + - * / into an expression equal to a target.

Data: RL on ``Jiayi-Pan/Countdown-Tasks-3to4`` (train split, columns ``target`` and ``nums``), keeping its
three-number problems as the paper does. The test split is the paper's: its 256 three-number problems
(``countdown_cd3_test.jsonl`` of the SPG code, shipped in `trl_spg.tasks.data`; ``data="paper"``, the default).
``data="builtin"`` gives procedural splits instead (`generate_problems`): three numbers in 1..100 and a target in
1..100 reached by a known expression, seeded; 20,000 training and 256 test problems, whose number sets never
occur in training. A local copy of other problems loads with ``data=`` (columns ``target``/``nums``, or ``input`` =
``"a,b,c"`` and ``output`` = target).

Reward (`countdown_reward`): 1.0 when the expression in the last ``<answer>...</answer>`` uses each given number
exactly once and evaluates to the target (|difference| < 1e-5); 0.1 when it is a valid expression that is wrong or
uses other numbers; 0.0 without answer tags or when their content is not a valid expression (empty, malformed,
other operators or names, huge, division by zero). The reference pays 0.1 for anything inside answer tags; a
well-formed but wrong expression is the only near miss worth rewarding here.

Expressions are never passed to ``eval``: `evaluate_expression` parses them with ``ast`` and evaluates only
numbers, ``+ - * /``, parentheses and unary signs, in exact rational arithmetic; anything else (``**``, ``//``,
names, exponents, too long or too deeply nested input, division by zero) is rejected in microseconds.

Evaluation (``grader="strict"``): the expression is the last ``\\boxed{}`` of the completion, else its answer tags;
LaTeX operators (``\\times``, ``\\cdot``, ``\\div``) are read as ``*`` and ``/`` and an ``= target`` suffix is dropped.
``grader="paper"`` is the paper's own rule (`trl_spg.tasks.paper_grader.countdown_paper_score`): without a box it
reads the whole text, and it computes with Python's arithmetic (``**`` and ``//`` included).
"""

from __future__ import annotations

import ast
import hashlib
import operator
import random
import re
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Any

from .base import HubSource, Task, completion_text
from .data import packaged_rows
from .formats import REASONING_FORMAT_PROMPT, chat_prompt, last_boxed, last_tagged_answer
from .paper_grader import countdown_paper_score

__all__ = [
    "TASK",
    "countdown_reward",
    "evaluate_expression",
    "generate_problems",
    "parse_prediction",
    "reward_value",
    "score",
    "uses_numbers",
]

#: Longest expression evaluated (characters); real answers with three or four numbers are far shorter.
MAX_EXPRESSION_LENGTH = 256
#: Most parentheses and unary signs around a number.
MAX_DEPTH = 32
#: Largest magnitude of a literal (digits); keeps exact arithmetic on short input cheap.
MAX_LITERAL_DIGITS = 12

#: The paper's evaluation instruction for Countdown (its exact text, including the missing space before "Respond").
EVAL_INSTRUCTION = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the provided target "
    "number. You may use the operations +, -, *, and / as needed, but each number must be used exactly once. Think "
    "step-by-step. After reasoning, provide only your final expression inside \\boxed{} tags without including an "
    "equals sign or the target number. For example: \\boxed{a + b * c}Respond in the following format:\n<reasoning>\n"
    "Your reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>"
)


# ---------------------------------------------------------------------------------------------------------------------
# Safe arithmetic


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_SIGNS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CHARACTERS = re.compile(r"[\d.+\-*/()\s]*")


def _value(node: ast.AST, text: str, signs: int) -> Fraction:
    """Exact value of an allowed node; ``signs`` counts the unary signs above it. ValueError for anything else."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_value(node.left, text, signs), _value(node.right, text, signs))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _SIGNS and signs < MAX_DEPTH:
        return _SIGNS[type(node.op)](_value(node.operand, text, signs + 1))
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        before = text[: node.col_offset]  # nesting = unary signs + open parentheses around the literal
        if signs + before.count("(") - before.count(")") <= MAX_DEPTH:
            return Fraction(ast.get_source_segment(text, node))  # from the text: "0.1" is exactly 1/10
    raise ValueError("not an arithmetic expression over numbers")


def evaluate_expression(text: str) -> Fraction | None:
    """The exact value of an arithmetic expression over numbers, ``+ - * /``, parentheses and unary signs.

    None for anything else: other characters or operators (``**``, ``//``, ``%``, names, exponents), malformed
    input, division by zero, more than `MAX_EXPRESSION_LENGTH` characters, a literal of more than
    `MAX_LITERAL_DIGITS` digits, or more than `MAX_DEPTH` parentheses and unary signs around a number.
    """
    if len(text) > MAX_EXPRESSION_LENGTH or not _CHARACTERS.fullmatch(text):
        return None
    if any(len(literal.replace(".", "")) > MAX_LITERAL_DIGITS for literal in re.findall(r"[\d.]+", text)):
        return None
    # One ASCII line for `ast`: any whitespace is a space, any decimal digit an ASCII one, "007" is 7.
    text = re.sub(r"\d", lambda digit: str(int(digit[0])), " ".join(text.split()))
    text = re.sub(r"(?<![\d.])0+(?=\d)", "", text)
    try:
        return _value(ast.parse(text, mode="eval").body, text, 0)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return None


def uses_numbers(expression: str, numbers: Sequence[int]) -> bool:
    """Whether the integers written in ``expression`` are exactly ``numbers``, each once (any order)."""
    written = re.findall(r"\d+", expression)
    if len(written) != len(numbers) or any(len(n) > MAX_LITERAL_DIGITS for n in written):
        return False
    return sorted(int(n) for n in written) == sorted(int(n) for n in numbers)


def reward_value(text: str, target: int | float, numbers: Sequence[int]) -> float:
    """The reward of one completion text (see the module docstring)."""
    expression = last_tagged_answer(text)
    value = evaluate_expression(expression) if expression is not None else None
    if value is None:
        return 0.0
    correct = uses_numbers(expression, numbers) and abs(float(value) - float(target)) < 1e-5
    return 1.0 if correct else 0.1


def countdown_reward(
    completions: Sequence[Any], target: Sequence[int], nums: Sequence[Sequence[int]], **kwargs
) -> list[float]:
    """TRL reward: 1.0 correct, 0.1 a valid but wrong expression, 0.0 none (columns ``target`` and ``nums``)."""
    return [reward_value(completion_text(c), t, n) for c, t, n in zip(completions, target, nums, strict=True)]


def parse_prediction(text: str) -> str | None:
    """The evaluation expression: last ``\\boxed{}``, else the last answer tags; LaTeX operators made plain."""
    expression = last_boxed(text)
    if expression is None:
        expression = last_tagged_answer(text)
    if expression is None:
        return None
    expression = expression.replace("\\times", "*").replace("\\cdot", "*").replace("\\div", "/")
    match = re.search(r"([0-9+\-*/() ]+)=[0-9. ]+", expression)
    return (match.group(1) if match else expression).strip()


def score(completion: str, example: dict) -> dict:
    """Evaluation rule: correct when the expression uses each number once and equals the target."""
    expression = parse_prediction(completion)
    correct = False
    if expression is not None and uses_numbers(expression, example["nums"]):
        value = evaluate_expression(expression)
        correct = value is not None and abs(float(value) - float(example["target"])) < 1e-5
    return {"prediction": expression, "correct": float(correct), "total": 1.0}


# ---------------------------------------------------------------------------------------------------------------------
# Procedural problems


def _is_test_numbers(nums: Sequence[int]) -> bool:
    """One set of numbers in eight (by a hash of the sorted numbers) belongs to the test side, never to train.

    Keyed by the numbers alone, not the target: a held-out problem's numbers never occur in any training problem,
    so a model trained on one side cannot have memorised the other's number sets with another target.
    """
    key = ",".join(map(str, sorted(nums)))
    return hashlib.sha256(key.encode()).digest()[0] % 8 == 0


def _random_solution(nums: list[int], rng: random.Random, shuffle: bool = True) -> tuple[str, int]:
    """A random expression using every number once (random order unless ``shuffle`` is False, random operators and
    bracketing) and its value.

    Divisions are only drawn where they are exact, so every intermediate value is an integer.
    """
    items = [(str(n), n) for n in nums]
    if shuffle:
        rng.shuffle(items)
    while len(items) > 1:
        i = rng.randrange(len(items) - 1)
        (left, a), (right, b) = items[i], items[i + 1]
        operators = "+-*/" if b != 0 and a % b == 0 else "+-*"
        operator = rng.choice(operators)
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[operator]
        items[i : i + 2] = [(f"({left} {operator} {right})", value)]
    text, value = items[0]
    return text[1:-1] if text.startswith("(") else text, value


def generate_problems(
    count: int,
    split: str = "train",
    seed: int = 0,
    num_numbers: int = 3,
    max_number: int = 100,
    max_target: int = 100,
    shuffle: bool = True,
) -> list[dict]:
    """``count`` distinct Countdown problems ``{"target", "nums", "solution"}`` with a known solution.

    Numbers are drawn uniformly from 1..``max_number``; a random expression over them (each used once) gives the
    target, kept when it is an integer in 1..``max_target``. Problems are assigned to the train or test side by a
    hash of their sorted numbers, so the two sides never share a set of numbers (let alone a problem) whatever
    ``count`` and ``seed``; the same arguments always give the same list. With ``shuffle`` False the expression
    takes the numbers in the order the problem lists them, so every problem has a solution in that order (an easier
    problem: the built-in split's, for a policy too small to search over orders).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(
        f"countdown-{split}-{seed}-{num_numbers}-{max_number}-{max_target}" + ("" if shuffle else "-ordered")
    )
    rows, seen = [], set()
    while len(rows) < count:
        nums = [rng.randint(1, max_number) for _ in range(num_numbers)]
        solution, value = _random_solution(list(nums), rng, shuffle)
        if not 1 <= value <= max_target:
            continue
        target = value
        key = (tuple(sorted(nums)), target)
        if key in seen or _is_test_numbers(nums) != (split == "test"):
            continue
        seen.add(key)
        rows.append({"target": target, "nums": nums, "solution": solution})
    return rows


#: Sizes of the built-in splits: 1,024 test problems (the paper's test set has 256) for smaller standard errors.
BUILTIN_SIZES = {"train": 10000, "test": 1024}
#: The built-in problems: numbers in 1..20, each problem solvable with its numbers in the listed order. A policy of
#: a million parameters learns these to about 30 % greedy accuracy in eight minutes of SFT, and the paper's range
#: (1..100, any order) to about 10 % (docs/countdown.md).
BUILTIN_PROBLEMS = {"max_number": 20, "shuffle": False}


@lru_cache(maxsize=4)
def _builtin(split: str) -> tuple[dict, ...]:
    return tuple(generate_problems(BUILTIN_SIZES.get(split, 256), split, **BUILTIN_PROBLEMS))


def builtin_rows(split: str) -> list[dict]:
    return [dict(row) for row in _builtin(split)]


# ---------------------------------------------------------------------------------------------------------------------
# Rows and prompts


def _numbers(value: Any) -> list[int]:
    if isinstance(value, str):  # "a,b,c" (the paper's evaluation file) or "[a, b, c]" (a CSV cell)
        return [int(n) for n in re.findall(r"-?\d+", value)]
    return [int(n) for n in value]


def prepare(row: dict) -> dict:
    nums = row["nums"] if "nums" in row else row["numbers"] if "numbers" in row else row["input"]
    target = row["target"] if "target" in row else row["output"]
    nums = _numbers(nums)
    # Problems over the same numbers (other targets) succeed or fail together more often than others: the cluster
    # of the standard errors.
    return {"target": int(target), "nums": nums, "number_set": " ".join(map(str, sorted(nums)))}


def train_prompt(example: dict) -> list[dict]:
    """The paper's RL prompt (format instruction, then the numbers, the target and an example answer)."""
    content = (
        f"{REASONING_FORMAT_PROMPT}\nUsing only the numbers {list(example['nums'])}, create an arithmetic expression "
        f"that evaluates to exactly {example['target']}. You must use all numbers from the list, and each number must "
        "be used exactly once. You may use the operations +, -, *, and / as needed. After reasoning, provide only your "
        "final expression inside <answer></answer> tags without including an equals sign or the target number. For "
        "example, if the numbers are [2, 3, 4] and the target is 5, a valid answer is: <answer>\n2*4-3\n</answer>"
    )
    return chat_prompt(content)


def eval_prompt(example: dict) -> list[dict]:
    """The paper's evaluation prompt: instruction, ``Numbers: [...]`` and ``Target: t``; reply opened by a tag."""
    question = f"Numbers: {list(example['nums'])}\nTarget: {example['target']}"
    return chat_prompt(EVAL_INSTRUCTION + "\n\n" + question, prefill=True)


def compact_prompt(example: dict) -> str:
    """``"30 100 93 -> 23:"``: short enough for the tiny character-level model."""
    return " ".join(map(str, example["nums"])) + f" -> {example['target']}:"


def paper_rows(split: str):
    """The paper's data: its 256 test problems (shipped); it trains on the Hub dataset."""
    if split != "test":
        raise ValueError(f"The paper's Countdown data shipped here is the test split, not {split!r}; train on 'hub'.")
    return packaged_rows("countdown_cd3_test.jsonl")


TASK = Task(
    name="countdown",
    title="Countdown",
    description="reach a target with + - * / over three numbers (Jiayi-Pan/Countdown-Tasks-3to4; the paper's test)",
    hub={"train": HubSource("Jiayi-Pan/Countdown-Tasks-3to4", None, "train")},
    paper=paper_rows,
    builtin=builtin_rows,
    default_data={"train": "hub", "test": "paper"},
    prepare=prepare,
    keep=lambda example: len(example["nums"]) == 3,
    prompts={"train": train_prompt, "eval": eval_prompt, "compact": compact_prompt},
    train_prompt="train",
    eval_prompt="eval",
    reward_funcs=(countdown_reward,),
    strict_score=score,
    paper_score=countdown_paper_score,
    cluster_key="number_set",
)
