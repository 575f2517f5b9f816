"""Countdown: combine the given numbers with + - * / into an expression equal to a target.

Data: RL on ``Jiayi-Pan/Countdown-Tasks-3to4`` (train split, columns ``target`` and ``nums``), keeping its
three-number problems as the paper does. The paper evaluates on 256 three-number problems; they are not on the
Hub, so the built-in test split is 256 procedurally generated problems (`generate_problems`): three numbers in
1..100 and a target in 1..100 reached by a known expression, seeded, and disjoint from the built-in training
problems. A local copy of other problems loads with ``data=`` (columns ``target``/``nums``, or ``input`` = ``"a,b,c"``
and ``output`` = target).

Reward (`countdown_reward`): 1.0 when the expression in the last ``<answer>...</answer>`` uses each given number
exactly once and evaluates to the target (|difference| < 1e-5); 0.1 when it is a valid expression that is wrong or
uses other numbers; 0.0 without answer tags or when their content is not a valid expression (empty, malformed,
other operators or names, huge, division by zero). The reference pays 0.1 for anything inside answer tags; a
well-formed but wrong expression is the only near miss worth rewarding here.

Expressions are never passed to ``eval``: `evaluate_expression` tokenises and parses them with a small grammar
(numbers, ``+ - * /``, parentheses, unary signs) in exact rational arithmetic, and rejects anything else (``**``,
``//``, names, too long or too deeply nested input, division by zero) in microseconds.

Evaluation: the expression is the last ``\\boxed{}`` of the completion, else its answer tags; LaTeX operators
(``\\times``, ``\\cdot``, ``\\div``) are read as ``*`` and ``/`` and an ``= target`` suffix is dropped.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Any

from .base import HubSource, Task, completion_text
from .formats import REASONING_FORMAT_PROMPT, REASONING_PREFILL, last_boxed, last_tagged_answer

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
#: Deepest parenthesis / unary-sign nesting accepted.
MAX_DEPTH = 32
#: Largest magnitude of a literal (digits); keeps exact arithmetic on short input cheap.
MAX_LITERAL_DIGITS = 12

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|(.))")

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


class _Reject(Exception):
    """The text is not an expression we evaluate."""


class _Parser:
    """Recursive descent over ``expr := term (('+'|'-') term)*``, ``term := unary (('*'|'/') unary)*``,
    ``unary := ('+'|'-') unary | '(' expr ')' | number``."""

    def __init__(self, text: str):
        self.tokens: list[tuple[str, str]] = []
        for match in _TOKEN.finditer(text):
            number, symbol = match.groups()
            if number is not None:
                if len(number.replace(".", "")) > MAX_LITERAL_DIGITS:
                    raise _Reject("literal too long")
                self.tokens.append(("num", number))
            elif symbol is not None and not symbol.isspace():
                if symbol not in "+-*/()":
                    raise _Reject(f"unexpected {symbol!r}")
                self.tokens.append(("op", symbol))
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise _Reject("unexpected end")
        token = self.tokens[self.position]
        self.position += 1
        return token

    def parse(self) -> Fraction:
        if not self.tokens:
            raise _Reject("empty")
        value = self.expr(0)
        if self.position != len(self.tokens):
            raise _Reject("trailing input")
        return value

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            operator = self.take()[1]
            right = self.term(depth)
            value = value + right if operator == "+" else value - right
        return value

    def term(self, depth: int) -> Fraction:
        value = self.unary(depth)
        while self.peek() in ("*", "/"):
            operator = self.take()[1]
            if self.peek() in ("*", "/"):
                raise _Reject("'**' and '//' are not arithmetic operators here")
            right = self.unary(depth)
            if operator == "*":
                value = value * right
            elif right == 0:
                raise _Reject("division by zero")
            else:
                value = value / right
        return value

    def unary(self, depth: int) -> Fraction:
        if depth > MAX_DEPTH:
            raise _Reject("nested too deeply")
        kind, text = self.take()
        if kind == "num":
            return Fraction(text)
        if text in ("+", "-"):
            value = self.unary(depth + 1)
            return value if text == "+" else -value
        if text == "(":
            value = self.expr(depth + 1)
            if self.take() != ("op", ")"):
                raise _Reject("unbalanced parenthesis")
            return value
        raise _Reject(f"unexpected {text!r}")


def evaluate_expression(text: str) -> Fraction | None:
    """The exact value of an arithmetic expression over numbers, ``+ - * /``, parentheses and unary signs.

    None for anything else: other characters or operators (``**``, ``//``, ``%``, names), malformed input,
    division by zero, more than `MAX_EXPRESSION_LENGTH` characters or `MAX_DEPTH` levels of nesting.
    """
    if len(text) > MAX_EXPRESSION_LENGTH:
        return None
    try:
        return _Parser(text).parse()
    except _Reject:
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


def _is_test_problem(nums: Sequence[int], target: int) -> bool:
    """One problem in eight (by a hash of its sorted numbers and target) belongs to the test side, never to train."""
    key = ",".join(map(str, sorted(nums))) + f"->{target}"
    return hashlib.sha256(key.encode()).digest()[0] % 8 == 0


def _random_solution(nums: list[int], rng: random.Random) -> tuple[str, int]:
    """A random expression using every number once (random order, operators, bracketing) and its value.

    Divisions are only drawn where they are exact, so every intermediate value is an integer.
    """
    items = [(str(n), n) for n in nums]
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
) -> list[dict]:
    """``count`` distinct Countdown problems ``{"target", "nums", "solution"}`` with a known solution.

    Numbers are drawn uniformly from 1..``max_number``; a random expression over them (each used once) gives the
    target, kept when it is an integer in 1..``max_target``. Problems are assigned to the train or test side by a
    hash of (sorted numbers, target), so the two sides never share a problem whatever ``count`` and ``seed``; the
    same arguments always give the same list.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"countdown-{split}-{seed}-{num_numbers}-{max_number}-{max_target}")
    rows, seen = [], set()
    while len(rows) < count:
        nums = [rng.randint(1, max_number) for _ in range(num_numbers)]
        solution, value = _random_solution(list(nums), rng)
        if not 1 <= value <= max_target:
            continue
        target = value
        key = (tuple(sorted(nums)), target)
        if key in seen or _is_test_problem(nums, target) != (split == "test"):
            continue
        seen.add(key)
        rows.append({"target": target, "nums": nums, "solution": solution})
    return rows


#: Sizes of the built-in splits: the paper evaluates on 256 problems.
BUILTIN_SIZES = {"train": 20000, "test": 256}


@lru_cache(maxsize=4)
def _builtin(split: str) -> tuple[dict, ...]:
    return tuple(generate_problems(BUILTIN_SIZES.get(split, 256), split))


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
    return {"target": int(target), "nums": _numbers(nums)}


def train_prompt(example: dict) -> list[dict]:
    """The paper's RL prompt (format instruction, then the numbers, the target and an example answer)."""
    content = (
        f"{REASONING_FORMAT_PROMPT}\nUsing only the numbers {list(example['nums'])}, create an arithmetic expression "
        f"that evaluates to exactly {example['target']}. You must use all numbers from the list, and each number must "
        "be used exactly once. You may use the operations +, -, *, and / as needed. After reasoning, provide only your "
        "final expression inside <answer></answer> tags without including an equals sign or the target number. For "
        "example, if the numbers are [2, 3, 4] and the target is 5, a valid answer is: <answer>\n2*4-3\n</answer>"
    )
    return [{"role": "user", "content": content}]


def eval_prompt(example: dict) -> list[dict]:
    """The paper's evaluation prompt: instruction, ``Numbers: [...]`` and ``Target: t``; reply opened by a tag."""
    question = f"Numbers: {list(example['nums'])}\nTarget: {example['target']}"
    return [
        {"role": "user", "content": EVAL_INSTRUCTION + "\n\n" + question},
        {"role": "assistant", "content": REASONING_PREFILL},
    ]


def compact_prompt(example: dict) -> str:
    """``"30 100 93 -> 23:"``: short enough for the tiny character-level model."""
    return " ".join(map(str, example["nums"])) + f" -> {example['target']}:"


TASK = Task(
    name="countdown",
    title="Countdown",
    description="reach a target with + - * / over three numbers (Jiayi-Pan/Countdown-Tasks-3to4; built-in test)",
    hub={"train": HubSource("Jiayi-Pan/Countdown-Tasks-3to4", None, "train")},
    builtin=builtin_rows,
    default_data={"train": "hub", "test": "builtin"},
    prepare=prepare,
    keep=lambda example: len(example["nums"]) == 3,
    prompts={"train": train_prompt, "eval": eval_prompt, "compact": compact_prompt},
    train_prompt="train",
    eval_prompt="eval",
    reward_funcs=(countdown_reward,),
    score=score,
    training={"eubo_beta": 1.5, "max_steps": 6000, "temperature": 0.9},
)
