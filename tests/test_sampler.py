"""The semi-autoregressive diffusion sampler: schedule, padding, exact draws, and token identity with a plain loop."""

import math

import pytest
import torch
from tiny_models import ConstantLogits, tiny_bidirectional_llama

from trl_spg.modeling import position_ids_from_mask
from trl_spg.sampler import (
    completion_mask_from_ids,
    diffusion_generate,
    inverse_cdf_sample,
    reveal_schedule,
    sample_tokens,
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
    model = tiny_bidirectional_llama(vocab_size=16, seed=5)
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


def test_pinned_rollouts_of_a_seeded_tiny_model():
    """Literal outputs of the exact sampler, recorded before the fast decoding modes were added: the default
    (fixed schedule, no KV cache) must keep producing these tokens, greedy and sampled."""
    from trl_spg.tiny import build_char_tokenizer, build_tiny_diffusion_lm

    tokenizer = build_char_tokenizer()
    model = build_tiny_diffusion_lm(tokenizer, seed=3)
    batch = tokenizer(["12+34=", "7*8="], return_tensors="pt", padding=True, add_special_tokens=False)
    assert batch["input_ids"].tolist() == [[5, 6, 43, 7, 8, 41], [0, 0, 11, 45, 12, 41]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    options = dict(mask_token_id=tokenizer.mask_token_id, gen_length=8, block_length=4, steps=6)
    greedy = diffusion_generate(model, batch["input_ids"], batch["attention_mask"], temperature=0.0, **options)
    sampled = diffusion_generate(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        temperature=0.9,
        generator=torch.Generator().manual_seed(11),
        **options,
    )
    assert greedy.tolist() == [[29, 29, 29, 29, 42, 42, 29, 29], [29, 29, 29, 29, 29, 29, 29, 29]]
    assert sampled.tolist() == [[11, 51, 48, 41, 39, 1, 55, 52], [55, 9, 10, 27, 51, 25, 54, 48]]
