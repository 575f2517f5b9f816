"""Scoring: the log-softmax kernel against ``log_softmax(...).gather(...)`` for every chunking, dtype and in-place
setting, and SPG's micro-batch objective against a plain implementation on the same masks."""

import math

import pytest
import torch
from tiny_models import tiny_bidirectional_llama

from trl_spg.bounds import spg_bounds, spg_loss
from trl_spg.masking import apply_masks
from trl_spg.modeling import position_ids_from_mask
from trl_spg.objective import SPGObjective
from trl_spg.scoring import default_chunk_rows, token_logprobs


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
def test_objective_matches_plain_log_softmax_on_its_masks(chunk_size):
    """`SPGObjective.loss` gives the bounds, loss and gradients of a plain log_softmax-gather on the same masks."""
    mask_id = 15
    gen = torch.Generator().manual_seed(3)
    completion_mask = torch.ones(3, 8, dtype=torch.long)
    completion_mask[1, 5:] = 0
    inputs = {
        "prompt_ids": torch.randint(0, mask_id, (3, 4), generator=gen),
        "prompt_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]),
        "completion_ids": torch.randint(0, mask_id, (3, 8), generator=gen),
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -0.5, -1.5]),
    }
    objective = SPGObjective(num_mc_masks=2, block_length=4, p_mask_prompt=0.3)
    model = tiny_bidirectional_llama(vocab_size=16, seed=5)
    output = objective.loss(
        model, inputs, mask_token_id=mask_id, generator=torch.Generator().manual_seed(0), chunk_size=chunk_size
    )
    output.loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters()}
    assert output.masks.scored.any() and not output.masks.scored.all()

    model.zero_grad()
    masks, lengths, advantages = output.masks, completion_mask.sum(-1), inputs["advantages"]
    noisy = apply_masks(torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1), masks.noised, mask_id)
    attention = torch.cat([inputs["prompt_mask"], torch.ones_like(completion_mask)], 1).repeat_interleave(2, dim=0)
    logits = model(
        input_ids=noisy.flatten(0, 1), attention_mask=attention, position_ids=position_ids_from_mask(attention)
    ).logits
    logps = _reference_logprobs(logits[:, 4:], inputs["completion_ids"].repeat_interleave(2, dim=0)).reshape(3, 2, 8)
    bounds = spg_bounds(logps, masks.scored, lengths, advantages, negative="mix", beta=1.5, mix_weight=0.5)
    loss = spg_loss(advantages, bounds["selected"], lengths)
    loss.backward()
    torch.testing.assert_close(output.loss, loss)
    for key in ("elbo", "eubo", "selected"):
        torch.testing.assert_close(output.bounds[key], bounds[key])
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6)
