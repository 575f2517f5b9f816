"""The reasoning / answer tag format shared by GSM8K, MATH500 and Countdown, and its parsing helpers.

Completions are asked to look like ``<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>``. The format
rewards below reproduce the reference implementation's values exactly, quirks included (they are documented in
``docs/tasks.md``): patterns are matched from the start of the completion without ``re.DOTALL``, so a multi-line
reasoning never satisfies the soft or strict format.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .base import completion_text

__all__ = [
    "REASONING_FORMAT_PROMPT",
    "answer_tag_content",
    "chat_prompt",
    "first_tagged_answer",
    "last_boxed",
    "last_tagged_answer",
    "soft_format_reward",
    "strict_format_reward",
    "xml_count",
    "xml_count_reward",
]

#: The format instruction that opens the paper's training prompts for GSM8K, MATH and Countdown (its exact text).
REASONING_FORMAT_PROMPT = (
    "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
)
#: What the evaluation prompts append after the chat template: the assistant's reply starts with this tag.
REASONING_PREFILL = "<reasoning>"

_STRICT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")
_SOFT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")
_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def chat_prompt(content: str, prefill: bool = False) -> list[dict]:
    """One user message; with ``prefill`` an assistant turn opened by `REASONING_PREFILL` follows (evaluation)."""
    prompt = [{"role": "user", "content": content}]
    if prefill:
        prompt.append({"role": "assistant", "content": REASONING_PREFILL})
    return prompt


def answer_tag_content(text: str) -> str:
    """Text between the last ``<answer>`` and the ``</answer>`` after it, stripped (the whole text without tags)."""
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def first_tagged_answer(text: str) -> str | None:
    """Stripped content of the first complete ``<answer>...</answer>`` pair, or None."""
    match = _TAGGED.search(text)
    return match.group(1).strip() if match else None


def last_tagged_answer(text: str) -> str | None:
    """Stripped content of the last non-overlapping ``<answer>...</answer>`` match, or None."""
    matches = _TAGGED.findall(text)
    return matches[-1].strip() if matches else None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, or of ``\\boxed x``; else None.

    An unclosed last ``\\boxed{`` gives None.
    """
    for command in ("\\boxed", "\\fbox"):
        start = text.rfind(command)
        if start >= 0:
            break
    else:
        return None
    rest = text[start + len(command) :]
    if rest.startswith(" ") and command == "\\boxed":  # "\boxed 5": up to the next "$" or the end
        return rest[1:].split("$")[0].strip() or None
    if not rest.startswith("{"):
        return None
    depth = 0
    for index, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[1:index]
    return None


def xml_count(text: str) -> float:
    """0.125 for each of the four tags placed once on its own line, less 0.001 per character after the answer.

    The penalty counts the characters after ``\\n<answer>\\n`` and after ``\\n</answer>`` (minus one, so a single
    trailing newline is free), as in the reference.
    """
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125 - 0.001 * len(text.split("\n<answer>\n")[-1])
    if text.count("\n</answer>") == 1:
        score += 0.125 - 0.001 * (len(text.split("\n</answer>")[-1]) - 1)
    return score


def xml_count_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """TRL reward: `xml_count` of each completion."""
    return [xml_count(completion_text(c)) for c in completions]


def soft_format_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """TRL reward: 0.5 when the completion starts with ``<reasoning>..</reasoning>`` then ``<answer>..</answer>``.

    ``.`` does not cross newlines here (as in the reference), so the tags' contents must be single lines.
    """
    return [0.5 if _SOFT.match(completion_text(c)) else 0.0 for c in completions]


def strict_format_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """TRL reward: 0.5 for exactly ``<reasoning>\\nR\\n</reasoning>\\n<answer>\\nA\\n</answer>\\n`` (single-line R, A)."""
    return [0.5 if _STRICT.match(completion_text(c)) else 0.0 for c in completions]
