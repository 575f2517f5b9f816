"""SPG bounds against exact likelihoods, Monte Carlo convergence, and the loss."""

import itertools
import math

import pytest
import torch
from exact_likelihood import exact_quantities, subset_logprobs
from tiny_models import tiny_bidirectional_llama

from trl_spg.bounds import (
    elbo_estimate,
    eubo_estimate,
    eubo_log_inner,
    mixture_bound,
    negative_bound,
    select_bound,
    spg_bounds,
    spg_loss,
)
from trl_spg.masking import sample_masks
from trl_spg.scoring import masked_token_logprobs

MASK = 7


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_exact_sandwich_for_beta_at_least_length(seed):
    """ELBO <= log pi <= EUBO for beta >= L on random models and sequences (for beta < L the EUBO is a surrogate
    with the right gradient and can fall below log pi)."""
    gen = torch.Generator().manual_seed(seed)
    model = tiny_bidirectional_llama(vocab_size=8, seed=seed)
    length = 3 + seed % 4
    prompt = torch.randint(0, MASK, (2,), generator=gen).tolist()
    completion = torch.randint(0, MASK, (length,), generator=gen).tolist()
    for beta in (float(length), length + 1.5):
        exact = exact_quantities(model, prompt, completion, MASK, beta)
        assert exact["elbo"] <= exact["log_likelihood"] + 1e-9
        assert exact["log_likelihood"] <= exact["eubo"] + 1e-9
    # The ELBO gap is real, so the test would catch a bound computed on the wrong side.
    assert exact["log_likelihood"] - exact["elbo"] > 1e-4


def _random_mask_estimates(model, prompt, completion, beta, num_masks, seed):
    prompt_ids = torch.tensor([prompt])
    completion_ids = torch.tensor([completion])
    masks = sample_masks(
        torch.ones_like(prompt_ids),
        torch.ones_like(completion_ids),
        num_masks=num_masks,
        strategy="random",
        min_t=0.0,
        max_t=1.0,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        logps = masked_token_logprobs(model, prompt_ids, torch.ones_like(prompt_ids), completion_ids, masks, MASK)
    return logps.double(), masks.scored


def test_elbo_estimator_unbiased_for_exact_elbo():
    model = tiny_bidirectional_llama(vocab_size=8, seed=4)
    prompt, completion = [1, 2, 3], [4, 0, 2, 5, 1]
    length = len(completion)
    exact = exact_quantities(model, prompt, completion, MASK, beta=1.0)
    logps, scored = _random_mask_estimates(model, prompt, completion, 1.0, num_masks=6000, seed=0)
    # One ELBO sample per mask (sequence scale): L * sum_{i in M} l_i / |M|.
    per_mask = length * torch.where(scored, logps, 0.0).sum(-1) / scored.sum(-1)
    estimate = length * elbo_estimate(logps, scored).item()
    assert estimate == pytest.approx(per_mask.mean().item(), rel=1e-5)
    stderr = per_mask.std().item() / math.sqrt(per_mask.numel())
    assert abs(estimate - exact["elbo"]) < 4 * stderr
    assert stderr < 0.05 * abs(exact["elbo"])  # the tolerance is tight enough to mean something


@pytest.mark.parametrize("beta", [1.0, 1.5])
def test_eubo_inner_averages_converge(beta):
    model = tiny_bidirectional_llama(vocab_size=8, seed=5)
    prompt, completion = [3, 1], [2, 6, 0, 4]
    length = len(completion)
    exact = exact_quantities(model, prompt, completion, MASK, beta=beta)
    logps, scored = _random_mask_estimates(model, prompt, completion, beta, num_masks=6000, seed=1)
    log_a, in_s = eubo_log_inner(logps, scored, torch.tensor([length]), beta)
    assert in_s.all()
    t_hat = scored.sum(-1, keepdim=True).double() / length
    samples = torch.where(scored, torch.exp(beta * logps) / t_hat, 0.0)[0]  # (m, L)
    for i in range(length):
        stderr = samples[:, i].std().item() / math.sqrt(samples.shape[0])
        estimate = math.exp(log_a[0, i].item())
        assert estimate == pytest.approx(samples[:, i].mean().item(), rel=1e-5)
        assert abs(estimate - exact["eubo_inner"][i]) < 4 * stderr
        assert stderr < 0.1 * exact["eubo_inner"][i]
    # The per-token EUBO estimate times L is consistent for the exact EUBO.
    eubo = length * eubo_estimate(logps, scored, torch.tensor([length]), beta).item()
    assert eubo == pytest.approx(exact["eubo"], abs=0.05 * abs(exact["eubo"]))


def test_elbo_and_eubo_by_hand():
    # One completion of length 3, two masks: {0, 1} and {2}.
    logps = torch.tensor([[[-1.0, -2.0, -9.0], [-9.0, -9.0, -0.5]]])
    scored = torch.tensor([[[True, True, False], [False, False, True]]])
    lengths = torch.tensor([3])
    assert elbo_estimate(logps, scored).item() == pytest.approx(((-1 - 2) / 2 + (-0.5) / 1) / 2)
    beta = 2.0
    # a_i = (1/2) * exp(beta l) / t_hat with t_hat = 2/3 for mask 0 and 1/3 for mask 1.
    a = [0.5 * math.exp(-2.0) / (2 / 3), 0.5 * math.exp(-4.0) / (2 / 3), 0.5 * math.exp(-1.0) / (1 / 3)]
    expected = sum(math.log(x) for x in a) / 3 / beta
    assert eubo_estimate(logps, scored, lengths, beta).item() == pytest.approx(expected, rel=1e-6)
    assert mixture_bound(torch.tensor(1.0), torch.tensor(3.0), 0.25).item() == pytest.approx(1.5)


def test_eubo_only_averages_tokens_masked_somewhere():
    logps = torch.tensor([[[-1.0, -3.0, -7.0]]])
    scored = torch.tensor([[[True, False, False]]])
    # a_0 = exp(-1) / (1/3); S = {0}.
    assert eubo_estimate(logps, scored, torch.tensor([3]), 1.0).item() == pytest.approx(-1.0 + math.log(3.0))


@pytest.mark.parametrize("beta", [1e-6, 1.0, 1.5, 50.0, 1e6])
def test_eubo_finite_for_extreme_logprobs(beta):
    logps = torch.tensor([[[-1e38, -1e4, 0.0, -3.0], [-float("inf"), -1e30, -2.0, 0.0]]], requires_grad=True)
    scored = torch.tensor([[[True, True, False, True], [True, True, True, False]]])
    eubo = eubo_estimate(logps, scored, torch.tensor([4]), beta)
    assert torch.isfinite(eubo).all()
    eubo.sum().backward()
    assert torch.isfinite(logps.grad).all()


def test_negative_bound_kinds():
    elbo, eubo = torch.tensor([-2.0]), torch.tensor([-1.0])
    assert negative_bound(elbo, eubo, "mix", 0.5).item() == pytest.approx(-1.5)
    assert negative_bound(elbo, eubo, "eubo", 0.5).item() == -1.0
    assert negative_bound(elbo, eubo, "elbo", 0.5).item() == -2.0
    assert negative_bound(elbo, eubo, "none", 0.5).item() == 0.0
    with pytest.raises(ValueError, match="negative bound"):
        negative_bound(elbo, eubo, "kl", 0.5)


def _fixed_micro_batch():
    logps = torch.tensor(
        [
            [[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]],
            [[-4.0, -1.0, -9.0], [-2.0, -3.0, -9.0]],
            [[-0.1, -9.0, -9.0], [-0.3, -9.0, -9.0]],
        ],
        requires_grad=True,
    )
    scored = torch.tensor(
        [
            [[True, False, True], [False, True, False]],
            [[True, True, False], [False, True, False]],
            [[True, False, False], [True, False, False]],
        ]
    )
    lengths = torch.tensor([3, 2, 1])
    return logps, scored, lengths


def test_loss_matches_hand_computation():
    logps, scored, lengths = _fixed_micro_batch()
    advantages = torch.tensor([0.5, -1.0, 0.0])
    bounds = spg_bounds(logps, scored, lengths, advantages, negative="mix", beta=1.5, mix_weight=0.5)
    loss = spg_loss(advantages, bounds["selected"], lengths)
    # Sample 0 (A > 0): ELBO = mean(( -1 - 3) / 2, -1.5 / 1) = -1.75.
    elbo0 = -1.75
    # Sample 1 (A < 0): ELBO = mean((-4 - 1) / 2, -3 / 1) = -2.75; EUBO with t_hat = 2/2 and 1/2.
    a1 = [0.5 * math.exp(1.5 * -4.0) / 1.0, 0.5 * (math.exp(1.5 * -1.0) / 1.0 + math.exp(1.5 * -3.0) / 0.5)]
    eubo1 = sum(math.log(x) for x in a1) / 2 / 1.5
    mix1 = 0.5 * eubo1 + 0.5 * -2.75
    expected = -(0.5 * 3 * elbo0 + -1.0 * 2 * mix1 + 0.0) / 6
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_zero_advantages_give_zero_loss_and_gradient():
    logps, scored, lengths = _fixed_micro_batch()
    advantages = torch.zeros(3)
    bounds = spg_bounds(logps, scored, lengths, advantages)
    loss = spg_loss(advantages, bounds["selected"], lengths)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logps.grad) == 0


def test_gradient_flows_only_through_selected_bound():
    logps, scored, lengths = _fixed_micro_batch()
    advantages = torch.tensor([1.0, -1.0, 1.0])
    elbo = elbo_estimate(logps, scored)
    eubo = eubo_estimate(logps, scored, lengths, 1.5)
    spg_loss(advantages, select_bound(advantages, elbo, eubo), lengths).backward()
    grad = logps.grad.clone()
    # Recompute by hand: positive rows through ELBO only, the negative row through EUBO only.
    logps.grad = None
    elbo = elbo_estimate(logps, scored)
    eubo = eubo_estimate(logps, scored, lengths, 1.5)
    manual = -(1.0 * 3 * elbo[0] - 1.0 * 2 * eubo[1] + 1.0 * 1 * elbo[2]) / 6
    manual.backward()
    torch.testing.assert_close(grad, logps.grad)
    # Unscored positions receive no gradient.
    assert torch.count_nonzero(grad[~scored]) == 0


def test_negative_bound_none_drops_negative_samples():
    logps, scored, lengths = _fixed_micro_batch()
    advantages = torch.tensor([-1.0, -2.0, -0.5])
    bounds = spg_bounds(logps, scored, lengths, advantages, negative="none")
    loss = spg_loss(advantages, bounds["selected"], lengths)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logps.grad) == 0
    assert bounds["eubo"] is None


# ------------------------------------------------------------------------------------------- block choice


def _exact_block_elbo(table, length: int, block: int, strategy: str) -> float:
    """Exact expectation of one mask's per-token ELBO term ``sum_{i in M} l_i(z_M) / |M|`` under a block strategy.

    The block is uniform over the content blocks; ``block_all`` masks it whole, ``block_random`` masks a uniformly
    chosen ``k``-subset of it with ``k`` uniform in ``1..n_b``; every later position is masked, no prompt masking.
    """
    blocks = [list(range(start, min(start + block, length))) for start in range(0, length, block)]
    total = 0.0
    for positions in blocks:
        later = list(range(positions[-1] + 1, length))
        if strategy == "block_all":
            cases = [(1.0, positions)]
        else:
            n = len(positions)
            cases = [
                (1.0 / n / math.comb(n, k), list(subset))
                for k in range(1, n + 1)
                for subset in itertools.combinations(positions, k)
            ]
        for weight, chosen in cases:
            masked = frozenset(chosen + later)
            total += weight * sum(table[masked][i].item() for i in masked) / len(masked)
    return total / len(blocks)


def _block_elbo_estimates(model, prompt, completion, strategy, block_sampling, num_masks, repeats, seed):
    prompt_ids = torch.tensor([prompt]).expand(repeats, -1)
    completion_ids = torch.tensor([completion]).expand(repeats, -1)
    masks = sample_masks(
        torch.ones_like(prompt_ids),
        torch.ones_like(completion_ids),
        num_masks=num_masks,
        strategy=strategy,
        block_length=2,
        block_sampling=block_sampling,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        logps = masked_token_logprobs(model, prompt_ids, torch.ones_like(prompt_ids), completion_ids, masks, MASK)
    return elbo_estimate(logps.double(), masks.scored)


@pytest.mark.parametrize("block_sampling", ["independent", "stratified"])
def test_block_random_elbo_is_unbiased_under_both_block_choices(block_sampling):
    """Both block choices estimate the same quantity: the Monte Carlo mean of the ELBO estimate (2 masks per set)
    matches the exact expectation over blocks, in-block counts and subsets."""
    model = tiny_bidirectional_llama(vocab_size=8, seed=6)
    prompt, completion = [1, 2, 3], [4, 0, 2, 5, 1, 6]
    exact = _exact_block_elbo(subset_logprobs(model, prompt, completion, MASK), 6, 2, "block_random")
    estimates = _block_elbo_estimates(model, prompt, completion, "block_random", block_sampling, 2, 4000, 0)
    stderr = estimates.std().item() / math.sqrt(estimates.numel())
    assert abs(estimates.mean().item() - exact) < 4 * stderr
    assert stderr < 0.01 * abs(exact)  # the tolerance is tight enough to mean something


def test_stratified_block_all_with_one_mask_per_block_is_exact():
    """With as many masks as blocks, stratified block_all visits every block once: every estimate is the exact
    expectation (zero variance), while the independent choice scatters around it."""
    model = tiny_bidirectional_llama(vocab_size=8, seed=7)
    prompt, completion = [3, 1], [2, 6, 0, 4, 5, 1]
    exact = _exact_block_elbo(subset_logprobs(model, prompt, completion, MASK), 6, 2, "block_all")
    stratified = _block_elbo_estimates(model, prompt, completion, "block_all", "stratified", 3, 50, 0)
    torch.testing.assert_close(stratified, torch.full_like(stratified, exact), rtol=1e-6, atol=1e-6)
    independent = _block_elbo_estimates(model, prompt, completion, "block_all", "independent", 3, 50, 0)
    assert independent.std() > 0.01 * abs(exact)
