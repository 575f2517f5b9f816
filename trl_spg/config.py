"""`SPGConfig`: TRL's `GRPOConfig` plus the settings of SPG's bounds, Monte Carlo masking and diffusion decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .bounds import NEGATIVE_BOUNDS
from .masking import MASKING_STRATEGIES
from .sampler import DECODING_MODES, KV_CACHES, REMASKING_STRATEGIES, decoding_option_problems


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

        block_length (`int`, *optional*, defaults to `32`):
            Tokens per block of semi-autoregressive decoding; blocks are decoded left to right. Must divide
            `max_completion_length`. Also the block size of the `block_*` masking strategies.
        diffusion_steps (`int`, *optional*, defaults to `128`):
            Denoising steps (model forwards) per rollout, split evenly over the blocks; must be a multiple of
            `max_completion_length / block_length`.
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
            start of every block. Needs a transformers model (LLaDA / Dream as loaded by `trl_spg`).
        rollout_cache_refresh_every (`int` or `None`, *optional*, defaults to `None`):
            Also refresh the KV cache every this many forwards within a block (`None`: only at block starts; `1`:
            every forward, i.e. the exact sampler's logits).

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

    block_length: int = field(
        default=32,
        metadata={"help": "Tokens per block of semi-autoregressive decoding; must divide max_completion_length."},
    )
    diffusion_steps: int = field(
        default=128,
        metadata={"help": "Denoising steps per rollout; a multiple of max_completion_length / block_length."},
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
        problems = []
        if self.use_vllm:
            problems.append("use_vllm=True: vLLM decodes autoregressively; SPG rollouts use diffusion decoding.")
        if self.use_transformers_continuous_batching or self.use_transformers_paged:
            problems.append("transformers continuous batching is autoregressive; turn it off.")
        if self.beta != 0:
            problems.append(f"beta={self.beta}: SPG has no KL penalty (the paper uses none); set beta=0.0.")
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
        if problems:
            raise ValueError("Invalid SPGConfig:\n- " + "\n- ".join(problems))
