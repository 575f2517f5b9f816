"""The straightforward implementations the optimised hot paths replaced, kept for side-by-side timing.

`reference_generate` is the sampler as it was (float64 Gumbel noise and float64 copies of the whole block's logits
at every step); `reference_token_logprobs` is the estimator's log-prob as it was (``gather - logsumexp`` through
autograd). Same outputs as `trl_spg` at temperature 0 (token for token) and for the log-probs (to rounding).
"""

from __future__ import annotations

import torch

from trl_spg.modeling import forward_logits
from trl_spg.sampler import reveal_schedule, top_k_positions


def reference_token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def _gumbel_max_sample(logits, temperature, generator):
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator, device=generator.device, dtype=torch.float64).to(logits.device)
    gumbel = -torch.log(-torch.log(u.clamp(min=torch.finfo(torch.float64).tiny)))
    return (logits.double() / temperature + gumbel).argmax(-1)


def _reveal_confidence(logits, tokens, remasking, generator):
    if remasking == "low_confidence":
        logits = logits.float()
        return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return torch.rand(tokens.shape, generator=generator, device=generator.device).to(logits.device)


@torch.no_grad()
def reference_generate(
    model,
    prompt_ids,
    prompt_mask,
    *,
    mask_token_id,
    gen_length,
    block_length,
    steps,
    temperature=0.0,
    remasking="low_confidence",
    generator=None,
):
    num_blocks = gen_length // block_length
    batch, prompt_width = prompt_ids.shape
    device = prompt_ids.device
    canvas = torch.cat([prompt_ids, prompt_ids.new_full((batch, gen_length), mask_token_id)], dim=1)
    attention_mask = torch.cat([prompt_mask.long(), prompt_mask.new_ones((batch, gen_length)).long()], dim=1)
    schedule = reveal_schedule(block_length, steps // num_blocks)
    for block in range(num_blocks):
        start = prompt_width + block * block_length
        positions = torch.arange(start, start + block_length, device=device)
        for k in schedule:
            if k == 0:
                continue
            logits = forward_logits(model, canvas, attention_mask, keep=positions)
            logits[..., mask_token_id] = float("-inf")
            current = canvas[:, start : start + block_length]
            still_masked = current == mask_token_id
            candidates = _gumbel_max_sample(logits, temperature, generator)
            confidence = _reveal_confidence(logits, candidates, remasking, generator)
            reveal = top_k_positions(confidence, still_masked, k)
            canvas[:, start : start + block_length] = torch.where(reveal, candidates, current)
    return canvas[:, prompt_width:]
