"""SPG's likelihood bounds and policy loss, estimated from Monte Carlo masked token log-probabilities.

Inputs share one layout: ``token_logps`` (B, m, C) holds ``l_{i,tau} = log pi(x_i | z^tau, c)`` for completion
position ``i`` under Monte Carlo mask ``tau`` (any value where the position is not scored), ``scored`` (B, m, C)
marks the masked completion tokens ``M_tau`` and ``lengths`` (B,) the completion lengths ``L_j``. Every bound is
on the per-token scale; the loss multiplies by ``L_j`` to return to the sequence scale.
"""

from __future__ import annotations

import math

import torch

NEGATIVE_BOUNDS = ("mix", "eubo", "elbo", "none")

# Token log-probs are floored here so that beta * l stays finite in float32 for any beta we accept.
_LOGP_FLOOR = -1e30


# Rows of a logits tensor processed together by `token_logprobs`: on CPU about 2**21 elements (8 MiB in float32,
# so temporaries stay in cache and large allocations never page-fault), elsewhere a sixteenth of the rows.
_CPU_CHUNK_ELEMENTS = 2**21
_ACCELERATOR_CHUNKS = 16


def default_chunk_rows(num_rows: int, vocab_size: int, device: torch.device | str) -> int:
    """Rows of a (rows, V) logits tensor that `token_logprobs` normalises at once when no ``chunk_size`` is given.

    On CPU a chunk holds about 2**21 elements; on accelerators it is a sixteenth of the rows (at least one), so the
    float32 temporaries stay a small fraction of the logits while the number of kernel launches stays bounded.
    """
    if torch.device(device).type == "cpu":
        return max(1, _CPU_CHUNK_ELEMENTS // max(vocab_size, 1))
    return max(1, -(-num_rows // _ACCELERATOR_CHUNKS))


def _row_chunks(num_rows: int, chunk_rows: int):
    """Slices covering ``range(num_rows)`` in the fewest chunks of at most ``chunk_rows`` rows, of balanced sizes."""
    num_chunks = max(1, -(-num_rows // chunk_rows))
    bounds = [num_rows * i // num_chunks for i in range(num_chunks + 1)]
    return [slice(low, high) for low, high in zip(bounds[:-1], bounds[1:])]


class _TokenLogprobs(torch.autograd.Function):
    """``log softmax(logits)[targets]`` that keeps only the logits and one float per row for the backward.

    Forward: ``logit[target] - logsumexp(logits)`` row chunk by row chunk, so the only vocabulary-sized temporary is
    one chunk. Backward: ``grad * (onehot(target) - softmax)``, rebuilt chunk by chunk from the saved logits and
    log-normalisers; with ``inplace`` it is written over the saved logits (which nobody needs afterwards), so the
    backward adds no vocabulary-sized tensor either.
    """

    @staticmethod
    def forward(ctx, logits, targets, chunk_rows, inplace):
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        index = targets.reshape(-1, 1)
        lse = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
        for rows in _row_chunks(flat.shape[0], chunk_rows):
            torch.logsumexp(flat[rows].float(), -1, out=lse[rows])
        logps = flat.gather(-1, index).squeeze(-1).float() - lse
        # A reshape that had to copy gives a private buffer, which the backward may always overwrite.
        copied = flat.data_ptr() != logits.data_ptr()
        ctx.overwrite = copied or (inplace and not logits.is_leaf and logits._base is None)
        ctx.chunk_rows = chunk_rows
        ctx.logits_shape = logits.shape
        ctx.save_for_backward(flat, index, lse)
        return logps.reshape(targets.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        flat, index, lse = ctx.saved_tensors
        grad = grad_output.reshape(-1, 1).float()
        out = flat if ctx.overwrite else torch.empty_like(flat)
        in_float32 = flat.dtype == torch.float32
        for rows in _row_chunks(flat.shape[0], ctx.chunk_rows):
            if in_float32:
                chunk = torch.sub(flat[rows], lse[rows, None], out=out[rows])
            else:  # float32 arithmetic on a chunk-sized copy, rounded once into the logits' dtype
                chunk = flat[rows].float().sub_(lse[rows, None])
            chunk.exp_().mul_(grad[rows].neg())  # -grad * softmax
            chunk.scatter_add_(-1, index[rows], grad[rows])  # + grad at the target
            if not in_float32:
                out[rows].copy_(chunk)
        return out.reshape(ctx.logits_shape), None, None, None


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int | None = None,
    inplace_backward: bool = False,
) -> torch.Tensor:
    """``log softmax(logits)[targets]`` in float32, as ``logit[target] - logsumexp(logits)``.

    Gathers before normalising, and normalises ``chunk_size`` rows (positions) at a time (default:
    `default_chunk_rows`), so no second vocabulary-sized tensor is materialised in the forward; the backward keeps
    only the logits and one log-normaliser per row and rebuilds the softmax chunk by chunk. Values and gradients do
    not depend on ``chunk_size``.

    ``inplace_backward=True`` lets the backward write the gradient over ``logits`` itself instead of allocating a
    second logits-sized tensor. Pass it only for an intermediate tensor that nothing reads after the backward (such
    as a model's output consumed here alone); leaves and views are never overwritten, and autograd raises if another
    operation saved ``logits`` for its own backward.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    num_rows = math.prod(logits.shape[:-1])
    chunk_rows = chunk_size or default_chunk_rows(num_rows, logits.shape[-1], logits.device)
    return _TokenLogprobs.apply(logits, targets, int(chunk_rows), inplace_backward)


def elbo_estimate(token_logps: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Per-token ELBO: ``elbo_j = mean_tau [ sum_{i in M_tau} l_{i,tau} / |M_tau| ]``.

    With ``|M_tau| = t_hat L_j`` this is ``(1 / L_j) E[ sum_i (1/t) 1[i masked] l_i ]``; a mask with no scored
    token contributes 0.
    """
    scored_logps = torch.where(scored, token_logps.float(), 0.0).sum(-1)
    num_masked = scored.sum(-1)
    return (scored_logps / num_masked.clamp(min=1)).mean(-1)


def eubo_log_inner(
    token_logps: torch.Tensor, scored: torch.Tensor, lengths: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log a_i`` for every completion position, and the set ``S`` where it is defined: two (B, C) tensors.

    ``a_i = (1/m) sum_tau 1[i in M_tau] exp(beta l_{i,tau}) / t_hat_tau`` with ``t_hat_tau = |M_tau| / L_j``, the
    Monte Carlo estimate of the EUBO's inner expectation ``E_t E_z[(1/t) 1[z_i = MASK] pi(x_i | z, c)^beta]``.
    ``S`` holds the tokens masked under at least one ``tau``. ``log a_i`` is a logsumexp over the masks that contain
    ``i``, so it is finite for every ``beta > 0`` and every finite (however negative) log-prob; it is 0 outside S.
    """
    if beta <= 0:
        raise ValueError(f"EUBO needs beta > 0, got {beta}.")
    num_masks = token_logps.shape[1]
    log_t_hat = scored.sum(-1).clamp(min=1).float().log() - lengths.clamp(min=1).float().log()[:, None]
    terms = (beta * token_logps.float()).clamp(min=_LOGP_FLOOR) - log_t_hat[..., None]
    terms = torch.where(scored, terms, float("-inf"))
    in_s = scored.any(1)
    # Tokens outside S have no finite term; give them a dummy row so logsumexp (and its gradient) stay finite.
    terms = torch.where(in_s[:, None, :], terms, 0.0)
    log_a = terms.logsumexp(1) - math.log(num_masks)
    return torch.where(in_s, log_a, 0.0), in_s


def eubo_estimate(token_logps: torch.Tensor, scored: torch.Tensor, lengths: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token EUBO: ``eubo_j = (1/beta) mean_{i in S} log a_i`` (``a_i`` and ``S`` as in ``eubo_log_inner``)."""
    log_a, in_s = eubo_log_inner(token_logps, scored, lengths, beta)
    return log_a.sum(-1) / in_s.sum(-1).clamp(min=1) / beta


def mixture_bound(elbo: torch.Tensor, eubo: torch.Tensor, weight: float) -> torch.Tensor:
    """``L_MIX = w * L_EUBO + (1 - w) * L_ELBO`` with ``0 <= w <= 1``."""
    return weight * eubo + (1.0 - weight) * elbo


def negative_bound(elbo: torch.Tensor, eubo: torch.Tensor | None, kind: str, mix_weight: float) -> torch.Tensor:
    """The bound used for samples with non-positive advantage: ``mix``, ``eubo``, ``elbo`` or ``none`` (zero)."""
    if kind == "mix":
        return mixture_bound(elbo, eubo, mix_weight)
    if kind == "eubo":
        return eubo
    if kind == "elbo":
        return elbo
    if kind == "none":
        return torch.zeros_like(elbo)
    raise ValueError(f"Unknown negative bound {kind!r}; choose one of {NEGATIVE_BOUNDS}.")


def select_bound(advantages: torch.Tensor, elbo: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """``bound_j = elbo_j if A_j > 0 else negative_j``; gradients reach only the selected bound."""
    return torch.where(advantages > 0, elbo, negative)


def spg_loss(advantages: torch.Tensor, bound: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Micro-batch loss ``-sum_j A_j L_j bound_j / sum_j L_j`` (per-token bounds back on the sequence scale)."""
    lengths = lengths.to(bound.dtype)
    return -(advantages.to(bound.dtype) * lengths * bound).sum() / lengths.sum().clamp(min=1.0)


def spg_bounds(
    token_logps: torch.Tensor,
    scored: torch.Tensor,
    lengths: torch.Tensor,
    advantages: torch.Tensor,
    *,
    negative: str = "mix",
    beta: float = 1.5,
    mix_weight: float = 0.5,
) -> dict[str, torch.Tensor]:
    """All per-sample bounds of a micro-batch: ``elbo``, ``eubo`` (None when unused), ``negative``, ``selected``."""
    elbo = elbo_estimate(token_logps, scored)
    eubo = eubo_estimate(token_logps, scored, lengths, beta) if negative in ("mix", "eubo") else None
    neg = negative_bound(elbo, eubo, negative, mix_weight)
    return {"elbo": elbo, "eubo": eubo, "negative": neg, "selected": select_bound(advantages, elbo, neg)}
