"""The optimised hot paths against straightforward implementations.

Sampler: greedy rollouts token-identical to a plain loop over full-vocabulary log-softmaxes; the inverse-CDF draw
exact (frequencies, float64 interval boundaries, infinities). Estimator: `token_logprobs` equal in value and
gradient to ``log_softmax(...).gather(...)`` for every chunking, dtype and in-place setting.
"""

import math

import pytest
import torch
from tiny_models import ConstantLogits, tiny_bidirectional_llama

from trl_spg.bounds import default_chunk_rows, spg_bounds, spg_loss, token_logprobs
from trl_spg.masking import apply_masks, sample_masks
from trl_spg.modeling import position_ids_from_mask
from trl_spg.sampler import diffusion_generate, inverse_cdf_sample, reveal_schedule, sample_tokens
from trl_spg.scoring import masked_token_logprobs

# ----------------------------------------------------------------------------------------------------------------
# Sampler


def straightforward_greedy(model, prompt_ids, prompt_mask, *, mask_token_id, gen_length, block_length, steps, **kw):
    """The LLaDA decoding loop written plainly: full logits, float64 log-softmax, per-row Python top-k.

    ``remasking="random"`` takes one float32 uniform per block position and step from ``generator``.
    """
    remasking, generator = kw.get("remasking", "low_confidence"), kw.get("generator")
    batch, width = prompt_ids.shape
    canvas = torch.cat([prompt_ids, torch.full((batch, gen_length), mask_token_id)], 1)
    attention = torch.cat([prompt_mask, torch.ones(batch, gen_length, dtype=prompt_mask.dtype)], 1)
    num_blocks = gen_length // block_length
    for block in range(num_blocks):
        start = width + block * block_length
        for k in reveal_schedule(block_length, steps // num_blocks):
            if k == 0:
                continue
            with torch.no_grad():
                logits = model(
                    input_ids=canvas, attention_mask=attention, position_ids=position_ids_from_mask(attention)
                ).logits
            logps = logits[:, start : start + block_length].double()
            logps[..., mask_token_id] = -math.inf
            logps = logps.log_softmax(-1)
            noise = torch.rand((batch, block_length), generator=generator) if remasking == "random" else None
            for row in range(batch):
                masked = [i for i in range(block_length) if canvas[row, start + i] == mask_token_id]
                best = logps[row].max(-1)
                score = {i: (noise[row, i].item() if noise is not None else best.values[i].item()) for i in masked}
                for i in sorted(masked, key=lambda i: (-score[i], i))[:k]:
                    canvas[row, start + i] = best.indices[i]
    return canvas[:, width:]


GREEDY_CASES = [
    # vocab, model seed, gen, block, steps, remasking, left padding
    (16, 0, 8, 4, 6, "low_confidence", True),
    (16, 1, 12, 4, 3, "low_confidence", False),  # one step per block: the whole block at once
    (32, 2, 16, 8, 10, "low_confidence", True),  # 5 steps per block, 8 tokens: uneven reveal schedule
    (24, 3, 8, 8, 16, "low_confidence", True),  # more steps than tokens: k = 0 steps are skipped
    (16, 4, 8, 4, 4, "random", True),
]


@pytest.mark.parametrize("vocab, seed, gen, block, steps, remasking, padded", GREEDY_CASES)
def test_greedy_rollout_matches_straightforward_loop(vocab, seed, gen, block, steps, remasking, padded):
    mask = vocab - 1
    model = tiny_bidirectional_llama(vocab_size=vocab, seed=seed)
    data = torch.Generator().manual_seed(100 + seed)
    prompt_ids = torch.randint(0, mask, (4, 6), generator=data)
    prompt_mask = torch.ones_like(prompt_ids)
    if padded:
        prompt_ids[1, :3], prompt_mask[1, :3] = 0, 0
        prompt_ids[3, :1], prompt_mask[3, :1] = 0, 0
    options = dict(mask_token_id=mask, gen_length=gen, block_length=block, steps=steps, remasking=remasking)
    fast = diffusion_generate(
        model, prompt_ids, prompt_mask, temperature=0.0, generator=torch.Generator().manual_seed(7), **options
    )
    plain = straightforward_greedy(
        model, prompt_ids, prompt_mask, generator=torch.Generator().manual_seed(7), **options
    )
    assert torch.equal(fast, plain)
    assert (fast != mask).all()


def test_greedy_rollout_pinned():
    """A fixed tiny model's greedy rollout, computed once with the straightforward loop above."""
    model = tiny_bidirectional_llama(vocab_size=16, seed=0)
    prompt_ids = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    options = dict(mask_token_id=15, gen_length=8, block_length=4, steps=8, temperature=0.0)
    expected = straightforward_greedy(model, prompt_ids, prompt_mask, **options)
    assert torch.equal(diffusion_generate(model, prompt_ids, prompt_mask, **options), expected)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_inverse_cdf_frequencies_match_softmax(temperature):
    logits = torch.tensor([0.0, 1.5, -2.0, 3.0, -float("inf"), -6.0])
    draws = 40000
    tokens = sample_tokens(logits.expand(draws, -1), temperature, torch.Generator().manual_seed(1))
    freq = torch.bincount(tokens, minlength=6).double() / draws
    probs = torch.softmax(logits.double() / temperature, -1)
    stderr = (probs * (1 - probs) / draws).sqrt()
    assert ((freq - probs).abs() <= 4.5 * stderr + 1e-12).all()
    assert freq[4] == 0  # a -inf logit is never drawn


def test_inverse_cdf_boundaries_have_float64_resolution():
    # Token 1 has probability p = e^-30 / (1 + e^-30), about 9.4e-14: far below float32 resolution.
    logits = torch.tensor([[0.0, -30.0]])
    p = math.exp(-30.0) / (1 + math.exp(-30.0))
    just_inside = torch.tensor([1 - 0.5 * p], dtype=torch.float64)
    just_outside = torch.tensor([1 - 1.5 * p], dtype=torch.float64)
    assert inverse_cdf_sample(logits, 1.0, just_inside).item() == 1
    assert inverse_cdf_sample(logits, 1.0, just_outside).item() == 0
    # Temperature scales the logits before normalising: at T = 2 token 1 has probability e^-15 / (1 + e^-15).
    q = math.exp(-15.0) / (1 + math.exp(-15.0))
    assert inverse_cdf_sample(logits, 2.0, torch.tensor([1 - 0.5 * q], dtype=torch.float64)).item() == 1
    assert inverse_cdf_sample(logits, 2.0, torch.tensor([1 - 1.5 * q], dtype=torch.float64)).item() == 0


def test_inverse_cdf_edges():
    largest_u = torch.tensor([1 - 2.0**-53], dtype=torch.float64)
    # The largest uniform never lands on a trailing token of weight 0, such as a last-id [MASK].
    assert inverse_cdf_sample(torch.tensor([[1.0, 2.0, -float("inf")]]), 0.7, largest_u).item() == 1
    assert inverse_cdf_sample(torch.tensor([[1.0, 2.0, -float("inf")]]), 0.7, torch.zeros(1).double()).item() == 0
    # +inf logits take all the mass (the first of them, as argmax); a row of -inf gives token 0.
    inf = float("inf")
    assert inverse_cdf_sample(torch.tensor([[3e38, inf, 1.0, inf]]), 0.9, largest_u).item() == 1
    assert inverse_cdf_sample(torch.tensor([[-inf, -inf, -inf]]), 0.9, largest_u).item() == 0
    # Huge finite logits stay finite in float64.
    assert inverse_cdf_sample(torch.tensor([[3e38, -3e38, 2.9e38]]), 0.9, largest_u).item() == 0


def test_sample_tokens_draws_one_float64_uniform_per_position():
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0))
    tokens = sample_tokens(logits, 0.8, torch.Generator().manual_seed(5))
    uniforms = torch.rand((3, 5), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(tokens, inverse_cdf_sample(logits, 0.8, uniforms))
    assert torch.equal(sample_tokens(logits, 0.0), logits.argmax(-1))


def test_sampled_rollout_tokens_follow_the_tempered_softmax():
    """With random remasking every revealed token is an independent draw from softmax(logits / T)."""
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0, -3.0, 1.0, -0.5, -2.0])  # id 7 is [MASK]
    temperature, rows = 0.7, 1000
    prompt = torch.zeros(rows, 2, dtype=torch.long)
    out = diffusion_generate(
        ConstantLogits(logits),
        prompt,
        torch.ones_like(prompt),
        mask_token_id=7,
        gen_length=8,
        block_length=4,
        steps=4,
        temperature=temperature,
        remasking="random",
        generator=torch.Generator().manual_seed(3),
    )
    draws = out.numel()
    freq = torch.bincount(out.flatten(), minlength=8).double() / draws
    probs = torch.softmax(torch.cat([logits[:7], torch.tensor([-math.inf])]).double() / temperature, -1)
    stderr = (probs * (1 - probs) / draws).sqrt()
    assert ((freq - probs).abs() <= 4.5 * stderr + 1e-12).all()


# ----------------------------------------------------------------------------------------------------------------
# Estimator


def _reference_logprobs(logits, targets):
    return logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _values_and_grad(fn, logits, targets, weights):
    leaf = logits.detach().clone().requires_grad_()
    values = fn(leaf * 1.0, targets)  # a non-leaf input, as a model's logits are
    (values * weights).sum().backward()
    return values.detach(), leaf.grad


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 7, 40, 1000])
@pytest.mark.parametrize("inplace", [False, True])
def test_token_logprobs_chunked_equals_unchunked(chunk_size, inplace):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, 37, generator=gen) * 4
    logits[0, 0, 5] = -math.inf  # a forbidden token
    targets = torch.randint(0, 37, (4, 10), generator=gen)
    targets[0, 0] = 6
    weights = torch.randn(4, 10, generator=gen)
    expected, expected_grad = _values_and_grad(_reference_logprobs, logits, targets, weights)
    whole, whole_grad = _values_and_grad(
        lambda x, t: token_logprobs(x, t, chunk_size=10**6, inplace_backward=inplace), logits, targets, weights
    )
    values, grad = _values_and_grad(
        lambda x, t: token_logprobs(x, t, chunk_size=chunk_size, inplace_backward=inplace), logits, targets, weights
    )
    torch.testing.assert_close(values, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, whole_grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(values, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert values.dtype == torch.float32


def test_token_logprobs_bfloat16_and_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 6, 50, generator=gen) * 3).to(torch.bfloat16)
    targets = torch.randint(0, 50, (3, 6), generator=gen)
    weights = torch.randn(3, 6, generator=gen)
    for inplace in (False, True):
        values, grad = _values_and_grad(
            lambda x, t, inplace=inplace: token_logprobs(x, t, chunk_size=4, inplace_backward=inplace),
            logits,
            targets,
            weights,
        )
        expected, expected_grad = _values_and_grad(_reference_logprobs, logits, targets, weights)
        assert values.dtype == torch.float32 and grad.dtype == torch.bfloat16
        torch.testing.assert_close(values, expected)
        torch.testing.assert_close(grad, expected_grad)
    # A transposed (non-contiguous) input is copied once and gives the same result.
    wide = torch.randn(6, 3, 50, generator=gen)
    values, grad = _values_and_grad(
        lambda x, t: token_logprobs(x.transpose(0, 1), t, chunk_size=5, inplace_backward=True),
        wide,
        targets,
        weights,
    )
    expected, expected_grad = _values_and_grad(
        lambda x, t: _reference_logprobs(x.transpose(0, 1), t), wide, targets, weights
    )
    torch.testing.assert_close(values, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_inplace_backward_overwrites_only_private_logits():
    gen = torch.Generator().manual_seed(2)
    targets = torch.randint(0, 9, (5,), generator=gen)
    # A leaf is never overwritten, whatever the flag says.
    leaf = torch.randn(5, 9, generator=gen, requires_grad=True)
    before = leaf.detach().clone()
    token_logprobs(leaf, targets, inplace_backward=True).sum().backward()
    assert torch.equal(leaf.detach(), before)
    # Neither is a view of someone else's tensor.
    base = torch.randn(5, 9, generator=gen, requires_grad=True) * 1.0
    kept = base.detach().clone()
    token_logprobs(base[:, :], targets, inplace_backward=True).sum().backward()
    assert torch.equal(base.detach(), kept)
    # An intermediate is reused for its gradient: the backward leaves the gradient in its memory.
    source = torch.randn(5, 9, generator=gen, requires_grad=True)
    logits = source * 1.0
    grads = []
    logits.register_hook(lambda grad: grads.append(grad))
    token_logprobs(logits, targets, inplace_backward=True).sum().backward()
    assert grads[0].data_ptr() == logits.data_ptr()
    # If another operation saved the logits for its own backward, autograd refuses instead of computing garbage.
    exp_logits = torch.randn(5, 9, generator=gen, requires_grad=True).exp()  # exp saves its output
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        token_logprobs(exp_logits, targets, inplace_backward=True).sum().backward()
    # Without the flag the logits are left alone.
    exp_logits = torch.randn(5, 9, generator=gen, requires_grad=True).exp()
    token_logprobs(exp_logits, targets).sum().backward()


def test_token_logprobs_validation_and_default_chunks():
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), chunk_size=0)
    assert default_chunk_rows(10_000, 32000, "cpu") == 2**21 // 32000
    assert default_chunk_rows(10_000, 10**8, "cpu") == 1
    assert default_chunk_rows(3072, 126464, "cuda") == 192
    assert default_chunk_rows(5, 126464, "cuda") == 1


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_masked_token_logprobs_and_bounds_match_plain_log_softmax(chunk_size):
    """Same masks, same model: SPG bounds and parameter gradients as with a plain log_softmax-gather."""
    mask_id = 15
    gen = torch.Generator().manual_seed(3)
    prompt_ids = torch.randint(0, mask_id, (3, 4), generator=gen)
    completion_ids = torch.randint(0, mask_id, (3, 8), generator=gen)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[0, :2] = 0
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[1, 5:] = 0
    masks = sample_masks(prompt_mask, completion_mask, num_masks=2, block_length=4, p_mask_prompt=0.3, generator=gen)
    advantages = torch.tensor([1.0, -0.5, -1.5])
    lengths = completion_mask.sum(-1)

    def run(logps_fn):
        model = tiny_bidirectional_llama(vocab_size=16, seed=5)
        logps = logps_fn(model)
        bounds = spg_bounds(logps, masks.scored, lengths, advantages, negative="mix", beta=1.5, mix_weight=0.5)
        spg_loss(advantages, bounds["selected"], lengths).backward()
        return logps.detach(), bounds, {n: p.grad for n, p in model.named_parameters()}

    def plain(model):
        noisy = apply_masks(torch.cat([prompt_ids, completion_ids], 1), masks.noised, mask_id).flatten(0, 1)
        attention = torch.cat([prompt_mask, torch.ones_like(completion_ids)], 1).repeat_interleave(2, dim=0)
        logits = model(input_ids=noisy, attention_mask=attention, position_ids=position_ids_from_mask(attention))
        logps = _reference_logprobs(logits.logits[:, 4:], completion_ids.repeat_interleave(2, dim=0))
        return logps.reshape(3, 2, 8)

    fast = run(
        lambda model: masked_token_logprobs(
            model, prompt_ids, prompt_mask, completion_ids, masks, mask_id, chunk_size=chunk_size
        )
    )
    reference = run(plain)
    torch.testing.assert_close(fast[0], reference[0])
    for key in ("elbo", "eubo", "selected"):
        torch.testing.assert_close(fast[1][key], reference[1][key])
    for name, grad in reference[2].items():
        torch.testing.assert_close(fast[2][name], grad, rtol=1e-4, atol=1e-6)
