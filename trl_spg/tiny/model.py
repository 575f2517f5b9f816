"""Tiny, fully in-code building blocks for fast experiments and tests.

Nothing here downloads anything: the tokenizer is assembled with the `tokenizers` library and the model is a small
bidirectional Llama (the LLaDA recipe: a Llama-style transformer whose attention is not causal, trained to predict
masked tokens). They are meant for unit tests, smoke runs and toy tasks (arithmetic, copying, ...) where a real
masked diffusion LM would be far too slow.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..modeling import whole_parameters

__all__ = [
    "DEFAULT_ALPHABET",
    "DEFAULT_EXTRA_TOKENS",
    "PAD_TOKEN",
    "EOS_TOKEN",
    "MASK_TOKEN",
    "UNK_TOKEN",
    "SIMPLE_CHAT_TEMPLATE",
    "bidirectional_llama",
    "build_char_tokenizer",
    "build_tiny_diffusion_lm",
]

#: Characters that get one token each by default: enough for arithmetic / short word tasks.
DEFAULT_ALPHABET = string.digits + string.ascii_lowercase + " =:+-*/.,?!()<>\n"
#: Multi-character tokens kept whole, so that answer tags cost one position each.
DEFAULT_EXTRA_TOKENS = ("<answer>", "</answer>")

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|eot|>"
MASK_TOKEN = "<|mask|>"
# Characters outside the alphabet map here instead of raising mid-training; decoding shows them explicitly.
UNK_TOKEN = "<|unk|>"

#: Concatenates message contents verbatim (no role markers), so conversational datasets render to the exact text a
#: character-level toy task expects. `add_generation_prompt` is accepted and adds nothing.
SIMPLE_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def _char_vocab(alphabet: str, special_tokens: Sequence[str]) -> dict[str, int]:
    """Map special tokens first (ids 0..k-1, stable across alphabets), then each distinct alphabet character."""
    vocab: dict[str, int] = {}
    for token in (*special_tokens, *alphabet):
        # `setdefault` silently drops duplicate characters in a user-supplied alphabet.
        vocab.setdefault(token, len(vocab))
    return vocab


def build_char_tokenizer(
    alphabet: str = DEFAULT_ALPHABET,
    extra_tokens: Sequence[str] = DEFAULT_EXTRA_TOKENS,
) -> PreTrainedTokenizerFast:
    """Build a character-level fast tokenizer for toy masked-diffusion tasks.

    Every character of `alphabet` is one token; each string in `extra_tokens` is an added token matched whole before
    character splitting (so `"<answer>"` is a single id). Special tokens are `<|pad|>` (pad), `<|eot|>` (eos),
    `<|mask|>` (mask) and `<|unk|>` (characters outside the alphabet). No BOS/EOS is added on encode and padding is on
    the left, as TRL-style trainers expect for prompts.

    Decoding concatenates tokens with nothing in between, so `decode(encode(s)) == s` for any `s` over the alphabet,
    the extra tokens and the special tokens. The result is an ordinary fast tokenizer: `save_pretrained` /
    `AutoTokenizer.from_pretrained` round-trip it. A minimal chat template (`SIMPLE_CHAT_TEMPLATE`) is attached.

    Args:
        alphabet: Characters that get one token each (duplicates are ignored).
        extra_tokens: Multi-character strings that must stay a single token.

    Returns:
        A `transformers.PreTrainedTokenizerFast` with `pad_token`, `eos_token`, `mask_token` and `unk_token` set.
    """
    if not alphabet:
        raise ValueError("`alphabet` must contain at least one character.")
    special_tokens = (PAD_TOKEN, EOS_TOKEN, MASK_TOKEN, UNK_TOKEN)
    clashes = [tok for tok in extra_tokens if tok in special_tokens]
    if clashes:
        raise ValueError(f"`extra_tokens` may not repeat the special tokens: {clashes}")

    backend = Tokenizer(models.WordLevel(vocab=_char_vocab(alphabet, special_tokens), unk_token=UNK_TOKEN))
    # Split into single characters, newlines included (`.` would skip them), each piece isolated.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Without a decoder the tokens would be joined with spaces; `Fuse` concatenates them as they are.
    backend.decoder = decoders.Fuse()
    # `normalized=False` keeps the added tokens matched on the raw text; no stripping keeps surrounding spaces.
    backend.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in special_tokens])
    backend.add_tokens([AddedToken(tok, special=False, normalized=False) for tok in extra_tokens])

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        mask_token=MASK_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        # The default clean-up would delete spaces before punctuation and break the round trip.
        clean_up_tokenization_spaces=False,
        chat_template=SIMPLE_CHAT_TEMPLATE,
    )


def _required_token_id(tokenizer: PreTrainedTokenizerFast, name: str) -> int:
    """Return `tokenizer.<name>_id`, raising a clear error when the tokenizer lacks that special token."""
    token_id = getattr(tokenizer, f"{name}_id", None)
    if token_id is None:
        raise ValueError(f"The tokenizer has no `{name}`; build it with `build_char_tokenizer` or set one.")
    return token_id


@torch.no_grad()
def _init_weights_(model: torch.nn.Module, std: float, pad_token_id: int | None, generator: torch.Generator) -> None:
    """Re-initialise every parameter of `model` in place from `generator` (Llama's own init scheme).

    Matrices (linear layers, embeddings) get N(0, std^2), biases zeros, 1-d weights (RMSNorm scales) ones, and the
    padding embedding row is zeroed as in `LlamaPreTrainedModel`. Parameters are visited in `named_parameters` order
    (deterministic for a given architecture), so the same seed always gives the same weights.
    """
    for name, param in model.named_parameters():
        if param.dim() >= 2:
            torch.nn.init.normal_(param, mean=0.0, std=std, generator=generator)
        elif name.endswith("bias"):
            param.zero_()
        else:
            param.fill_(1.0)
    embeddings = model.get_input_embeddings()
    if pad_token_id is not None and embeddings is not None:
        embeddings.weight[pad_token_id].zero_()


def bidirectional_llama(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    mask_token_id: int | None = None,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LlamaForCausalLM:
    """A randomly initialised bidirectional Llama (a masked diffusion LM) of any size, in eval mode.

    `is_causal=False` in the config makes transformers build a bidirectional (padding-only) attention mask, so every
    position sees the whole sequence as in LLaDA. ``mask_token_id`` defaults to the last id.

    Deterministic without side effects: the model is built on ``device`` (default CPU) in ``dtype`` inside
    `torch.random.fork_rng`, so transformers' own random init does not advance the caller's global RNG, and then
    every parameter is re-initialised from a `torch.Generator` on that device seeded with ``seed`` (Llama's scheme:
    matrices N(0, 0.02^2), norms 1, biases 0, the padding row 0). Same seed, arguments and device -> same weights.
    """
    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}).")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size if intermediate_size is not None else 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,  # Llama's default id (1) would point at an unrelated token
        tie_word_embeddings=False,
        is_causal=False,  # bidirectional attention: the defining property of a masked diffusion LM
        use_cache=False,  # a KV cache is meaningless when every denoising step re-reads the whole sequence
    )
    # Custom field read by the diffusion trainers; saved and reloaded with the config.
    config.mask_token_id = vocab_size - 1 if mask_token_id is None else mask_token_id
    device = torch.device(device or "cpu")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    with whole_parameters(model):  # built partitioned when a DeepSpeed ZeRO-3 config is active
        _init_weights_(model, config.initializer_range, pad_token_id, generator)
    return model.eval()


def build_tiny_diffusion_lm(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A small random bidirectional Llama (`bidirectional_llama`) for ``tokenizer``, in eval mode, on the CPU.

    ``vocab_size`` is ``len(tokenizer)`` and the config carries the tokenizer's ``mask_token_id``, ``pad_token_id``
    and ``eos_token_id``, so trainers find them on the model. Same seed and arguments -> identical weights; the
    global RNG is left as it was.
    """
    return bidirectional_llama(
        len(tokenizer),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        mask_token_id=_required_token_id(tokenizer, "mask_token"),
        pad_token_id=_required_token_id(tokenizer, "pad_token"),
        eos_token_id=_required_token_id(tokenizer, "eos_token"),
        seed=seed,
    )
