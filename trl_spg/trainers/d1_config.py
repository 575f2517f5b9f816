"""`DiffuGRPOConfig`: the settings of d1 / diffu-GRPO (`trl_spg.trainers.d1_trainer`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .diffusion_config import DiffusionGRPOConfig


@dataclass
class DiffuGRPOConfig(DiffusionGRPOConfig):
    r"""
    Configuration class for [`DiffuGRPOTrainer`] (d1 / diffu-GRPO): [`DiffusionGRPOConfig`] plus d1's prompt masking.

    Every GRPO loss option works as in TRL (`loss_type`, `epsilon`, `epsilon_high`, `beta`, `num_iterations`,
    `importance_sampling_level`, ...): only the per-token log-probabilities differ.

    Parameters:
        (`p_mask_prompt`, 0.15 as in d1, is [`DiffusionGRPOConfig`]'s: the probability of masking each prompt token
        in the one-step estimate, drawn afresh for each inner iteration; the completion is always fully masked.)

        > Defaults that differ from `GRPOConfig` (beside those of `DiffusionGRPOConfig`)

        beta: `0.04` (KL to the reference model; d1's value, also in the SPG reference's d1 runs).
        use_bias_correction_kl: `False` (d1 adds the plain k3 estimate of the KL; TRL's default multiplies it by the
        importance ratio).
        epsilon: `0.5` (clipping range of the SPG reference's d1 runs; d1's paper writes 0.2).
        loss_type: `"bnpo"` (per-token loss averaged over the micro-batch's completion tokens, as the d1 code that the
        SPG reference runs computes it; `"grpo"` averages per sequence first, as d1's paper writes the objective).
    """

    # GRPOConfig fields whose defaults follow d1 as run by the SPG paper's reference code.
    beta: float = field(default=0.04, metadata={"help": "KL coefficient (d1: 0.04)."})
    use_bias_correction_kl: bool = field(
        default=False, metadata={"help": "Multiply the KL term by the importance ratio (d1: no, the plain k3 KL)."}
    )
    epsilon: float = field(
        default=0.5, metadata={"help": "Clipping range (SPG reference d1 runs: 0.5; d1's paper: 0.2)."}
    )
    loss_type: str = field(
        default="bnpo", metadata={"help": "GRPO loss normalisation; 'bnpo' = token mean over the micro-batch."}
    )
