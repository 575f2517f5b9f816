"""Exact likelihood quantities of a masked diffusion model on a short completion, by enumerating mask subsets.

For a completion ``x`` of length ``L`` (small: the model is run on all ``2^L`` masked copies) and ``z_M`` = ``x``
with the positions in ``M`` masked:

* ``log pi(x | c)``: the model unmasks one uniformly chosen position at a time, so
  ``pi(x) = E_order prod_k pi(x_order[k] | revealed so far)``; a dynamic programme over revealed subsets sums it.
* exact ELBO ``= sum_M w(|M|) sum_{i in M} log pi(x_i | z_M)`` with ``w(k) = (k-1)! (L-k)! / L!``.
* exact EUBO inner expectation of token ``i``: ``E_i = sum_{M contains i} w(|M|) pi(x_i | z_M)^beta``, and the
  EUBO ``= (1/beta) sum_i log E_i``.
"""

from __future__ import annotations

import itertools
import math

import torch

from trl_spg.modeling import forward_logits
from trl_spg.scoring import token_logprobs


def subset_weight(size: int, length: int) -> float:
    """``w(k) = (k-1)! (L-k)! / L!``: the ELBO weight of one masked subset of size ``k``."""
    return math.factorial(size - 1) * math.factorial(length - size) / math.factorial(length)


@torch.no_grad()
def subset_logprobs(model, prompt: list[int], completion: list[int], mask_token_id: int, suffix=()) -> dict:
    """``{M: tensor of log pi(x_i | z_M) for every completion position i}`` over all non-empty subsets ``M``.

    ``suffix`` follows the completion on the canvas in every row, never masked and never scored (the positions
    after a completion's EOS: masks, or the generated tail)."""
    length = len(completion)
    subsets = [m for k in range(1, length + 1) for m in itertools.combinations(range(length), k)]
    rows = []
    for subset in subsets:
        row = list(completion)
        for i in subset:
            row[i] = mask_token_id
        rows.append(prompt + row + list(suffix))
    ids = torch.tensor(rows)
    keep = torch.arange(len(prompt), len(prompt) + length)
    logits = forward_logits(model, ids, torch.ones_like(ids), keep=keep).double()
    logps = token_logprobs(logits, torch.tensor(completion).expand(len(rows), -1)).double()
    return {frozenset(s): logps[n] for n, s in enumerate(subsets)}


def exact_quantities(
    model, prompt: list[int], completion: list[int], mask_token_id: int, beta: float, suffix=()
) -> dict:
    """Exact ``log_likelihood``, ``elbo``, ``eubo`` (sequence scale) and ``eubo_inner`` (``E_i`` per token), of the
    completion on the canvas ``prompt + completion + suffix`` (see `subset_logprobs`)."""
    length = len(completion)
    table = subset_logprobs(model, prompt, completion, mask_token_id, suffix)
    # log f(M): log-probability of having revealed exactly the complement of M with the right tokens.
    log_reach = {frozenset(range(length)): 0.0}
    for size in range(length, 0, -1):
        for masked in [m for m in log_reach if len(m) == size]:
            for i in masked:
                nxt = masked - {i}
                term = log_reach[masked] - math.log(size) + table[masked][i].item()
                log_reach[nxt] = float(
                    torch.logaddexp(torch.tensor(log_reach.get(nxt, -math.inf)), torch.tensor(term))
                )
    elbo = sum(subset_weight(len(m), length) * sum(table[m][i].item() for i in m) for m in table)
    inner = [
        sum(subset_weight(len(m), length) * math.exp(beta * table[m][i].item()) for m in table if i in m)
        for i in range(length)
    ]
    eubo = sum(math.log(e) for e in inner) / beta
    return {"log_likelihood": log_reach[frozenset()], "elbo": elbo, "eubo": eubo, "eubo_inner": inner}
