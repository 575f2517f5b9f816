"""`SPGConfig`: TRL's `GRPOConfig` plus the settings of SPG's bounds, Monte Carlo masking and diffusion decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..bounds import NEGATIVE_BOUNDS
from ..masking import BLOCK_SAMPLINGS, MASKING_STRATEGIES
from .diffusion_config import DiffusionGRPOConfig


@dataclass
class SPGConfig(DiffusionGRPOConfig):
    r"""
    Configuration class for [`SPGTrainer`]: everything in TRL's `GRPOConfig` and the diffusion decoding settings of
    [`DiffusionGRPOConfig`], plus SPG's settings.

    SPG maximises a lower bound (ELBO) of the log-likelihood of samples with positive advantage and minimises an
    upper bound (EUBO, or an ELBO/EUBO mixture) for the others, both estimated with Monte Carlo masking; rollouts
    come from semi-autoregressive diffusion decoding. The completion length is GRPO's `max_completion_length`.
    SPG uses no importance ratio and no clipping: `loss_type`, `epsilon`, `epsilon_high` and
    `importance_sampling_level` are ignored.

    Parameters:
        (The rollout settings, `mask_token_id` and `p_mask_prompt` are [`DiffusionGRPOConfig`]'s.)

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
        block_sampling (`str`, *optional*, defaults to `"stratified"`):
            How the `block_*` strategies choose the block of each of a completion's `num_mc_masks` masks:
            `"stratified"` (the masks take the blocks of one random permutation in turn, so they differ where
            possible) or `"independent"` (each uniformly on its own). Both estimate the same ELBO;
            `"stratified"` measured lower ELBO and EUBO variance (`benchmarks/block_sampling_variance.py`).

        > Defaults that differ from `GRPOConfig`

        scale_rewards: `"none"` (advantages are not divided by the group std).
        beta: `0.0` (no KL penalty; SPG rejects `beta > 0`).
        temperature: `0.9`; max_completion_length: `256`; learning_rate: `3e-6`.
    """

    _ratio_free_method = "SPG"

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
    block_sampling: str = field(
        default="stratified",
        metadata={
            "help": "Block choice of a completion's Monte Carlo masks: 'stratified' (different blocks where "
            "possible) or 'independent'.",
            "choices": list(BLOCK_SAMPLINGS),
        },
    )

    # GRPOConfig fields whose defaults follow the SPG paper.
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; SPG supports only 0."})

    def _problems(self) -> list[str]:
        problems = super()._problems()
        if self.negative_bound not in NEGATIVE_BOUNDS:
            problems.append(f"negative_bound={self.negative_bound!r}: choose one of {NEGATIVE_BOUNDS}.")
        if self.masking_strategy not in MASKING_STRATEGIES:
            problems.append(f"masking_strategy={self.masking_strategy!r}: choose one of {MASKING_STRATEGIES}.")
        if self.block_sampling not in BLOCK_SAMPLINGS:
            problems.append(f"block_sampling={self.block_sampling!r}: choose one of {BLOCK_SAMPLINGS}.")
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
        return problems
