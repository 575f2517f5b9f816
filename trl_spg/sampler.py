"""Semi-autoregressive masked diffusion decoding (the LLaDA sampler used for SPG's rollouts).

The canvas is the left-padded prompt followed by ``gen_length`` mask tokens, cut into blocks of ``block_length``
decoded left to right. Each block gets ``steps / num_blocks`` steps; at every step the model predicts all of the
block's positions at once, a candidate token is drawn for each still-masked position (an exact draw from
``softmax(logits / T)``, argmax at ``T = 0``), and the ``k`` most confident of them are revealed. Revealed tokens
never change.

Cost. Every row reveals the same number of tokens per step, so after ``s`` reveals each row has exactly
``block_length - s`` masked positions: the sampler gathers the logits of just those positions (no host sync) and
does all vocabulary-wide work (candidate draw, confidence) on them only. The candidate draw is an inverse-CDF
lookup with one float64 uniform per position instead of a float64 Gumbel variate per vocabulary entry.
"""

from __future__ import annotations

import torch

from .modeling import forward_logits

REMASKING_STRATEGIES = ("low_confidence", "random")


def reveal_schedule(num_masked: int, steps: int) -> list[int]:
    """Tokens revealed at each of ``steps`` steps: ``num_masked // steps`` each, the remainder to the first steps."""
    base, remainder = divmod(num_masked, steps)
    return [base + (1 if step < remainder else 0) for step in range(steps)]


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """float64 U[0, 1) draws on the generator's device, returned on ``device``."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source, dtype=torch.float64).to(device)


def inverse_cdf_sample(logits: torch.Tensor, temperature: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Per position, the token whose interval of the CDF of ``softmax(logits / T)`` holds the uniform in ``uniforms``.

    ``uniforms`` (shaped like ``logits[..., 0]``) are U[0, 1) draws. The weights ``exp((logits - max) / T)`` and
    their running sum are float64, so each token's interval has its exact width up to float64 rounding (about
    ``2**-52`` of the total, the resolution of float64 Gumbel noise); tokens of weight 0 (``-inf`` logits) have
    empty intervals and are never drawn. Like Gumbel-max, a row with ``+inf`` logits gives its first ``+inf`` token
    and a row of ``-inf`` gives token 0.
    """
    weights = logits.double()
    # A finite shift keeps +inf logits (weight +inf, first one drawn) and -inf rows (all weights 0) free of NaN.
    finite = torch.finfo(torch.float64).max
    weights.sub_(weights.amax(-1, keepdim=True).clamp_(-finite, finite)).div_(temperature).exp_()
    cdf = weights.cumsum_(-1)
    total = cdf[..., -1:]
    # u * total < total, so the draw lands on a token of positive weight even when the product rounds up.
    target = torch.fmin(uniforms.unsqueeze(-1).to(cdf) * total, total.nextafter(torch.zeros_like(total)))
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return torch.where(total.squeeze(-1) > 0, tokens, 0).clamp_(max=logits.shape[-1] - 1)


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per position drawn exactly from ``softmax(logits / T)`` (`inverse_cdf_sample`); ``T = 0`` is argmax.

    Draws one float64 uniform per position from ``generator``.
    """
    if temperature == 0:
        return logits.argmax(-1)
    return inverse_cdf_sample(logits, temperature, _uniform(logits.shape[:-1], generator, logits.device))


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
    row_offsets = torch.arange(batch, device=device).unsqueeze(-1) * block_length

    for block in range(num_blocks):
        start = prompt_width + block * block_length
        positions = torch.arange(start, start + block_length, device=device)
        remaining = block_length  # masked positions of the block, the same in every row
        for k in schedule:
            if k == 0:
                continue
            logits = forward_logits(model, canvas, attention_mask, keep=positions)
            current = canvas[:, start : start + block_length]
            still_masked = current == mask_token_id
            # The `remaining` masked positions of each row, in position order (masked sort first, stably).
            masked_at = (~still_masked).to(torch.uint8).argsort(dim=-1, stable=True)[:, :remaining]
            rows = (masked_at + row_offsets).flatten()
            vocab = logits.shape[-1]
            masked_logits = logits.reshape(-1, vocab).index_select(0, rows).view(batch, remaining, vocab)
            del logits
            # A revealed [MASK] would stay masked and break the reveal count, so it is never a candidate.
            masked_logits[..., mask_token_id] = float("-inf")
            candidates = sample_tokens(masked_logits, temperature, generator)
            if remasking == "low_confidence":
                confidence = reveal_confidence(masked_logits, candidates, remasking)
            else:  # random: one uniform per block position, however many are still masked
                confidence = reveal_confidence(current, current, remasking, generator).gather(1, masked_at)
            del masked_logits
            reveal = top_k_positions(confidence, still_masked.gather(1, masked_at), k)
            revealed = torch.where(reveal, candidates, current.gather(1, masked_at))
            canvas[:, start : start + block_length] = current.scatter(1, masked_at, revealed)
            remaining -= k
    return canvas[:, prompt_width:]


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_token_ids: int | list[int]) -> torch.Tensor:
    """1 on completion tokens up to and including the first EOS (the whole row when there is none), else 0."""
    eos = torch.as_tensor(eos_token_ids, device=completion_ids.device).reshape(-1)
    is_eos = torch.isin(completion_ids, eos)
    after_first_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after_first_eos).long()
