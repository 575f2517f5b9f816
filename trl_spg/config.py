"""`SPGConfig`: TRL's `GRPOConfig` plus the settings of SPG's bounds, Monte Carlo masking and diffusion decoding."""

from __future__ import annotations

import warnings
from dataclasses import MISSING, dataclass, field, fields

from trl import GRPOConfig

from .bounds import NEGATIVE_BOUNDS
from .masking import MASKING_STRATEGIES
from .sampler import REMASKING_STRATEGIES

#: Block size of the paper's decoding, used when it divides the completion length.
PAPER_BLOCK_LENGTH = 32
#: GRPO loss options that SPG's loss does not use: setting them only earns a warning.
_IGNORED_GRPO_FIELDS = ("loss_type", "epsilon", "epsilon_high", "importance_sampling_level")
_GRPO_DEFAULTS = {f.name: f.default for f in fields(GRPOConfig) if f.default is not MISSING}


@dataclass
class SPGConfig(GRPOConfig):
    r"""
    Configuration class for [`SPGTrainer`]: everything in TRL's `GRPOConfig`, plus SPG's settings.

    SPG maximises a lower bound (ELBO) of the log-likelihood of samples with positive advantage and minimises an
    upper bound (EUBO, or an ELBO/EUBO mixture) for the others, both estimated with Monte Carlo masking; rollouts
    come from semi-autoregressive diffusion decoding. The completion length is GRPO's `max_completion_length`.
    SPG uses no importance ratio and no clipping: `loss_type`, `epsilon`, `epsilon_high` and
    `importance_sampling_level` are ignored.

    Parameters:
        > Diffusion decoding (rollouts)

        block_length (`int` or `None`, *optional*, defaults to `None`):
            Tokens per block of semi-autoregressive decoding; blocks are decoded left to right. Must divide
            `max_completion_length`. Also the block size of the `block_*` masking strategies. `None` takes 32 (the
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

        > SPG objective

        negative_bound (`str`, *optional*, defaults to `"mix"`):
            Bound for samples with non-positive advantage: `"mix"` (w * EUBO + (1 - w) * ELBO), `"eubo"`,
            `"elbo"`, or `"none"` (drop them).
        eubo_beta (`float`, *optional*, defaults to `1.5`):
            Renyi order beta of the EUBO (> 0; smaller is tighter, the bound is guaranteed for beta >= length).
        mix_weight (`float`, *optional*, defaults to `0.5`):
            Weight w of the EUBO in the mixture bound, in [0, 1].

        > Monte Carlo masking (likelihood estimation)

        masking_strategy (`str`, *optional*, defaults to `"block_random"`):
            `"block_random"`, `"block_all"`, `"random"` or `"all"` (see `trl_spg.masking.sample_masks`).
        num_mc_masks (`int`, *optional*, defaults to `2`):
            Monte Carlo masks per completion (must be 1 with `"all"`).
        min_mask_ratio (`float`, *optional*, defaults to `0.0`):
            Lower end of the masked fraction drawn by the `random` and `block_random` strategies.
        max_mask_ratio (`float`, *optional*, defaults to `1.0`):
            Upper end of the masked fraction.
        p_mask_prompt (`float`, *optional*, defaults to `0.15`):
            Probability of masking each clean token before the chosen block (prompt, earlier blocks).

        > Defaults that differ from `GRPOConfig`

        scale_rewards: `"none"` (advantages are not divided by the group std).
        beta: `0.0` (no KL penalty; SPG rejects `beta > 0`).
        temperature: `0.9`; max_completion_length: `256`; learning_rate: `3e-6`.
    """

    _VALID_DICT_FIELDS = GRPOConfig._VALID_DICT_FIELDS

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
    negative_bound: str = field(
        default="mix",
        metadata={"help": "Bound for samples with non-positive advantage.", "choices": list(NEGATIVE_BOUNDS)},
    )
    eubo_beta: float = field(default=1.5, metadata={"help": "Renyi order beta of the EUBO (> 0)."})
    mix_weight: float = field(default=0.5, metadata={"help": "Weight of the EUBO in the mixture bound, in [0, 1]."})
    masking_strategy: str = field(
        default="block_random",
        metadata={"help": "Monte Carlo masking strategy.", "choices": list(MASKING_STRATEGIES)},
    )
    num_mc_masks: int = field(default=2, metadata={"help": "Monte Carlo masks per completion."})
    min_mask_ratio: float = field(default=0.0, metadata={"help": "Lower end of the masked fraction."})
    max_mask_ratio: float = field(default=1.0, metadata={"help": "Upper end of the masked fraction."})
    p_mask_prompt: float = field(
        default=0.15, metadata={"help": "Probability of masking each clean token before the chosen block."}
    )

    # GRPOConfig fields whose defaults follow the SPG paper.
    scale_rewards: str = field(
        default="none", metadata={"help": "Advantage scaling; SPG uses raw group-centred rewards ('none')."}
    )
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; SPG supports only 0."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature of the rollouts."})
    max_completion_length: int | None = field(default=256, metadata={"help": "Generated tokens per rollout."})
    learning_rate: float = field(default=3e-6, metadata={"help": "Initial learning rate for AdamW."})

    def __post_init__(self):
        super().__post_init__()
        self._default_decoding_lengths()
        problems = []
        if self.use_vllm:
            problems.append("use_vllm=True: vLLM decodes autoregressively; SPG rollouts use diffusion decoding.")
        if self.use_transformers_continuous_batching or self.use_transformers_paged:
            problems.append("transformers continuous batching is autoregressive; turn it off.")
        if self.beta != 0:
            problems.append(f"beta={self.beta}: SPG has no KL penalty (the paper uses none); set beta=0.0.")
        if self.remasking not in REMASKING_STRATEGIES:
            problems.append(f"remasking={self.remasking!r}: choose one of {REMASKING_STRATEGIES}.")
        if self.negative_bound not in NEGATIVE_BOUNDS:
            problems.append(f"negative_bound={self.negative_bound!r}: choose one of {NEGATIVE_BOUNDS}.")
        if self.masking_strategy not in MASKING_STRATEGIES:
            problems.append(f"masking_strategy={self.masking_strategy!r}: choose one of {MASKING_STRATEGIES}.")
        if not 0.0 <= self.mix_weight <= 1.0:
            problems.append(f"mix_weight={self.mix_weight}: the mixture weight must lie in [0, 1].")
        if self.eubo_beta <= 0:
            problems.append(f"eubo_beta={self.eubo_beta}: the EUBO needs beta > 0 (the paper uses 1.0 to 2.0).")
        if self.num_mc_masks < 1:
            problems.append(f"num_mc_masks={self.num_mc_masks}: use at least one Monte Carlo mask.")
        if self.masking_strategy == "all" and self.num_mc_masks != 1:
            problems.append(
                "masking_strategy='all' masks the whole completion: every mask is the same, so set num_mc_masks=1."
            )
        if not 0.0 <= self.min_mask_ratio <= self.max_mask_ratio <= 1.0:
            problems.append(
                f"min_mask_ratio={self.min_mask_ratio}, max_mask_ratio={self.max_mask_ratio}: need 0 <= min <= max <= 1."
            )
        if not 0.0 <= self.p_mask_prompt < 1.0:
            problems.append(f"p_mask_prompt={self.p_mask_prompt}: must lie in [0, 1).")
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
        # GRPO options that would change the objective but that SPG's loss does not implement.
        if self.top_entropy_quantile != 1.0:
            problems.append("top_entropy_quantile < 1: SPG has no per-token entropies to filter on; leave it at 1.0.")
        if self.entropy_coef != 0 or self.use_adaptive_entropy:
            problems.append("entropy bonuses are not part of SPG; set entropy_coef=0 and use_adaptive_entropy=False.")
        if self.off_policy_mask_threshold is not None:
            problems.append(
                "off_policy_mask_threshold needs importance ratios, which SPG does not use; leave it None."
            )
        if self.delta is not None:
            problems.append("delta clips importance ratios, which SPG does not use; leave it None.")
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
        if problems:
            raise ValueError("Invalid SPGConfig:\n- " + "\n- ".join(problems))
        ignored = [
            f"{name}={getattr(self, name)!r}"
            for name in _IGNORED_GRPO_FIELDS
            if getattr(self, name) != _GRPO_DEFAULTS[name]
        ]
        if ignored:
            warnings.warn(
                f"SPGConfig ignores {', '.join(ignored)}: SPG's loss has no importance ratio or clipping.",
                stacklevel=3,
            )

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
