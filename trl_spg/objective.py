"""SPG's objective on one micro-batch: Monte Carlo masks -> masked token log-probs -> bounds -> loss.

`SPGObjective` holds the settings (the `SPGConfig` fields of the same names) and computes the loss of a micro-batch in
TRL's layout (``prompt_ids``, ``prompt_mask``, ``completion_ids``, ``completion_mask``, ``advantages``). The trainer,
the benchmarks and the diagnostics all go through it, so they estimate exactly the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .bounds import spg_bounds, spg_loss
from .masking import MonteCarloMasks, sample_masks
from .scoring import masked_token_logprobs


@dataclass
class SPGLossOutput:
    """The micro-batch loss and what it was computed from (per-sample bounds, masks, lengths and advantages)."""

    loss: torch.Tensor
    bounds: dict[str, torch.Tensor | None]
    masks: MonteCarloMasks
    lengths: torch.Tensor
    advantages: torch.Tensor


@dataclass(frozen=True)
class SPGObjective:
    """Settings of SPG's bounds and Monte Carlo masking; see `SPGConfig` for the meaning of each field."""

    negative_bound: str = "mix"
    eubo_beta: float = 1.5
    mix_weight: float = 0.5
    masking_strategy: str = "block_random"
    num_mc_masks: int = 2
    block_length: int = 32
    min_mask_ratio: float = 0.0
    max_mask_ratio: float = 1.0
    p_mask_prompt: float = 0.15
    block_sampling: str = "stratified"
    #: Whether the completion's tail (after its first EOS) is visible in the input: `likelihood_canvas="visible"`.
    tail_visible: bool = False

    @classmethod
    def from_config(cls, config) -> SPGObjective:
        """The objective an `SPGConfig` (or any object with these attributes) describes."""
        settings = {field.name: getattr(config, field.name) for field in fields(cls) if field.name != "tail_visible"}
        return cls(**settings, tail_visible=getattr(config, "likelihood_canvas", "masked") == "visible")

    def sample_masks(self, prompt_mask: torch.Tensor, completion_mask: torch.Tensor, generator) -> MonteCarloMasks:
        return sample_masks(
            prompt_mask,
            completion_mask,
            num_masks=self.num_mc_masks,
            strategy=self.masking_strategy,
            block_length=self.block_length,
            min_t=self.min_mask_ratio,
            max_t=self.max_mask_ratio,
            p_mask_prompt=self.p_mask_prompt,
            block_sampling=self.block_sampling,
            tail_visible=self.tail_visible,
            generator=generator,
        )

    def loss(
        self,
        model,
        inputs: dict[str, torch.Tensor],
        *,
        mask_token_id: int,
        generator: torch.Generator,
        chunk_size: int | None = None,
    ) -> SPGLossOutput:
        """``-sum_j A_j L_j bound_j / sum_j L_j`` over the micro-batch, with bounds from fresh masks of ``generator``.

        The masks' random numbers come from ``generator`` (drawn on its device, used on the batch's). Token-level
        advantages (B, C) are constant over a completion for SPG; their first column is used.
        """
        prompt_mask, completion_mask = inputs["prompt_mask"], inputs["completion_mask"]
        advantages = inputs["advantages"]
        if advantages.dim() > 1:
            advantages = advantages[:, 0]
        masks = self.sample_masks(prompt_mask, completion_mask, generator)
        token_logps = masked_token_logprobs(
            model,
            inputs["prompt_ids"],
            prompt_mask,
            inputs["completion_ids"],
            masks,
            mask_token_id,
            chunk_size=chunk_size,
        )
        lengths = completion_mask.sum(-1)
        bounds = spg_bounds(
            token_logps,
            masks.scored,
            lengths,
            advantages,
            negative=self.negative_bound,
            beta=self.eubo_beta,
            mix_weight=self.mix_weight,
        )
        loss = spg_loss(advantages, bounds["selected"], lengths)
        return SPGLossOutput(loss=loss, bounds=bounds, masks=masks, lengths=lengths, advantages=advantages)
