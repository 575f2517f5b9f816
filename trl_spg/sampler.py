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

Fast modes (opt-in; Fast-dLLM, arXiv 2505.22618). They do less work per rollout and are approximations: the
defaults above stay the exact sampler.

* Threshold decoding (``decoding="threshold"``) is parallel decoding with a confidence threshold. At every forward,
  each row reveals every masked position of the block whose candidate has probability ``>= threshold`` under the
  model (``T = 1``, the [MASK] logit excluded). It also reveals at least a per-step minimum of its most confident
  (or, with ``remasking="random"``, random) positions. A block ends when every row has revealed it; rows that finish
  earlier stop changing while the others continue, and the batch runs as many forwards as its slowest row.
  "Steps" here means forwards. By default the minimum at the ``i``-th forward of a block is the fixed schedule's
  count for step ``i``, so a block never takes more than ``steps / num_blocks`` forwards. With that default and a
  threshold no confidence reaches, decoding is exactly the fixed schedule.
  ``min_tokens_per_step=m`` replaces the minimum with ``m`` (Fast-dLLM uses 1); ``steps`` then only has to be
  valid.
* Block-wise KV cache (``kv_cache="prefix"`` / ``"dual"``, `trl_spg.modeling.BlockKVCache`). The first forward of
  every block is a full forward that also keeps every layer's keys and values. The block's later forwards run the
  model on the block only (``dual``: the positions before and after it come from the cache) or on the block and
  everything after it (``prefix``: the positions before it come from the cache). With bidirectional attention the
  cached keys and values go stale as soon as any token is revealed, so this is an approximation refreshed at block
  boundaries (and every ``cache_refresh_every`` forwards, if set). Refreshing at every forward gives the exact
  sampler's logits, hence its tokens.

Both combine. Randomness comes only from the ``generator`` argument.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from .decoding import REMASKING_STRATEGIES, DecodingConfig
from .modeling import BlockKVCache, forward_logits


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


def _block_logits(model, cache, canvas, attention_mask, positions, step, refresh_every, rows=None):
    """Logits of the block's positions at the block's ``step``-th forward: exact, or from the block-wise KV cache.

    The cache is refreshed (a full forward, exact logits) at the block's first forward and then every
    ``refresh_every`` forwards (None: never again within the block). ``rows`` (batch indices) restricts the forward
    to those rows of the canvas.
    """
    if cache is None:
        if rows is not None:
            canvas, attention_mask = canvas[rows], attention_mask[rows]
        return forward_logits(model, canvas, attention_mask, keep=positions)
    if step == 0 or (refresh_every is not None and step % refresh_every == 0):
        return cache.refresh(canvas, attention_mask, positions, rows)
    return cache.logits(canvas, attention_mask, positions, rows)


@torch.no_grad()
def diffusion_generate(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    config: DecodingConfig | None = None,
    *,
    mask_token_id: int,
    generator: torch.Generator | None = None,
    **settings,
) -> torch.Tensor:
    """Generate ``gen_length`` tokens after each left-padded prompt; returns the completion ids (B, gen_length).

    The settings are a `DecodingConfig` (``config``), or its fields as keywords (``gen_length=...``), which also
    override the fields of a given ``config``; they are validated first. Pads (``prompt_mask == 0``) are never
    attended. The caller cuts completions at their first EOS.

    The defaults (``decoding="fixed"``, ``kv_cache="none"``) are the exact sampler: ``steps / num_blocks`` forwards
    per block, each revealing `reveal_schedule`'s count. The fast modes are opt-in (see the module docstring):

    * ``decoding="threshold"``: at each forward, every row reveals each masked position of the block whose
      candidate has probability ``>= threshold`` under the model, and at least the per-step minimum (the exact
      schedule's count for that step, or ``min_tokens_per_step`` when given) of its most confident / random ones
      (``remasking``); a block ends when all its rows are revealed, so the exact schedule caps a block at
      ``steps / num_blocks`` forwards;
    * ``kv_cache="prefix"`` / ``"dual"``: an approximate block-wise KV cache (`trl_spg.modeling.BlockKVCache`),
      refreshed by a full forward at the first forward of every block and then every ``cache_refresh_every``
      forwards of the block (None: once per block; 1: every forward, which is the exact sampler).

    Randomness comes only from ``generator``.
    """
    config = (DecodingConfig(**settings) if config is None else replace(config, **settings)).validated()
    gen_length, block_length, steps = config.gen_length, config.block_length, config.steps
    temperature, remasking, decoding = config.temperature, config.remasking, config.decoding
    threshold, min_tokens_per_step = config.threshold, config.min_tokens_per_step
    kv_cache, cache_refresh_every = config.kv_cache, config.cache_refresh_every
    num_blocks = gen_length // block_length

    batch, prompt_width = prompt_ids.shape
    device = prompt_ids.device
    canvas = torch.cat([prompt_ids, prompt_ids.new_full((batch, gen_length), mask_token_id)], dim=1)
    attention_mask = torch.cat([prompt_mask.long(), prompt_mask.new_ones((batch, gen_length)).long()], dim=1)
    schedule = reveal_schedule(block_length, steps // num_blocks)
    row_offsets = torch.arange(batch, device=device).unsqueeze(-1) * block_length
    cache = BlockKVCache(model, kv_cache) if kv_cache != "none" else None

    for block in range(num_blocks):
        start = prompt_width + block * block_length
        positions = torch.arange(start, start + block_length, device=device)
        if decoding == "threshold":
            _decode_block_by_threshold(
                model, cache, canvas, attention_mask, positions, schedule, row_offsets,
                mask_token_id=mask_token_id, temperature=temperature, remasking=remasking, generator=generator,
                threshold=threshold, min_tokens_per_step=min_tokens_per_step, refresh_every=cache_refresh_every,
            )  # fmt: skip
            continue
        remaining = block_length  # masked positions of the block, the same in every row
        step = 0
        for k in schedule:
            if k == 0:
                continue
            logits = _block_logits(model, cache, canvas, attention_mask, positions, step, cache_refresh_every)
            step += 1
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


def _decode_block_by_threshold(
    model,
    cache,
    canvas,
    attention_mask,
    positions,
    schedule,
    row_offsets,
    *,
    mask_token_id,
    temperature,
    remasking,
    generator,
    threshold,
    min_tokens_per_step,
    refresh_every,
):
    """Decode one block in place with confidence-threshold parallel decoding (see `diffusion_generate`).

    Rows reveal different numbers of tokens per forward, so each row has its own count of masked positions: the
    vocabulary-wide work runs on ``width`` slots per row (the largest count), and slots past a row's count are
    ignored. A row whose block is complete stops changing and is no longer fed to the model (nor kept in the KV
    cache) while the others continue; the batch runs as many forwards as its slowest row. When every row reveals
    exactly the minimum, all rows stay active and the slots, the generator draws and the revealed positions are those
    of the fixed schedule, so a threshold that no confidence reaches (with the default minimum) reproduces the exact
    sampler.
    """
    block_length = positions.numel()
    start = int(positions[0])
    log_threshold = math.log(threshold)
    all_rows = torch.arange(canvas.shape[0], device=canvas.device)
    for step in range(block_length):  # at least one reveal per row and forward: the block ends within block_length
        counts = (canvas[:, start : start + block_length] == mask_token_id).sum(-1)
        active = counts > 0
        num_active = int(active.sum())
        if num_active == 0:
            return
        # Only the rows still decoding this block are fed to the model (all of them while none has finished).
        rows = all_rows if num_active == len(all_rows) else all_rows[active]
        logits = _block_logits(
            model, cache, canvas, attention_mask, positions, step, refresh_every,
            rows=None if rows is all_rows else rows,
        )  # fmt: skip
        current = canvas[rows, start : start + block_length]
        still_masked = current == mask_token_id
        counts = counts[rows]
        width = int(counts.max())
        # The fixed schedule's count, at least 1 (its trailing zeros, when steps exceed the block, are never reached).
        minimum = min_tokens_per_step or max(schedule[step] if step < len(schedule) else 1, 1)
        masked_at = (~still_masked).to(torch.uint8).argsort(dim=-1, stable=True)[:, :width]
        valid = still_masked.gather(1, masked_at)
        vocab = logits.shape[-1]
        flat = (masked_at + row_offsets[: len(rows)]).flatten()
        masked_logits = logits.reshape(-1, vocab).index_select(0, flat).view(len(rows), width, vocab)
        del logits
        masked_logits[..., mask_token_id] = float("-inf")
        candidates = sample_tokens(masked_logits, temperature, generator)
        confidence = reveal_confidence(masked_logits, candidates, "low_confidence")
        if remasking == "low_confidence":
            order = confidence
        else:  # the minimum is drawn at random; the threshold still applies to the model's confidence
            order = reveal_confidence(current, current, remasking, generator).gather(1, masked_at)
        del masked_logits
        reveal = top_k_positions(order, valid, counts.clamp(max=minimum)) | (valid & (confidence >= log_threshold))
        revealed = torch.where(reveal, candidates, current.gather(1, masked_at))
        canvas[rows, start : start + block_length] = current.scatter(1, masked_at, revealed)


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_token_ids: int | list[int]) -> torch.Tensor:
    """1 on completion tokens up to and including the first EOS (the whole row when there is none), else 0."""
    eos = torch.as_tensor(eos_token_ids, device=completion_ids.device).reshape(-1)
    is_eos = torch.isin(completion_ids, eos)
    after_first_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after_first_eos).long()
