"""The SPG paper's own grading rules, for ``task.score(text, example, grader="paper")``.

The paper's accuracies (Table 1) come from its evaluation scripts (facebookresearch/SPG, commit ``a1c7120``:
``eval/parse_and_get_acc.py`` with the helpers of ``eval/parser_helper.py`` and ``eval/parsers.py``), which read
the generation as the reference decodes it: all ``gen_length`` tokens, special tokens kept (``<|eot_id|>``,
``<|endoftext|>``, ...). This module reimplements their verdicts, quirks included, so that accuracies can be
compared with the paper's item for item; ``tests/fixtures/paper_grader`` holds completions with the verdicts the
reference code itself gave, and ``tests/test_paper_grader.py`` checks every one.

Each ``*_paper_score(text, example)`` returns ``{"prediction", "correct", "total"}`` like the tasks' own (strict)
rules; ``prediction`` is what the reference reports as the extracted answer. Where the reference departs from the
strict rules:

GSM8K (`gsm8k_paper_score`):
  * the gold answer is read with ``\\$?[\\d,]+(\\.\\d+)?`` after ``####``: a negative gold answer has none, so the
    problem can never be answered correctly;
  * the answer is the first ``\\boxed{...}`` (content up to the first ``}``, on one line) holding a number
    (``float`` of the whole content, else its first number), else the first ``<answer>...</answer>`` pair (its
    ``float``, else its last number), else the text after the last ``<answer>`` up to a ``</answer>`` (the whole
    text without one): its ``float``, else its last number;
  * a comma is no thousands separator: ``\\boxed{1,300}`` reads 1, ``<answer>1,300</answer>`` reads 300;
  * ``float`` accepts ``1e3``, ``1_000``, ``inf``, ``nan`` and non-ASCII digits.

MATH500 (`math500_paper_score`):
  * the answer is the content of the last ``\\boxed{...}`` (balanced braces); with ``\\boxed `` (a space) anywhere,
    the text after its last occurrence up to a ``$``; without ``\\boxed``, a last ``\\fbox{...}`` is kept with its
    command; without any box, the whole text (never equal to a gold answer once special tokens follow it);
  * only an empty or unclosed box falls back to the first ``<answer>...</answer>`` pair;
  * equivalence is the string normaliser of the MATH benchmark's original code (`paper_equivalent`), not a
    symbolic check: ``\\frac{3}{24}`` and ``\\frac{1}{8}`` differ, ``0.5`` and ``\\frac12`` agree; where the
    normaliser fails (a second ``\\text{ ``, a dangling ``\\sqrt`` or ``\\frac``, one ``/`` between non-integers)
    the raw strings are compared.

Countdown (`countdown_paper_score`):
  * the expression is taken as for MATH (last box, else the whole text) and only an unclosed box falls back to
    the first answer tags; so without a box the whole text is read, and its first ``expression = number`` counts;
  * ``\\div``, ``\\times``, ``\\cdot`` become ``/``, ``*``, ``*``; the first run of ``[0-9+-*/() ]`` followed by
    ``=`` and a number is kept;
  * the integers written must be the given numbers, each once; the expression is then computed with Python's own
    arithmetic (so ``**`` and ``//`` count, ``/`` is a float division), any error or other character counting as
    wrong, and it is correct within 1e-5 of the target. A power that would exceed `MAX_POWER_BITS` bits counts as
    wrong (the reference would spend unbounded time and memory on it).

Sudoku (`sudoku_paper_score`):
  * the grid is the first of five patterns that finds something: digits in a code fence after ``<answer>``; the
    text after ``<answer>`` up to ``<|eot_id|>``, ``<|endoftext|>`` or ``</answer>``; the text after
    ``</answer>`` up to one of those tokens or the end; 16 digits before a ``</answer>``; 16 digits as a word;
  * whitespace is removed and every other character kept (so ``[``, ``,`` or letters shift the cells), then the
    grid is padded with ``0`` or cut to 16 characters; the score is the correct empty cells over the empty cells.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import warnings
from collections.abc import Sequence

from .formats import first_tagged_answer

__all__ = [
    "MAX_POWER_BITS",
    "countdown_paper_prediction",
    "countdown_paper_score",
    "gsm8k_paper_gold",
    "gsm8k_paper_prediction",
    "gsm8k_paper_score",
    "math500_paper_prediction",
    "math500_paper_score",
    "paper_arithmetic",
    "paper_boxed",
    "paper_equivalent",
    "paper_normalize",
    "sudoku_paper_prediction",
    "sudoku_paper_score",
]


def paper_boxed(text: str) -> str | None:
    """What the reference reads as the boxed answer of ``text``; None where its extraction raises.

    * ``"\\boxed "`` (with a space) anywhere: the text after its last occurrence, up to the first ``$``;
    * else from the last ``\\boxed`` (or, without one, the last ``\\fbox``) to the first ``}`` that closes the
      braces opened since; ``\\boxed{x}`` gives ``x``, any other span (``\\fbox{x}``, ``\\boxed\\n{x}``) itself;
      None when the braces never close;
    * no box at all: the whole text.
    """
    if "\\boxed " in text:
        return text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return text
    depth = 0
    for end in range(start, len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
            if depth == 0:
                span = text[start : end + 1]
                return span[len("\\boxed{") : -1] if span.startswith("\\boxed{") else span
    return None


# ---------------------------------------------------------------------------------------------------------------------
# GSM8K

_GOLD = re.compile(r"\s*\$?([\d,]+(?:\.\d+)?)")
_BOXED_ONE_LINE = re.compile(r"\\boxed{(.*?)}")
_NUMBER = re.compile(r"-?\d+\.?\d*")
_DOTS = re.compile(r"\.+")


def gsm8k_paper_gold(answer: str) -> float | None:
    """The reference's gold number from the text after ``####`` (our ``answer`` column): an optional ``$``, then
    digits and commas (commas dropped) with an optional decimal part; None when there is none (a negative answer)."""
    found = _GOLD.match(answer)
    if found is None:
        return None
    try:
        return float(found.group(1).replace(",", ""))
    except ValueError:  # only commas
        return None


def _gsm_number(text: str, pick: int) -> float | None:
    """``float(text)``; failing that the first (``pick=0``) or last (``pick=-1``) ``-?\\d+\\.?\\d*`` in it."""
    try:
        return float(text)
    except ValueError:
        numbers = _NUMBER.findall(text)
        if not numbers:
            return None
        try:
            return float(numbers[pick])
        except ValueError:
            return None


def gsm8k_paper_prediction(text: str) -> float | None:
    """The reference's GSM8K answer (see the module docstring)."""
    for content in _BOXED_ONE_LINE.findall(text):
        content = content.strip()
        if content and not _DOTS.fullmatch(content):
            value = _gsm_number(content, 0)
            if value is not None:
                return value
    tagged = first_tagged_answer(text)
    if tagged:
        value = _gsm_number(tagged, -1)
        if value is not None:
            return value
    tail = text.split("<answer>")[-1].split("</answer>")[0].strip()
    return _gsm_number(tail, -1) if tail else None


def gsm8k_paper_score(text: str, example: dict) -> dict:
    """GSM8K as the paper grades it: the parsed number equals the gold number exactly (``example["answer"]``)."""
    prediction = gsm8k_paper_prediction(text)
    gold = gsm8k_paper_gold(str(example["answer"]))
    correct = prediction is not None and gold is not None and prediction == gold
    return {"prediction": prediction, "correct": float(correct), "total": 1.0}


# ---------------------------------------------------------------------------------------------------------------------
# MATH500


class _NormalizerFailure(Exception):
    """Where the reference's normaliser raises; it then compares the raw strings."""


_CLEANUPS = (
    ("\n", ""),
    ("\\!", ""),
    ("\\\\", "\\"),
    ("tfrac", "frac"),
    ("dfrac", "frac"),
    ("\\left", ""),
    ("\\right", ""),
    ("^{\\circ}", ""),
    ("^\\circ", ""),
    ("\\$", ""),
)


def _drop_units(text: str) -> str:
    if "\\text{ " not in text:
        return text
    before, *after = text.split("\\text{ ")
    if len(after) != 1:
        raise _NormalizerFailure("more than one '\\text{ '")
    return before


def _brace_sqrt(text: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``: a one-character argument gets braces."""
    head, *pieces = text.split("\\sqrt")
    out = [head]
    for piece in pieces:
        if not piece:
            raise _NormalizerFailure("'\\sqrt' without an argument")
        out.append("\\sqrt" + (piece if piece.startswith("{") else "{" + piece[0] + "}" + piece[1:]))
    return "".join(out)


def _brace_fracs(text: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}``; a one-character rest leaves the text
    as it was."""
    head, *pieces = text.split("\\frac")
    out = [head]
    for piece in pieces:
        if not piece:
            raise _NormalizerFailure("'\\frac' without arguments")
        if piece.startswith("{"):
            out.append("\\frac" + piece)
            continue
        if len(piece) < 2:
            return text
        numerator, second, rest = piece[0], piece[1], piece[2:]
        if second == "{":
            out.append("\\frac{" + numerator + "}" + second + rest)
        else:
            out.append("\\frac{" + numerator + "}{" + second + "}" + rest)
    return "".join(out)


def _slash_to_frac(text: str) -> str:
    """``a/b`` of two canonical integers -> ``\\frac{a}{b}``; one ``/`` between non-integers is a failure."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        numerator, denominator = int(parts[0]), int(parts[1])
    except ValueError as error:
        raise _NormalizerFailure("'/' between non-integers") from error
    if text != f"{numerator}/{denominator}":
        return text
    return f"\\frac{{{numerator}}}{{{denominator}}}"


def paper_normalize(answer: str) -> str:
    """The reference's answer normaliser (the MATH benchmark's ``strip_string``); raises `_NormalizerFailure`
    where it would raise."""
    text = answer
    for old, new in _CLEANUPS:
        text = text.replace(old, new)
    text = _drop_units(text)
    text = text.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text.startswith("."):
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "x = 3" -> "3"
        text = sides[1]
    if "\\sqrt" in text:
        text = _brace_sqrt(text)
    text = _brace_fracs(text.replace(" ", ""))
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _slash_to_frac(text)


def paper_equivalent(prediction: str, gold: str) -> bool:
    """The reference's equivalence: equal normalised strings, or equal raw strings where normalising fails."""
    try:
        return paper_normalize(prediction) == paper_normalize(gold)
    except _NormalizerFailure:
        return prediction == gold


def math500_paper_prediction(text: str) -> str | None:
    """The reference's MATH answer: `paper_boxed`, and only when that is empty or None the first answer tags."""
    prediction = paper_boxed(text)
    if not prediction:
        tagged = first_tagged_answer(text)
        if tagged is not None:
            prediction = tagged
    return prediction


def math500_paper_score(text: str, example: dict) -> dict:
    """MATH500 as the paper grades it: `paper_equivalent` with the gold ``example["answer"]``."""
    prediction = math500_paper_prediction(text)
    correct = prediction is not None and paper_equivalent(prediction, str(example["answer"]))
    return {"prediction": prediction, "correct": float(correct), "total": 1.0}


# ---------------------------------------------------------------------------------------------------------------------
# Countdown

#: Largest result of a ``**`` computed (in bits); a larger one counts as an error.
MAX_POWER_BITS = 1 << 20

_EXPRESSION_CHARACTERS = re.compile(r"[\d+\-*/().\s]+$")
_EQUATION = re.compile(r"([0-9+\-*/() ]+)=[0-9. ]+")
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _power(base, exponent):
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > MAX_POWER_BITS:
            raise OverflowError("power too large")
    return base**exponent


def _compute(node: ast.AST):
    """Python's value of an expression node of numbers, ``+ - * / // **`` and signs; raises for anything else."""
    signs = []
    while isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        signs.append(_UNARY[type(node.op)])
        node = node.operand
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value
    elif isinstance(node, ast.BinOp) and type(node.op) in (*_BINARY, ast.Pow):
        left, right = _compute(node.left), _compute(node.right)
        value = _power(left, right) if isinstance(node.op, ast.Pow) else _BINARY[type(node.op)](left, right)
    else:
        raise TypeError(f"not arithmetic: {type(node).__name__}")
    for sign in reversed(signs):
        value = sign(value)
    return value


def paper_arithmetic(expression: str) -> int | float | complex:
    """The reference's value of an expression: Python's arithmetic on it when it holds only digits,
    ``+ - * / ( ) .`` and whitespace; ``inf`` for anything else and for any error."""
    if not _EXPRESSION_CHARACTERS.match(expression):
        return math.inf
    source = expression.strip()
    try:
        with warnings.catch_warnings():  # "2(3)" compiles with a warning, then fails to run
            warnings.simplefilter("ignore", SyntaxWarning)
            compile(source, "<expression>", "eval")  # what Python refuses to compile, the reference could not eval
        return _compute(ast.parse(source, mode="eval").body)
    except Exception:  # the reference counts every failure as inf
        return math.inf


def countdown_paper_prediction(text: str) -> str:
    """The reference's Countdown expression (see the module docstring)."""
    expression = paper_boxed(text)
    if expression is None:
        tagged = first_tagged_answer(text)
        expression = text if tagged is None else tagged
    expression = expression.replace("\\div", "/").replace("\\times", "*").replace("\\cdot", "*")
    found = _EQUATION.search(expression)
    return found.group(1).strip() if found else expression


def countdown_paper_score(text: str, example: dict) -> dict:
    """Countdown as the paper grades it: the given numbers, each once, reaching the target within 1e-5."""
    expression = countdown_paper_prediction(text)
    numbers: Sequence[int] = example["nums"]
    correct = False
    if sorted(int(n) for n in re.findall(r"\d+", expression)) == sorted(int(n) for n in numbers):
        value = paper_arithmetic(expression)
        correct = abs(value - example["target"]) < 1e-5
    return {"prediction": expression, "correct": float(correct), "total": 1.0}


# ---------------------------------------------------------------------------------------------------------------------
# Sudoku

_END = r"(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)"
_GRID_PATTERNS = tuple(
    re.compile(pattern, re.DOTALL)
    for pattern in (
        r"<answer>.*?```\s*([\d\s]+)```",
        r"<answer>(.*?)" + _END,
        r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)",
        r".*?(\d{16})\s*</answer>",
        r"\b(\d{16})\b",
    )
)


def sudoku_paper_prediction(text: str) -> str:
    """The reference's grid: the first pattern's non-blank find, whitespace removed, ``0``-padded or cut to 16
    characters; ``""`` when no pattern finds anything."""
    for pattern in _GRID_PATTERNS:
        found = pattern.search(text)
        if found and found.group(1).strip():
            grid = re.sub(r"\s", "", found.group(1))
            return grid[:16].ljust(16, "0")
    return ""


def sudoku_paper_score(text: str, example: dict) -> dict:
    """Sudoku as the paper grades it: correct cells among the puzzle's empty ones, out of the empty ones."""
    puzzle, solution = str(example["puzzle"]), str(example["solution"])
    grid = sudoku_paper_prediction(text)
    empty = [cell for cell, digit in enumerate(puzzle) if digit == "0"]
    correct = sum(grid[cell] == solution[cell] for cell in empty) if grid else 0
    return {"prediction": grid, "correct": float(correct), "total": float(len(empty))}
