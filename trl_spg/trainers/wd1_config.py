"""`WD1Config`: the settings of wd1 (`trl_spg.trainers.wd1_trainer`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .diffusion_config import DiffusionGRPOConfig


@dataclass
class WD1Config(DiffusionGRPOConfig):
    r"""
    Configuration class for [`WD1Trainer`]: [`DiffusionGRPOConfig`] plus wd1's weight temperature.

    wd1 has no importance ratio, clipping or KL term: `loss_type`, `epsilon`, `epsilon_high` and
    `importance_sampling_level` are ignored (with a warning) and `beta` must stay 0.

    Parameters:
        psi (`float`, *optional*, defaults to `1.0`):
            Temperature of the group softmax weights `softmax(+-psi * A)` (wd1's code: 1, the plain softmax).

        (`p_mask_prompt`, 0.15 as in d1, is [`DiffusionGRPOConfig`]'s: the probability of masking each prompt token
        in the one-step estimate, drawn afresh for every micro-step; the completion is always fully masked.)
    """

    _ratio_free_method = "wd1"

    psi: float = field(default=1.0, metadata={"help": "Temperature of wd1's group softmax weights (> 0)."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; wd1 supports only 0."})

    def _problems(self) -> list[str]:
        problems = super()._problems()
        if self.psi <= 0:
            problems.append(f"psi={self.psi}: the weight temperature must be positive.")
        return problems
