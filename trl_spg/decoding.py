"""`DecodingConfig`: every setting of diffusion decoding, its checks and its default rule, in one place.

Rollouts (`DiffusionGRPOConfig` maps its fields onto it), evaluation, both command lines and the model card all
build one; `trl_spg.sampler.diffusion_generate` takes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace

REMASKING_STRATEGIES = ("low_confidence", "random")
#: How many masked positions a step reveals: the fixed schedule (exact sampler) or confidence-threshold decoding.
DECODING_MODES = ("fixed", "threshold")
#: Block-wise KV cache of the fast modes (``"none"``: the exact full forward at every step).
KV_CACHES = ("none", "prefix", "dual")
#: Block size of the paper's decoding, used when it divides the generation length.
PAPER_BLOCK_LENGTH = 32


@dataclass
class DecodingConfig:
    r"""
    Settings of semi-autoregressive masked diffusion decoding (see `trl_spg.sampler`).

    The defaults are the paper's evaluation protocol: greedy, low-confidence remasking, blocks of 32, ``gen_length /
    2`` steps, the exact sampler. ``decoding="threshold"`` and ``kv_cache`` are opt-in fast modes (Fast-dLLM).

    Parameters:
        gen_length (`int`, *optional*, defaults to `256`):
            Generated tokens per prompt.
        block_length (`int` or `None`, *optional*, defaults to `None`):
            Tokens per block, decoded left to right; must divide `gen_length`. `None`: 32 (the paper's) when it
            divides `gen_length`, else the whole generation as one block.
        steps (`int` or `None`, *optional*, defaults to `None`):
            Denoising steps (model forwards), split evenly over the blocks; a multiple of the number of blocks.
            `None`: `gen_length // 2` rounded to a multiple of the number of blocks.
        temperature (`float`, *optional*, defaults to `0.0`):
            Sampling temperature of the revealed tokens (0: argmax).
        remasking (`str`, *optional*, defaults to `"low_confidence"`):
            Which masked positions of the block are revealed at each step: the most confident or random ones.
        decoding (`str`, *optional*, defaults to `"fixed"`):
            `"fixed"`: the exact sampler, each forward revealing the fixed schedule's count. `"threshold"`:
            confidence-threshold parallel decoding: each forward also reveals every masked position of the block
            whose candidate has probability >= `threshold`, so a block takes at most as many forwards. Every token
            is still drawn from the model's exact conditional; only the reveal order differs.
        threshold (`float`, *optional*, defaults to `0.9`):
            Confidence threshold of `"threshold"` decoding, a probability in (0, 1].
        min_tokens_per_step (`int` or `None`, *optional*, defaults to `None`):
            Per-step minimum of `"threshold"` decoding. `None`: the fixed schedule's count (so `steps` caps the
            forwards); an integer (Fast-dLLM uses 1): that many per step.
        kv_cache (`str`, *optional*, defaults to `"none"`):
            Block-wise approximate KV cache (`trl_spg.modeling.BlockKVCache`): `"prefix"` caches the positions
            before the current block, `"dual"` also those after it, refreshed by a full forward at every block start.
            The conditionals are perturbed (stale keys and values), so use it for evaluation, not for rollouts.
        cache_refresh_every (`int` or `None`, *optional*, defaults to `None`):
            Also refresh the KV cache every this many forwards within a block (`None`: only at block starts; `1`:
            every forward, i.e. the exact sampler's logits). Needs `kv_cache` `"prefix"` or `"dual"`.
        compact_batch (`bool`, *optional*, defaults to `True`):
            Skip work that cannot change a completion up to its first EOS: a row whose first EOS and every position
            before it are revealed leaves the batch (when the sampler is given the EOS ids), and identical rows are
            forwarded once. The tokens up to each row's first EOS are the same as with `False` (same seed), with
            every mode; a row that left early holds EOS at its positions still masked then. Off where the tokens
            after the first EOS are read: evaluation's raw generations (the paper grader's text) and the trainer's
            `visible` likelihood canvas.
    """

    gen_length: int = field(default=256, metadata={"help": "Generated tokens per prompt."})
    block_length: int | None = field(
        default=None,
        metadata={"help": "Tokens per block; divides the generation length. Default: 32 if it divides, else all."},
    )
    steps: int | None = field(
        default=None,
        metadata={"help": "Denoising steps, a multiple of the number of blocks. Default: generation length // 2."},
    )
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature (0: greedy)."})
    remasking: str = field(
        default="low_confidence",
        metadata={"help": "Positions revealed at each step.", "choices": list(REMASKING_STRATEGIES)},
    )
    decoding: str = field(
        default="fixed",
        metadata={
            "help": "'fixed' (the exact sampler) or 'threshold' (confidence-threshold parallel decoding).",
            "choices": list(DECODING_MODES),
        },
    )
    threshold: float = field(
        default=0.9, metadata={"help": "Confidence threshold of 'threshold' decoding, a probability in (0, 1]."}
    )
    min_tokens_per_step: int | None = field(
        default=None,
        metadata={"help": "Per-step minimum of 'threshold' decoding; default: the fixed schedule's count."},
    )
    kv_cache: str = field(
        default="none",
        metadata={
            "help": "Block-wise approximate KV cache: 'none' (exact), 'prefix' or 'dual' (evaluation only).",
            "choices": list(KV_CACHES),
        },
    )
    cache_refresh_every: int | None = field(
        default=None, metadata={"help": "Also refresh the KV cache every this many forwards of a block."}
    )
    compact_batch: bool = field(
        default=True,
        metadata={
            "help": "Drop rows whose completion is final up to its first EOS and forward identical rows once (exact "
            "up to the first EOS; a dropped row's still-masked positions hold EOS)."
        },
    )

    def resolved(self) -> DecodingConfig:
        """A copy with `block_length` and `steps` filled by the default rule where they are None."""
        length, block, steps = self.gen_length, self.block_length, self.steps
        if not _positive_int(length):
            return replace(self)  # reported by `problems`
        if block is None:
            block = PAPER_BLOCK_LENGTH if length % PAPER_BLOCK_LENGTH == 0 else length
        if steps is None and _positive_int(block) and length % block == 0:
            num_blocks = length // block
            steps = max(1, round(length / 2 / num_blocks)) * num_blocks
        return replace(self, block_length=block, steps=steps)

    def problems(self, names: Mapping[str, str] | None = None) -> list[str]:
        """Every setting these options cannot decode with, each with its fix; empty when they are valid.

        ``names`` maps a field to the name the user set it by (a config field or a flag), for the messages.
        """
        name = {f.name: f.name for f in fields(self)} | dict(names or {})
        config = self.resolved()
        problems = []
        if not _positive_int(config.gen_length):
            problems.append(f"{name['gen_length']}={config.gen_length!r}: a positive number of generated tokens.")
        elif not _positive_int(config.block_length) or config.gen_length % config.block_length:
            problems.append(
                f"{name['block_length']}={config.block_length!r} must divide "
                f"{name['gen_length']}={config.gen_length} (or leave it unset: 32 if it divides, else all of it)."
            )
        else:
            num_blocks = config.gen_length // config.block_length
            if not _positive_int(config.steps) or config.steps % num_blocks:
                problems.append(
                    f"{name['steps']}={config.steps!r} must be a positive multiple of the number of blocks "
                    f"({num_blocks} = {name['gen_length']} / {name['block_length']})."
                )
        if isinstance(config.temperature, bool) or not isinstance(config.temperature, (int, float)):
            problems.append(f"{name['temperature']}={config.temperature!r}: a number >= 0.")
        elif not config.temperature >= 0:
            problems.append(f"{name['temperature']}={config.temperature!r}: must be >= 0 (0 decodes greedily).")
        if config.remasking not in REMASKING_STRATEGIES:
            problems.append(f"{name['remasking']}={config.remasking!r}: choose one of {REMASKING_STRATEGIES}.")
        if config.decoding not in DECODING_MODES:
            problems.append(f"{name['decoding']}={config.decoding!r}: choose one of {DECODING_MODES}.")
        threshold = config.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            problems.append(f"{name['threshold']}={threshold!r}: a probability in (0, 1].")
        if config.min_tokens_per_step is not None:
            if config.decoding != "threshold":
                problems.append(f"{name['min_tokens_per_step']} applies to {name['decoding']}='threshold' only.")
            elif not _positive_int(config.min_tokens_per_step):
                problems.append(f"{name['min_tokens_per_step']}={config.min_tokens_per_step}: at least 1 (or None).")
        if config.kv_cache not in KV_CACHES:
            problems.append(f"{name['kv_cache']}={config.kv_cache!r}: choose one of {KV_CACHES}.")
        if not isinstance(config.compact_batch, bool):
            problems.append(f"{name['compact_batch']}={config.compact_batch!r}: True or False.")
        if config.cache_refresh_every is not None:
            if config.kv_cache == "none":
                problems.append(f"{name['cache_refresh_every']} needs {name['kv_cache']} 'prefix' or 'dual'.")
            elif not _positive_int(config.cache_refresh_every):
                problems.append(f"{name['cache_refresh_every']}={config.cache_refresh_every}: at least 1 (or None).")
        return problems

    def at_length(self, gen_length: int) -> DecodingConfig:
        """These settings for another generation length: the block kept where it divides it, else the default rule;
        the steps kept only at the same length, else the default rule."""
        block = self.block_length if self.block_length and gen_length % self.block_length == 0 else None
        steps = self.steps if gen_length == self.gen_length else None
        return replace(self, gen_length=gen_length, block_length=block, steps=steps).resolved()

    def validated(self, names: Mapping[str, str] | None = None) -> DecodingConfig:
        """The resolved settings; a `ValueError` listing every problem (with ``names``, see `problems`) otherwise."""
        problems = self.problems(names)
        if problems:
            raise ValueError("Invalid decoding settings:\n- " + "\n- ".join(problems))
        return self.resolved()

    @property
    def is_exact(self) -> bool:
        """True for the exact sampler (fixed schedule, no KV cache)."""
        return self.decoding == "fixed" and self.kv_cache == "none"

    def exact(self) -> DecodingConfig:
        """The exact sampler with this config's protocol (length, block, steps, temperature, remasking): the fast
        modes reset to their defaults."""
        defaults = DecodingConfig()
        return replace(self, **{key: getattr(defaults, key) for key in FAST_MODE_FIELDS})

    def fast_options(self) -> dict:
        """The fast-mode settings that differ from the exact sampler's (empty for the exact sampler)."""
        exact = DecodingConfig()
        options = {key: getattr(self, key) for key in FAST_MODE_FIELDS if getattr(self, key) != getattr(exact, key)}
        if self.decoding == "fixed":
            options.pop("threshold", None)  # unused by the fixed schedule
        return options

    def keywords(self) -> dict:
        """The settings that define this decoding, as `diffusion_generate` keywords: the protocol's five fields, the
        fast-mode settings that differ from the exact sampler's, and `compact_batch` when it is off."""
        protocol = {
            key: value for key, value in asdict(self).items() if key not in (*FAST_MODE_FIELDS, *_EXACT_SPEED_FIELDS)
        }
        # Settings that skip work without changing a completion up to its first EOS: listed only when not default.
        speed = {key: getattr(self, key) for key in _EXACT_SPEED_FIELDS if getattr(self, key) != _DEFAULT_SPEED[key]}
        return {**protocol, **self.fast_options(), **speed}


def decoding_field(name: str):
    """A dataclass field with the default and help of `DecodingConfig`'s field ``name``, for configs and command
    lines that set it under their own name (written once, here)."""
    source = DecodingConfig.__dataclass_fields__[name]
    return field(default=source.default, metadata=dict(source.metadata))


#: The fields of the opt-in fast modes; the others (length, block, steps, temperature, remasking) are the protocol's.
FAST_MODE_FIELDS = ("decoding", "threshold", "min_tokens_per_step", "kv_cache", "cache_refresh_every")
#: Fields that only skip work: the completions up to their first EOS are the same whatever their value.
_EXACT_SPEED_FIELDS = ("compact_batch",)
_DEFAULT_SPEED = {key: DecodingConfig.__dataclass_fields__[key].default for key in _EXACT_SPEED_FIELDS}


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
