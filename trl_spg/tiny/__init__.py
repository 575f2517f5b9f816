"""Built-in tiny models: a character tokenizer and small bidirectional Llamas, built in code (nothing downloaded).

`trl_spg.tiny.warm_start` (masked-diffusion SFT) and the warm-started tiny policies (`trl_spg.tiny.sudoku`,
`trl_spg.tiny.countdown`) are imported explicitly or through `tiny_policy_module`, so importing this package loads
only the model builders.
"""

import importlib
from types import ModuleType

from .model import (
    DEFAULT_ALPHABET,
    DEFAULT_EXTRA_TOKENS,
    EOS_TOKEN,
    MASK_TOKEN,
    PAD_TOKEN,
    SIMPLE_CHAT_TEMPLATE,
    UNK_TOKEN,
    bidirectional_llama,
    build_char_tokenizer,
    build_tiny_diffusion_lm,
)

#: The module of each task's built-in tiny policy (``--model_name_or_path tiny``); other tasks get Sudoku's.
TINY_POLICIES = {"sudoku": "trl_spg.tiny.sudoku", "countdown": "trl_spg.tiny.countdown"}


def tiny_policy_module(task: str | None) -> ModuleType:
    """The module of ``task``'s tiny policy: its `TRAINING_DEFAULTS`, `SPG_DEFAULTS` and `load_tiny_policy`."""
    return importlib.import_module(TINY_POLICIES.get(task or "sudoku", TINY_POLICIES["sudoku"]))


__all__ = [
    "DEFAULT_ALPHABET",
    "DEFAULT_EXTRA_TOKENS",
    "EOS_TOKEN",
    "MASK_TOKEN",
    "PAD_TOKEN",
    "SIMPLE_CHAT_TEMPLATE",
    "TINY_POLICIES",
    "UNK_TOKEN",
    "bidirectional_llama",
    "build_char_tokenizer",
    "build_tiny_diffusion_lm",
    "tiny_policy_module",
]
