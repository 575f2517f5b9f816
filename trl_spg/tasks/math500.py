"""MATH500: competition mathematics with free-form (LaTeX) answers.

Data: RL on ``ankner/math-500`` (train split: the MATH problems outside the MATH500 test set, columns ``problem``
and ``solution``); evaluation on ``HuggingFaceH4/MATH-500`` (test split, 500 problems, columns ``problem``,
``solution``, ``answer``, ``subject``, ``level``, ``unique_id``). The gold answer is the ``answer`` column when
present, else the last ``\\boxed{}`` of the solution.

Rewards: `correctness_reward` (2.0 when the last ``\\boxed{}`` of the completion is equivalent to the gold answer)
and `format_reward` (0.5 when a ``\\boxed{}`` answer sits inside ``<answer>...</answer>``).

Equivalence is decided by `math-verify <https://github.com/huggingface/Math-Verify>`_ (what
``trl.rewards.accuracy_reward`` uses): both sides are parsed to SymPy and compared by value, so ``0.25`` and
``\\frac{1}{4}``, or ``2\\sqrt{2}`` and ``\\sqrt{8}``, are equal. ``docs/tasks.md`` lists where this is more
lenient than the paper's string normaliser.

Evaluation (``grader="strict"``): the answer is the last ``\\boxed{}`` of the completion, else the content of its
answer tags. ``grader="paper"`` is the paper's own rule (`trl_spg.tasks.paper_grader.math500_paper_score`): a string
normaliser instead of math-verify, and the whole text when there is no box.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from .base import HubSource, Task, completion_text
from .formats import REASONING_FORMAT_PROMPT, chat_prompt, first_tagged_answer, last_boxed, last_tagged_answer
from .paper_grader import math500_paper_score

__all__ = ["TASK", "correctness_reward", "equivalent", "format_reward", "gold_answer", "parse_prediction", "score"]

#: The paper's instruction for MATH (its exact text), used by the training prompt after the format instruction.
MATH_INSTRUCTION = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer "
    "in a \\boxed{}. \n\n"
)
#: The paper's evaluation prompt for MATH500 (its exact text, including the stray quote after the format).
EVAL_INSTRUCTION = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer "
    "in a \\boxed{}.\nRespond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n"
    '\\boxed{...}\n</answer>" \n'
)


def gold_answer(row: dict) -> str:
    """The ``answer`` column when present, else the last ``\\boxed{}`` of ``solution`` (empty if there is none)."""
    answer = row.get("answer")
    if answer:
        return str(answer).strip()
    return (last_boxed(row.get("solution") or "") or "").strip()


def _timeouts() -> tuple[int | None, int | None]:
    """math-verify's timeouts rely on ``signal.alarm``, which only works in the main thread."""
    if threading.current_thread() is threading.main_thread():
        return 10, 5
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return None, None


def equivalent(prediction: str | None, gold: str) -> bool:
    """Whether two LaTeX answers are mathematically equal (math-verify); False for a missing prediction."""
    if prediction is None or not prediction.strip() or not gold.strip():
        return False
    try:
        from math_verify import parse, verify
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise ImportError("The MATH500 task needs math-verify: pip install math-verify") from error

    parse_timeout, verify_timeout = _timeouts()
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=parse_timeout)
        predicted = parse(f"\\boxed{{{prediction}}}", parsing_timeout=parse_timeout)
        if not gold_parsed or not predicted:
            return "".join(prediction.split()) == "".join(gold.split())
        return bool(verify(gold_parsed, predicted, timeout_seconds=verify_timeout))
    except Exception:  # a malformed answer is wrong, never a crash of training or evaluation
        return False


def parse_prediction(text: str) -> str | None:
    """The evaluation answer: the last ``\\boxed{}`` of the text, else the first answer tags' content."""
    boxed = last_boxed(text)
    if boxed and boxed.strip():
        return boxed.strip()
    return first_tagged_answer(text)


def score(completion: str, example: dict) -> dict:
    prediction = parse_prediction(completion)
    return {"prediction": prediction, "correct": float(equivalent(prediction, example["answer"])), "total": 1.0}


def correctness_reward(completions: Sequence[Any], answer: Sequence[str], **kwargs) -> list[float]:
    """TRL reward: 2.0 when the completion's last ``\\boxed{}`` equals the gold ``answer`` (math-verify)."""
    return [
        2.0 if equivalent(last_boxed(completion_text(c)), gold) else 0.0
        for c, gold in zip(completions, answer, strict=True)
    ]


def format_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """TRL reward: 0.5 when the last ``<answer>...</answer>`` pair holds a ``\\boxed{}`` answer."""
    rewards = []
    for c in completions:
        tagged = last_tagged_answer(completion_text(c))
        rewards.append(0.5 if tagged is not None and last_boxed(tagged) is not None else 0.0)
    return rewards


def prepare(row: dict) -> dict:
    return {"problem": row["problem"], "answer": gold_answer(row)}


def train_prompt(example: dict) -> list[dict]:
    """The paper's RL prompt: format instruction, blank line, the MATH instruction, the problem."""
    return chat_prompt(REASONING_FORMAT_PROMPT + "\n\n" + MATH_INSTRUCTION + example["problem"])


def eval_prompt(example: dict) -> list[dict]:
    """The paper's evaluation prompt, with the reply opened by ``<reasoning>``."""
    return chat_prompt(EVAL_INSTRUCTION + "\n\n" + example["problem"], prefill=True)


def compact_prompt(example: dict) -> str:
    return example["problem"] + "\n"


TASK = Task(
    name="math500",
    title="MATH500",
    description="competition math, free-form answers (ankner/math-500 for RL, HuggingFaceH4/MATH-500 test)",
    hub={
        "train": HubSource("ankner/math-500", None, "train"),
        "test": HubSource("HuggingFaceH4/MATH-500", None, "test"),
    },
    default_data={"train": "hub", "test": "hub"},
    prepare=prepare,
    prompts={"train": train_prompt, "eval": eval_prompt, "compact": compact_prompt},
    train_prompt="train",
    eval_prompt="eval",
    reward_funcs=(correctness_reward, format_reward),
    strict_score=score,
    paper_score=math500_paper_score,
)
