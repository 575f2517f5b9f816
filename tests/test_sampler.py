"""The semi-autoregressive diffusion sampler."""

import pytest
import torch
from tiny_models import ConstantLogits, tiny_bidirectional_llama

from trl_spg.sampler import (
    completion_mask_from_ids,
    diffusion_generate,
    gumbel_max_sample,
    reveal_schedule,
    top_k_positions,
)

MASK = 15


def _prompts():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, MASK, (3, 6), generator=gen)
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0  # a left-padded row
    return ids, mask


def _generate(model, temperature=0.0, seed=0, **kwargs):
    ids, mask = _prompts()
    options = dict(mask_token_id=MASK, gen_length=8, block_length=4, steps=6, temperature=temperature)
    options.update(kwargs)
    return diffusion_generate(model, ids, mask, generator=torch.Generator().manual_seed(seed), **options)


class RecordingModel(torch.nn.Module):
    """Wraps a model and keeps a copy of every canvas it is called on."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.canvases = []

    def forward(self, input_ids, attention_mask=None):
        self.canvases.append(input_ids.clone())
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def test_reveal_schedule():
    assert reveal_schedule(32, 4) == [8, 8, 8, 8]
    assert reveal_schedule(10, 4) == [3, 3, 2, 2]
    assert reveal_schedule(3, 5) == [1, 1, 1, 0, 0]


def test_greedy_is_deterministic_and_temperature_samples():
    model = tiny_bidirectional_llama(vocab_size=16, seed=0)
    greedy = _generate(model, 0.0, seed=0)
    assert torch.equal(greedy, _generate(model, 0.0, seed=1))
    sampled_a, sampled_b = _generate(model, 1.0, seed=0), _generate(model, 1.0, seed=0)
    assert torch.equal(sampled_a, sampled_b)
    assert not torch.equal(sampled_a, _generate(model, 1.0, seed=1))
    assert (greedy != MASK).all() and (sampled_a != MASK).all()


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_each_step_reveals_schedule_in_block_order(remasking):
    model = RecordingModel(tiny_bidirectional_llama(vocab_size=16, seed=1))
    final = _generate(model, 0.7, remasking=remasking)
    canvases = model.canvases + [torch.cat([_prompts()[0], final], 1)]
    assert len(model.canvases) == 6  # 2 blocks x 3 steps, one forward each
    schedule = reveal_schedule(4, 3)
    for step in range(6):
        before, after = canvases[step][:, 6:], canvases[step + 1][:, 6:]
        revealed = (before == MASK) & (after != MASK)
        block = step // 3
        assert (revealed.sum(-1) == schedule[step % 3]).all()
        # Reveals only in the current block; earlier blocks are complete, later blocks untouched.
        assert not revealed[:, : 4 * block].any() and not revealed[:, 4 * (block + 1) :].any()
        assert (after[:, : 4 * block] != MASK).all() and (after[:, 4 * (block + 1) :] == MASK).all()
        # Revealed tokens never change.
        kept = before != MASK
        assert torch.equal(before[kept], after[kept])


def test_left_padding_does_not_change_greedy_completion():
    model = tiny_bidirectional_llama(vocab_size=16, seed=2)
    short = torch.tensor([[3, 4, 5]])
    long = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    options = dict(mask_token_id=MASK, gen_length=8, block_length=4, steps=8, temperature=0.0)
    alone = diffusion_generate(model, short, torch.ones_like(short), **options)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    batch_mask = torch.cat([torch.tensor([[0, 0, 0, 0, 1, 1, 1]]), torch.ones_like(long)])
    together = diffusion_generate(model, batch, batch_mask, **options)
    assert torch.equal(together[0], alone[0])
    # Attending to the pads would change the answer: pads hold real token ids here.
    unmasked = diffusion_generate(model, batch, torch.ones_like(batch), **options)
    assert not torch.equal(unmasked[0], alone[0])


def test_constant_model_yields_its_token_and_never_the_mask():
    logits = torch.full((16,), -5.0)
    logits[9] = 5.0
    assert (_generate(ConstantLogits(logits), 0.0) == 9).all()
    # A model that prefers [MASK] still fills the canvas with real tokens.
    logits[MASK] = 50.0
    out = _generate(ConstantLogits(logits), 0.5)
    assert (out != MASK).all()


@pytest.mark.parametrize("scale", [1e4, 1e30, 3e38])
def test_extreme_logits_no_nan(scale):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, generator=gen) * scale
    out = _generate(ConstantLogits(logits), 0.9)
    assert (out == int(logits[:MASK].argmax())).all()


def test_gumbel_max_matches_softmax_frequencies():
    """Both exact draws from softmax(logits / T): the sampler's inverse-CDF one and the Gumbel-max reference."""
    from trl_spg.sampler import sample_tokens

    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    temperature = 0.7
    probs = torch.softmax(logits.double() / temperature, -1)
    stderr = (probs * (1 - probs) / 20000).sqrt()
    for draw in (sample_tokens, gumbel_max_sample):
        draws = draw(logits.expand(20000, -1), temperature, torch.Generator().manual_seed(0))
        freq = torch.bincount(draws, minlength=4).double() / 20000
        assert ((freq - probs).abs() < 4 * stderr).all()


def test_top_k_positions_per_row_counts():
    score = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.8, 0.1]])
    eligible = torch.tensor([[True, False, True, True], [True, True, True, True]])
    out = top_k_positions(score, eligible, torch.tensor([2, 1]))
    assert out.tolist() == [[False, False, True, True], [False, False, True, False]]


def test_global_rng_untouched_and_validation():
    model = tiny_bidirectional_llama(vocab_size=16, seed=0)
    state = torch.get_rng_state()
    _generate(model, 0.9)
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(ValueError, match="divide"):
        _generate(model, block_length=3)
    with pytest.raises(ValueError, match="multiple"):
        _generate(model, steps=5)


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[4, 2, 2, 5], [4, 4, 4, 4], [2, 3, 3, 3]])
    assert completion_mask_from_ids(ids, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert completion_mask_from_ids(ids, [5, 3]).tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
