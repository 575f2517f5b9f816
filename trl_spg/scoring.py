"""Token log-probabilities of completions under Monte Carlo masks: the model forward behind SPG's bounds."""

from __future__ import annotations

import torch

from .bounds import token_logprobs
from .masking import MonteCarloMasks, apply_masks
from .modeling import forward_logits


def masked_token_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    masks: MonteCarloMasks,
    mask_token_id: int,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``l_{i,tau} = log pi(x_i | z^tau, c)`` for every completion position: (B, m, C), float32.

    The ``m`` masked copies of each sequence go through the model as one batch of ``B * m`` rows; logits are only
    requested for the completion positions. Values at unscored positions are computed but carry no meaning.

    Memory: the logits are the only vocabulary-sized tensor. `trl_spg.bounds.token_logprobs` normalises them
    ``chunk_size`` positions at a time and, since nothing else reads them, writes their gradient over them in the
    backward.
    """
    batch, num_masks, _ = masks.noised.shape
    prompt_width, completion_width = prompt_ids.shape[1], completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    noisy = apply_masks(input_ids, masks.noised, mask_token_id).reshape(batch * num_masks, -1)
    attention_mask = torch.cat([prompt_mask.long(), torch.ones_like(completion_ids)], dim=1)
    attention_mask = attention_mask.repeat_interleave(num_masks, dim=0)
    keep = torch.arange(prompt_width, prompt_width + completion_width, device=input_ids.device)
    logits = forward_logits(model, noisy, attention_mask, keep=keep)
    targets = completion_ids.repeat_interleave(num_masks, dim=0)
    token_logps = token_logprobs(logits, targets, chunk_size=chunk_size, inplace_backward=True)
    return token_logps.reshape(batch, num_masks, completion_width)
