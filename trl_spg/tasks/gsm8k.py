"""GSM8K: grade-school math word problems with an integer answer.

Data: ``openai/gsm8k`` (config ``main``), columns ``question`` and ``answer`` (a worked solution ending in
``#### N``); the train split (7473) is used for RL and the test split (1319) for evaluation. The gold answer is the
text after ``####``.

Rewards (the reference's five functions, summed with equal weights, at most 3.875 for a perfect completion):
`xml_count_reward` (up to 0.5), `soft_format_reward` (0.5), `strict_format_reward` (0.5), `integer_answer_reward`
(0.5) and `correctness_reward` (2.0, the tagged answer equal to the gold string).

Evaluation (``grader="strict"``): the answer is parsed from ``\\boxed{}`` first, then from the answer tags, then as
the last number of the text, and compared numerically with the gold answer. ``grader="paper"`` is the paper's own
parser (`trl_spg.tasks.paper_grader.gsm8k_paper_score`): commas are not thousands separators there and a negative
gold answer is never matched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .base import HubSource, Task, completion_text
from .formats import (
    REASONING_FORMAT_PROMPT,
    answer_tag_content,
    chat_prompt,
    first_tagged_answer,
    soft_format_reward,
    strict_format_reward,
    xml_count_reward,
)
from .paper_grader import gsm8k_paper_score

__all__ = [
    "TASK",
    "correctness_reward",
    "gold_answer",
    "integer_answer_reward",
    "parse_prediction",
    "score",
]

#: The paper's evaluation instruction for GSM8K (its exact text), followed by the question.
EVAL_INSTRUCTION = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer "
    "in a \\boxed{}. \nRespond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n"
    "\\boxed{...}\n</answer>"
)

_NUMBER = re.compile(r"-?\d+\.?\d*")
# "1,234" -> "1234": commas between digit groups are thousands separators.
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def gold_answer(solution: str) -> str | None:
    """The text after ``####`` in a GSM8K solution, stripped (None without ``####``)."""
    if "####" not in solution:
        return None
    return solution.split("####")[1].strip()


def _to_number(text: str, which: int) -> float | None:
    """``float(text)``, else the first (``which=0``) or last (``which=-1``) number in it, else None."""
    text = _THOUSANDS.sub("", text.strip())
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        numbers = _NUMBER.findall(text)
        return float(numbers[which]) if numbers else None


def parse_prediction(text: str) -> float | None:
    """The evaluation answer: the first ``\\boxed{}`` holding a number, else the first answer tags' number, else the
    last number after the last ``<answer>`` (the whole text when there is none)."""
    for boxed in re.findall(r"\\boxed{(.*?)}", text):
        boxed = boxed.strip()
        if boxed and not re.fullmatch(r"\.+", boxed):
            value = _to_number(boxed, 0)
            if value is not None:
                return value
    tagged = first_tagged_answer(text)
    if tagged:
        value = _to_number(tagged, -1)
        if value is not None:
            return value
    return _to_number(answer_tag_content(text), -1)


def score(completion: str, example: dict) -> dict:
    """Evaluation rule: correct when the parsed number equals the gold answer."""
    prediction = parse_prediction(completion)
    gold = _to_number(example["answer"], -1)
    correct = prediction is not None and gold is not None and prediction == gold
    return {"prediction": prediction, "correct": float(correct), "total": 1.0}


def integer_answer_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """TRL reward: 0.5 when the tagged answer is all digits (``str.isdigit``)."""
    return [0.5 if answer_tag_content(completion_text(c)).isdigit() else 0.0 for c in completions]


def correctness_reward(completions: Sequence[Any], answer: Sequence[str], **kwargs) -> list[float]:
    """TRL reward: 2.0 when the tagged answer equals the gold answer string (column ``answer``)."""
    return [
        2.0 if answer_tag_content(completion_text(c)) == gold else 0.0
        for c, gold in zip(completions, answer, strict=True)
    ]


def prepare(row: dict) -> dict:
    return {"question": row["question"], "answer": gold_answer(row["answer"]) or ""}


def train_prompt(example: dict) -> list[dict]:
    """The paper's RL prompt: the format instruction, a blank line, the question."""
    return chat_prompt(REASONING_FORMAT_PROMPT + "\n\n" + example["question"])


def eval_prompt(example: dict) -> list[dict]:
    """The paper's evaluation prompt, with the reply opened by ``<reasoning>``."""
    return chat_prompt(EVAL_INSTRUCTION + "\n\n" + example["question"], prefill=True)


def compact_prompt(example: dict) -> str:
    """The bare question, for small models without a chat template."""
    return example["question"] + "\n"


TASK = Task(
    name="gsm8k",
    title="GSM8K",
    description="grade-school math word problems (openai/gsm8k)",
    hub={"train": HubSource("openai/gsm8k", "main", "train"), "test": HubSource("openai/gsm8k", "main", "test")},
    default_data={"train": "hub", "test": "hub"},
    prepare=prepare,
    prompts={"train": train_prompt, "eval": eval_prompt, "compact": compact_prompt},
    train_prompt="train",
    eval_prompt="eval",
    reward_funcs=(
        xml_count_reward,
        soft_format_reward,
        strict_format_reward,
        integer_answer_reward,
        correctness_reward,
    ),
    strict_score=score,
    paper_score=gsm8k_paper_score,
)
