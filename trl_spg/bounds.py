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
