"""Built-in tiny models: a character tokenizer and small bidirectional Llamas, built in code (nothing downloaded).

`trl_spg.tiny.warm_start` (masked-diffusion SFT) and `trl_spg.tiny.sudoku` (the warm-started tiny Sudoku policy)
are imported explicitly, so importing this package loads only the model builders.
"""

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

__all__ = [
    "DEFAULT_ALPHABET",
    "DEFAULT_EXTRA_TOKENS",
    "EOS_TOKEN",
    "MASK_TOKEN",
    "PAD_TOKEN",
    "SIMPLE_CHAT_TEMPLATE",
    "UNK_TOKEN",
    "bidirectional_llama",
    "build_char_tokenizer",
    "build_tiny_diffusion_lm",
]
