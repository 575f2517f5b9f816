"""`DiffusionGRPOConfig`: TRL's `GRPOConfig` plus the diffusion decoding settings every trainer of this package shares.

`SPGConfig`, `DiffuGRPOConfig` and `WD1Config` subclass it: they add their own likelihood-estimate and loss settings
and their own checks (`_problems`), and list the GRPO loss options their loss ignores (`_ignored_grpo_fields`).
"""

from __future__ import annotations

import warnings
from dataclasses import MISSING, dataclass, field, fields
from typing import ClassVar

from trl import GRPOConfig

from .sampler import DECODING_MODES, KV_CACHES, REMASKING_STRATEGIES, decoding_option_problems

#: Block size of the paper's decoding, used when it divides the completion length.
PAPER_BLOCK_LENGTH = 32
_GRPO_DEFAULTS = {f.name: f.default for f in fields(GRPOConfig) if f.default is not MISSING}


@dataclass
class DiffusionGRPOConfig(GRPOConfig):
    r"""
    Configuration shared by the trainers of masked diffusion LMs here: TRL's `GRPOConfig` plus diffusion decoding.

    Rollouts come from semi-autoregressive diffusion decoding; the completion length is GRPO's
    `max_completion_length`. Options that only make sense for autoregressive decoding (vLLM, continuous batching,
    top-k / top-p / min-p / repetition-penalty sampling, `generation_kwargs`) are rejected.

    Parameters:
        > Diffusion decoding (rollouts)

        block_length (`int` or `None`, *optional*, defaults to `None`):
            Tokens per block of semi-autoregressive decoding; blocks are decoded left to right. Must divide
            `max_completion_length`. Also the block size of SPG's `block_*` masking strategies. `None` takes 32 (the
            paper's) when it divides `max_completion_length`, else the whole completion as one block.
        diffusion_steps (`int` or `None`, *optional*, defaults to `None`):
            Denoising steps (model forwards) per rollout, split evenly over the blocks; must be a multiple of
            `max_completion_length / block_length`. `None` takes `max_completion_length // 2` (the paper's
            protocol: 128 for 256 tokens), rounded to a multiple of the number of blocks.
        remasking (`str`, *optional*, defaults to `"low_confidence"`):
            Which masked positions of the current block are revealed at each step: the most confident
            (`"low_confidence"`) or uniformly random ones (`"random"`).
        mask_token_id (`int` or `None`, *optional*, defaults to `None`):
            Id of the `[MASK]` token. `None` takes the tokenizer's mask token, else `model.config.mask_token_id`
            (an error when both exist and differ).
        rollout_decoding (`str`, *optional*, defaults to `"fixed"`):
            `"fixed"`: the exact sampler, `diffusion_steps / num_blocks` forwards per block, each revealing a fixed
            count. `"threshold"`: confidence-threshold parallel decoding (Fast-dLLM): each forward reveals every
            masked position of the block whose candidate has probability >= `rollout_threshold`, and at least the
            per-step minimum; a block ends as soon as it is revealed, so rollouts take at most as many forwards as
            `"fixed"`. Approximate: rollouts are no longer exact draws of the fixed-schedule sampler.
        rollout_threshold (`float`, *optional*, defaults to `0.9`):
            Confidence threshold of `"threshold"` decoding, a probability in (0, 1].
        rollout_min_tokens_per_step (`int` or `None`, *optional*, defaults to `None`):
            Per-step minimum of `"threshold"` decoding. `None`: the fixed schedule's count for that step (so
            `diffusion_steps` caps the forwards); an integer (Fast-dLLM uses 1): that many per step.
        rollout_kv_cache (`str`, *optional*, defaults to `"none"`):
            Block-wise approximate KV cache of the rollouts (`trl_spg.modeling.BlockKVCache`): `"prefix"` caches the
            positions before the current block, `"dual"` also those after it; refreshed by a full forward at the
            start of every block. `"none"`: every forward sees the whole canvas (exact). Needs a transformers model
            with a KV cache (LLaDA / Dream as loaded by `trl_spg`). Rollouts from the cached model are off-policy for
            the exact likelihood the loss uses: on the tiny Sudoku task they lost the RL gain that exact and
            threshold rollouts gave (docs/benchmarks.md), so prefer it for evaluation.
        rollout_cache_refresh_every (`int` or `None`, *optional*, defaults to `None`):
            Also refresh the KV cache every this many forwards within a block (`None`: only at block starts; `1`:
            every forward, i.e. the exact sampler's logits). Needs `rollout_kv_cache` `"prefix"` or `"dual"`.

        > Defaults that differ from `GRPOConfig`

        scale_rewards: `"none"` (advantages are not divided by the group std).
        temperature: `0.9`; max_completion_length: `256`; learning_rate: `3e-6`.
    """

    _VALID_DICT_FIELDS = GRPOConfig._VALID_DICT_FIELDS
    #: GRPO loss options the trainer's loss does not use: setting them only earns a warning.
    _ignored_grpo_fields: ClassVar[tuple[str, ...]] = ()
    #: Why they are ignored (ends the warning).
    _ignored_reason: ClassVar[str] = ""

    block_length: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per block of semi-autoregressive decoding; must divide max_completion_length. Default: 32 "
            "when it divides max_completion_length, else the whole completion."
        },
    )
    diffusion_steps: int | None = field(
        default=None,
        metadata={
            "help": "Denoising steps per rollout; a multiple of max_completion_length / block_length. Default: "
            "max_completion_length // 2, rounded to a multiple of the number of blocks."
        },
    )
    remasking: str = field(
        default="low_confidence",
        metadata={"help": "Positions revealed at each step.", "choices": list(REMASKING_STRATEGIES)},
    )
    mask_token_id: int | None = field(
        default=None,
        metadata={"help": "Id of the [MASK] token; default: the tokenizer's mask token, else model.config's."},
    )
    rollout_decoding: str = field(
        default="fixed",
        metadata={
            "help": "Rollout decoding: 'fixed' (exact sampler) or 'threshold' (confidence-threshold parallel decoding).",
            "choices": list(DECODING_MODES),
        },
    )
    rollout_threshold: float = field(
        default=0.9,
        metadata={"help": "Confidence threshold of 'threshold' rollout decoding, a probability in (0, 1]."},
    )
    rollout_min_tokens_per_step: int | None = field(
        default=None,
        metadata={
            "help": "Per-step minimum of 'threshold' rollout decoding; default: the fixed schedule's count per step."
        },
    )
    rollout_kv_cache: str = field(
        default="none",
        metadata={
            "help": "Block-wise approximate KV cache of the rollouts: 'none' (exact), 'prefix' or 'dual'.",
            "choices": list(KV_CACHES),
        },
    )
    rollout_cache_refresh_every: int | None = field(
        default=None,
        metadata={"help": "Also refresh the rollout KV cache every this many forwards of a block; default: never."},
    )

    # GRPOConfig fields whose defaults follow the SPG paper's protocol (shared by its baselines).
    scale_rewards: str = field(
        default="none", metadata={"help": "Advantage scaling; the default uses raw group-centred rewards ('none')."}
    )
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature of the rollouts."})
    max_completion_length: int | None = field(default=256, metadata={"help": "Generated tokens per rollout."})
    learning_rate: float = field(default=3e-6, metadata={"help": "Initial learning rate for AdamW."})

    def __post_init__(self):
        super().__post_init__()
        self._default_decoding_lengths()
        problems = self._problems()
        if problems:
            raise ValueError(f"Invalid {type(self).__name__}:\n- " + "\n- ".join(problems))
        ignored = [
            f"{name}={getattr(self, name)!r}"
            for name in self._ignored_grpo_fields
            if getattr(self, name) != _GRPO_DEFAULTS[name]
        ]
        if ignored:
            warnings.warn(f"{type(self).__name__} ignores {', '.join(ignored)}: {self._ignored_reason}", stacklevel=3)

    def _problems(self) -> list[str]:
        """Every setting this config cannot run with, each with its fix (subclasses extend the list)."""
        problems = []
        if self.use_vllm:
            problems.append("use_vllm=True: vLLM decodes autoregressively; these rollouts use diffusion decoding.")
        if self.use_transformers_continuous_batching or self.use_transformers_paged:
            problems.append("transformers continuous batching is autoregressive; turn it off.")
        if self.remasking not in REMASKING_STRATEGIES:
            problems.append(f"remasking={self.remasking!r}: choose one of {REMASKING_STRATEGIES}.")
        problems.extend(
            decoding_option_problems(
                self.rollout_decoding,
                self.rollout_threshold,
                self.rollout_min_tokens_per_step,
                self.rollout_kv_cache,
                self.rollout_cache_refresh_every,
                prefix="rollout_",
            )
        )
        if self.max_completion_length is None or self.max_completion_length < 1:
            problems.append("max_completion_length must be a positive number of generated tokens.")
        elif self.block_length < 1 or self.max_completion_length % self.block_length:
            problems.append(
                f"block_length={self.block_length} must divide max_completion_length={self.max_completion_length}."
            )
        else:
            num_blocks = self.max_completion_length // self.block_length
            if self.diffusion_steps < num_blocks or self.diffusion_steps % num_blocks:
                problems.append(
                    f"diffusion_steps={self.diffusion_steps} must be a positive multiple of the number of blocks "
                    f"({num_blocks} = max_completion_length / block_length)."
                )
        if self.top_k or self.top_p != 1.0 or self.min_p is not None or self.repetition_penalty != 1.0:
            problems.append(
                "top_k / top_p / min_p / repetition_penalty apply to autoregressive decoding; diffusion rollouts "
                "use only temperature and remasking."
            )
        if self.generation_kwargs:
            problems.append(
                f"generation_kwargs={self.generation_kwargs}: diffusion rollouts do not use `generate`; set "
                "temperature, remasking, block_length and diffusion_steps instead."
            )
        return problems

    def _ratio_free_problems(self, method: str) -> list[str]:
        """GRPO options that need per-token entropies or importance ratios, which a ratio-free loss does not have."""
        problems = []
        if self.top_entropy_quantile != 1.0:
            problems.append(
                f"top_entropy_quantile < 1: {method} has no per-token entropies to filter on; leave it at 1.0."
            )
        if self.entropy_coef != 0 or self.use_adaptive_entropy:
            problems.append(
                f"entropy bonuses are not part of {method}; set entropy_coef=0 and use_adaptive_entropy=False."
            )
        if self.off_policy_mask_threshold is not None:
            problems.append(
                f"off_policy_mask_threshold needs importance ratios, which {method} does not use; leave it None."
            )
        if self.delta is not None:
            problems.append(f"delta clips importance ratios, which {method} does not use; leave it None.")
        return problems

    def _default_decoding_lengths(self) -> None:
        """Fill `block_length` / `diffusion_steps` left at None from `max_completion_length` (see their help)."""
        length = self.max_completion_length
        if not length or length < 1:
            return  # reported by the validation below
        if self.block_length is None:
            self.block_length = PAPER_BLOCK_LENGTH if length % PAPER_BLOCK_LENGTH == 0 else length
        if self.diffusion_steps is None and self.block_length >= 1 and length % self.block_length == 0:
            num_blocks = length // self.block_length
            self.diffusion_steps = max(1, round(length / 2 / num_blocks)) * num_blocks
