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

Batch compaction (``compact_batch``, on by default; exact, with every mode above). Callers keep a completion up to
its first EOS only, and revealed tokens never change, so once a row's first EOS and every position before it are
revealed nothing they keep can change: given the EOS ids (``eos_token_id``), the sampler drops such a row from every
later forward, and its positions still masked then hold EOS in the result. Every step still draws the full batch's
uniforms and each row reads its own, so a row's tokens do not depend on which rows are still decoding: the
completions up to the first EOS, and the generator's final state, are those of ``compact_batch=False``. Full
forwards also compute each run of identical consecutive rows (the G rollouts of a prompt at the start) once. Rows
the model computes independently are assumed: a kernel whose rounding depends on the batch size (some GPU matmuls)
can flip near-ties, as any change of batch size does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def _noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """float32 U[0, 1) draws on the generator's device (random remasking's scores), returned on ``device``."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)


def _at_rows(draws: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor | None:
    """The full-batch ``draws`` of the rows fed to the model (``rows`` None: all of them)."""
    return draws if draws is None or rows is None else draws.index_select(0, rows)


class _DuplicateRows:
    """Forwards each run of consecutive identical rows (canvas and padding mask) once and copies its logits.

    The G rollouts of a prompt are consecutive and start from the same canvas; the model computes each row on its
    own, so a duplicate's logits are its first copy's. Looking costs a comparison and a host sync per forward, so it
    stops for the rest of the rollout at the first forward without duplicates (sampled rows diverge at the first
    reveal and seldom meet again; greedy copies stay identical and keep being found).
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def logits(self, model, canvas, attention_mask, positions):
        if self.enabled and len(canvas) > 1:
            same = (canvas[1:] == canvas[:-1]).all(-1) & (attention_mask[1:] == attention_mask[:-1]).all(-1)
            first = torch.cat([same.new_ones(1), ~same])
            if int(first.sum()) < len(canvas):
                logits = forward_logits(model, canvas[first], attention_mask[first], keep=positions)
                return logits.index_select(0, first.long().cumsum(0) - 1)
            self.enabled = False
        return forward_logits(model, canvas, attention_mask, keep=positions)


def _block_logits(model, cache, canvas, attention_mask, positions, step, refresh_every, rows=None, duplicates=None):
    """Logits of the block's positions at the block's ``step``-th forward: exact, or from the block-wise KV cache.

    The cache is refreshed (a full forward, exact logits) at the block's first forward and then every
    ``refresh_every`` forwards (None: never again within the block). ``rows`` (batch indices) restricts the forward
    to those rows of the canvas. ``duplicates`` (a `_DuplicateRows`, full forwards only) computes identical rows once.
    """
    if cache is None:
        if rows is not None:
            canvas, attention_mask = canvas[rows], attention_mask[rows]
        if duplicates is not None:
            return duplicates.logits(model, canvas, attention_mask, positions)
        return forward_logits(model, canvas, attention_mask, keep=positions)
    if step == 0 or (refresh_every is not None and step % refresh_every == 0):
        return cache.refresh(canvas, attention_mask, positions, rows)
    return cache.logits(canvas, attention_mask, positions, rows)


def finished_rows(completions: torch.Tensor, mask_token_id: int, eos: torch.Tensor) -> torch.Tensor:
    """Rows whose first EOS is revealed with every position before it revealed (bool, per row).

    Such a row's completion up to its first EOS is final: revealed tokens never change, and no EOS can appear
    before it. ``completions`` is the generated part of the canvas (or its start, up to the current block).
    """
    is_eos = torch.isin(completions, eos)
    first_stop = (is_eos | (completions == mask_token_id)).to(torch.uint8).argmax(-1, keepdim=True)
    return is_eos.gather(1, first_stop).squeeze(1)


def _drop_finished(canvas, rows, end, *, prompt_width, mask_token_id, eos):
    """The decoding rows (``rows``; None: all) without those finished on the canvas up to ``end``."""
    fed = canvas[:, prompt_width:end] if rows is None else canvas[rows, prompt_width:end]
    finished = finished_rows(fed, mask_token_id, eos)
    if not bool(finished.any()):
        return rows
    kept = (~finished).nonzero().squeeze(1)
    return kept if rows is None else rows[kept]


def _eos_ids(eos_token_id, mask_token_id: int, device) -> torch.Tensor | None:
    """The EOS ids as a 1-D tensor, None when there are none."""
    if isinstance(eos_token_id, (list, tuple)):
        eos_token_id = [token for token in eos_token_id if token is not None]
    if eos_token_id is None:
        return None
    eos = torch.as_tensor(eos_token_id, device=device, dtype=torch.long).reshape(-1)
    if not len(eos):
        return None
    if bool((eos == mask_token_id).any()):
        raise ValueError(f"eos_token_id {eos.tolist()} includes mask_token_id={mask_token_id}.")
    return eos


@torch.no_grad()
def diffusion_generate(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    config: DecodingConfig | None = None,
    *,
    mask_token_id: int,
    eos_token_id: int | Sequence[int] | None = None,
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

    Batch compaction (``compact_batch``, on by default; see the module docstring) changes no token up to a row's
    first EOS, with any of the modes above. With ``eos_token_id`` (an id or a list; None: no compaction) a row whose
    first EOS and everything before it are revealed is no longer decoded: its positions still masked then hold
    ``eos_token_id`` (the first one) in the result, the positions after its first EOS that were revealed before keep
    their tokens. Identical consecutive rows (canvas and padding) are computed once by full forwards.

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
    eos = _eos_ids(eos_token_id, mask_token_id, device) if config.compact_batch else None
    duplicates = _DuplicateRows(config.compact_batch and cache is None and batch > 1)
    finished = dict(prompt_width=prompt_width, mask_token_id=mask_token_id, eos=eos)
    rows = None  # the rows still decoding, increasing (None: all of them)

    for block in range(num_blocks):
        start = prompt_width + block * block_length
        end = start + block_length
        positions = torch.arange(start, start + block_length, device=device)
        if decoding == "threshold":
            rows = _decode_block_by_threshold(
                model, cache, canvas, attention_mask, positions, schedule, row_offsets, rows, duplicates, finished,
                temperature=temperature, remasking=remasking, generator=generator, threshold=threshold,
                min_tokens_per_step=min_tokens_per_step, refresh_every=cache_refresh_every,
            )  # fmt: skip
            continue
        remaining = block_length  # masked positions of the block, the same in every row
        step = 0
        for k in schedule:
            if k == 0:
                continue
            # Full-batch draws whichever rows are still decoding: a row's draws depend on its index alone (so
            # compaction changes no token), and the generator ends in the state the exact sampler leaves it in.
            uniforms = _uniform((batch, remaining), generator, device) if temperature else None
            noise = _noise((batch, block_length), generator, device) if remasking == "random" else None
            if rows is not None and not len(rows):  # every row finished
                remaining -= k
                continue
            width = batch if rows is None else len(rows)
            logits = _block_logits(
                model, cache, canvas, attention_mask, positions, step, cache_refresh_every, rows, duplicates
            )
            step += 1
            current = canvas[:, start:end] if rows is None else canvas[rows, start:end]
            still_masked = current == mask_token_id
            # The `remaining` masked positions of each row, in position order (masked sort first, stably).
            masked_at = (~still_masked).to(torch.uint8).argsort(dim=-1, stable=True)[:, :remaining]
            flat = (masked_at + row_offsets[:width]).flatten()
            vocab = logits.shape[-1]
            masked_logits = logits.reshape(-1, vocab).index_select(0, flat).view(width, remaining, vocab)
            del logits
            # A revealed [MASK] would stay masked and break the reveal count, so it is never a candidate.
            masked_logits[..., mask_token_id] = float("-inf")
            if temperature:
                candidates = inverse_cdf_sample(masked_logits, temperature, _at_rows(uniforms, rows))
            else:
                candidates = masked_logits.argmax(-1)
            if remasking == "low_confidence":
                confidence = reveal_confidence(masked_logits, candidates, remasking)
            else:  # random: one uniform per block position, however many are still masked
                confidence = _at_rows(noise, rows).gather(1, masked_at)
            del masked_logits
            reveal = top_k_positions(confidence, still_masked.gather(1, masked_at), k)
            revealed = current.scatter(1, masked_at, torch.where(reveal, candidates, current.gather(1, masked_at)))
            if rows is None:
                canvas[:, start:end] = revealed
            else:
                canvas[rows, start:end] = revealed
            remaining -= k
            if eos is not None:
                rows = _drop_finished(canvas, rows, end, **finished)
    completions = canvas[:, prompt_width:]
    if eos is not None:  # only rows dropped before the end still have masked positions
        completions.masked_fill_(completions == mask_token_id, int(eos[0]))
    return completions


def _decode_block_by_threshold(
    model,
    cache,
    canvas,
    attention_mask,
    positions,
    schedule,
    row_offsets,
    rows,
    duplicates,
    finished,
    *,
    temperature,
    remasking,
    generator,
    threshold,
    min_tokens_per_step,
    refresh_every,
):
    """Decode one block in place with confidence-threshold parallel decoding (see `diffusion_generate`); returns the
    rows still decoding after it (``rows``: those before it, None for all; ``finished``: `_drop_finished`'s keywords,
    its ``eos`` None without compaction).

    Rows reveal different numbers of tokens per forward, so each row has its own count of masked positions: the
    vocabulary-wide work runs on ``width`` slots per row (the largest count), and slots past a row's count are
    ignored. A row whose block is complete stops changing and is no longer fed to the model (nor kept in the KV
    cache) while the others continue; the batch runs as many forwards as its slowest row.

    Draws. Every row reveals at least the minimum per forward, so at the ``s``-th forward no row has more than
    ``bound_s`` (the block length less the minimums of the earlier forwards) masked positions. Each possible forward
    of the block draws a (batch, ``bound_s``) float64 uniform for the candidates (``T > 0``) and, with random
    remasking, a (batch, block length) float32 one, whether or not it runs: a row's draws depend on its index and
    the forward alone, not on which other rows are still decoding, so compaction changes no token. When every row
    reveals exactly the minimum, these are the fixed schedule's draws, so a threshold that no confidence reaches
    (with the default minimum) reproduces the exact sampler.
    """
    block_length = positions.numel()
    start = int(positions[0])
    end = start + block_length
    batch, device = canvas.shape[0], canvas.device
    mask_token_id = finished["mask_token_id"]
    log_threshold = math.log(threshold)
    all_rows = torch.arange(batch, device=device)
    bound = block_length  # most masked positions a row of this block can have at this forward
    for step in range(block_length):  # at least one reveal per row and forward: the block ends within block_length
        if bound <= 0:
            break
        # The fixed schedule's count, at least 1 (its trailing zeros, when steps exceed the block, are never reached).
        minimum = min_tokens_per_step or max(schedule[step] if step < len(schedule) else 1, 1)
        uniforms = _uniform((batch, bound), generator, device) if temperature else None
        noise = _noise((batch, block_length), generator, device) if remasking == "random" else None
        bound -= minimum
        counts = (canvas[:, start:end] == mask_token_id).sum(-1)
        active = counts > 0
        if rows is not None:
            active &= torch.zeros_like(active).index_fill_(0, rows, True)
        num_active = int(active.sum())
        if num_active == 0:
            continue  # the draws above are still taken
        # Only the rows still decoding this block are fed to the model (all of them while none has finished).
        fed = all_rows if num_active == batch else all_rows[active]
        fed_or_none = None if num_active == batch else fed
        logits = _block_logits(
            model, cache, canvas, attention_mask, positions, step, refresh_every, fed_or_none, duplicates
        )
        current = canvas[fed, start:end]
        still_masked = current == mask_token_id
        counts = counts[fed]
        width = int(counts.max())
        masked_at = (~still_masked).to(torch.uint8).argsort(dim=-1, stable=True)[:, :width]
        valid = still_masked.gather(1, masked_at)
        vocab = logits.shape[-1]
        flat = (masked_at + row_offsets[:num_active]).flatten()
        masked_logits = logits.reshape(-1, vocab).index_select(0, flat).view(num_active, width, vocab)
        del logits
        masked_logits[..., mask_token_id] = float("-inf")
        if temperature:
            candidates = inverse_cdf_sample(masked_logits, temperature, _at_rows(uniforms, fed_or_none)[:, :width])
        else:
            candidates = masked_logits.argmax(-1)
        confidence = reveal_confidence(masked_logits, candidates, "low_confidence")
        if remasking == "low_confidence":
            order = confidence
        else:  # the minimum is drawn at random; the threshold still applies to the model's confidence
            order = _at_rows(noise, fed_or_none).gather(1, masked_at)
        del masked_logits
        reveal = top_k_positions(order, valid, counts.clamp(max=minimum)) | (valid & (confidence >= log_threshold))
        revealed = torch.where(reveal, candidates, current.gather(1, masked_at))
        canvas[fed, start:end] = current.scatter(1, masked_at, revealed)
        if finished["eos"] is not None:
            rows = _drop_finished(canvas, rows, end, **finished)
    return rows


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_token_ids: int | list[int]) -> torch.Tensor:
    """1 on completion tokens up to and including the first EOS (the whole row when there is none), else 0."""
    eos = torch.as_tensor(eos_token_ids, device=completion_ids.device).reshape(-1)
    is_eos = torch.isin(completion_ids, eos)
    after_first_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after_first_eos).long()
