"""Semi-autoregressive masked diffusion decoding (the LLaDA sampler used for SPG's rollouts).

The canvas is the left-padded prompt followed by ``gen_length`` mask tokens, cut into blocks of ``block_length``
decoded left to right. Each block gets ``steps / num_blocks`` steps; at every step the model predicts all of the
block's positions at once, a candidate token is drawn for each (Gumbel-max at temperature ``T``, argmax at
``T = 0``), and the ``k`` most confident still-masked positions of the block are revealed. Revealed tokens never
change.
"""

from __future__ import annotations

import torch

from .modeling import forward_logits

REMASKING_STRATEGIES = ("low_confidence", "random")


def reveal_schedule(num_masked: int, steps: int) -> list[int]:
    """Tokens revealed at each of ``steps`` steps: ``num_masked // steps`` each, the remainder to the first steps."""
    base, remainder = divmod(num_masked, steps)
    return [base + (1 if step < remainder else 0) for step in range(steps)]


def gumbel_max_sample(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``argmax(logits / T + G)`` with ``G ~ Gumbel(0, 1)`` drawn in float64 (a draw from ``softmax(logits / T)``).

    float64 keeps the ``-log(-log u)`` tail exact enough that low-probability tokens keep their true odds;
    ``T = 0`` is the plain argmax.
    """
    if temperature == 0:
        return logits.argmax(-1)
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, device=device, dtype=torch.float64).to(logits.device)
    gumbel = -torch.log(-torch.log(u.clamp(min=torch.finfo(torch.float64).tiny)))
    return (logits.double() / temperature + gumbel).argmax(-1)


def reveal_confidence(
    logits: torch.Tensor, tokens: torch.Tensor, remasking: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Score deciding which positions are revealed first.

    ``low_confidence``: the model's log-probability of the chosen token, ``logit[x0] - logsumexp(logits)`` (same
    order as the softmax probability; no vocabulary-sized softmax is materialised). ``random``: uniform noise.
    """
    if remasking == "low_confidence":
        logits = logits.float()
        return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    if remasking == "random":
        device = generator.device if generator is not None else logits.device
        return torch.rand(tokens.shape, generator=generator, device=device).to(logits.device)
    raise ValueError(f"Unknown remasking {remasking!r}; choose one of {REMASKING_STRATEGIES}.")


def top_k_positions(score: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Boolean mask of the ``k`` highest-scoring eligible positions per row (``k`` per row or shared), batched."""
    score = torch.where(eligible, score, float("-inf"))
    ranks = score.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    k = torch.as_tensor(k, device=score.device)
    return eligible & (ranks < (k.unsqueeze(-1) if k.dim() else k))


@torch.no_grad()
def diffusion_generate(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    mask_token_id: int,
    gen_length: int,
    block_length: int,
    steps: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate ``gen_length`` tokens after each left-padded prompt; returns the completion ids (B, gen_length).

    ``steps`` is the total number of denoising steps; it must be a multiple of ``gen_length / block_length``.
    Pads (``prompt_mask == 0``) are never attended. The caller cuts completions at their first EOS.
    """
    if gen_length % block_length:
        raise ValueError(f"block_length ({block_length}) must divide gen_length ({gen_length}).")
    num_blocks = gen_length // block_length
    if steps % num_blocks or steps < num_blocks:
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of blocks ({num_blocks}).")
    if remasking not in REMASKING_STRATEGIES:
        raise ValueError(f"Unknown remasking {remasking!r}; choose one of {REMASKING_STRATEGIES}.")

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
            # A revealed [MASK] would stay masked and break the reveal count, so it is never a candidate.
            logits[..., mask_token_id] = float("-inf")
            current = canvas[:, start : start + block_length]
            still_masked = current == mask_token_id
            candidates = gumbel_max_sample(logits, temperature, generator)
            confidence = reveal_confidence(logits, candidates, remasking, generator)
            reveal = top_k_positions(confidence, still_masked, k)
            canvas[:, start : start + block_length] = torch.where(reveal, candidates, current)
    return canvas[:, prompt_width:]


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_token_ids: int | list[int]) -> torch.Tensor:
    """1 on completion tokens up to and including the first EOS (the whole row when there is none), else 0."""
    eos = torch.as_tensor(eos_token_ids, device=completion_ids.device).reshape(-1)
    is_eos = torch.isin(completion_ids, eos)
    after_first_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after_first_eos).long()
