"""Fast decoding modes of the sampler: confidence-threshold decoding and the block-wise KV cache.

The fast modes are approximations, so these tests check what holds by construction: the settings under which they
reduce to the exact sampler, padding and batch invariance, how many tokens each forward reveals, and what the model
is fed.
"""

import pytest
import torch
from tiny_models import ConstantLogits, tiny_bidirectional_llama, tiny_bidirectional_qwen2

from trl_spg.modeling import BlockKVCache, forward_logits
from trl_spg.sampler import diffusion_generate, reveal_schedule

MODELS = {"llama": tiny_bidirectional_llama, "qwen2_shifted": tiny_bidirectional_qwen2}
FAST_MODES = [
    dict(decoding="threshold", threshold=0.3),
    dict(decoding="threshold", threshold=0.3, min_tokens_per_step=1),
    dict(kv_cache="prefix"),
    dict(kv_cache="dual"),
    dict(decoding="threshold", threshold=0.3, kv_cache="dual"),
    dict(decoding="threshold", threshold=0.3, kv_cache="prefix", cache_refresh_every=2),
]


def counting(model):
    """Register a hook on ``model`` that records the width of every input it is fed; returns (model, widths)."""
    widths = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    return model, widths


def _prompts(vocab, rows=4, width=6, seed=0, padded=True):
    data = torch.Generator().manual_seed(100 + seed)
    ids = torch.randint(0, vocab - 1, (rows, width), generator=data)
    mask = torch.ones_like(ids)
    if padded:
        ids[1, :3], mask[1, :3] = 0, 0
        ids[3, :1], mask[3, :1] = 0, 0
    return ids, mask


def _run(model, ids, mask, temperature=0.0, seed=7, **options):
    vocab = model.config.vocab_size if hasattr(model, "config") else model.values.shape[-1]
    defaults = dict(mask_token_id=vocab - 1, gen_length=16, block_length=8, steps=8)
    defaults.update(options)
    return diffusion_generate(
        model, ids, mask, temperature=temperature, generator=torch.Generator().manual_seed(seed), **defaults
    )


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("kv_cache", ["none", "dual"])
@pytest.mark.parametrize("steps", [8, 10, 4, 32])  # 4, 5, 2, 16 steps per block of 8: uneven, and k = 0 steps
def test_unreachable_threshold_with_the_exact_minimum_is_the_exact_sampler(temperature, remasking, kv_cache, steps):
    model = tiny_bidirectional_llama(vocab_size=32, seed=2)
    ids, mask = _prompts(32)
    options = dict(temperature=temperature, remasking=remasking, steps=steps)
    exact = _run(model, ids, mask, kv_cache=kv_cache, **options)
    # No float32 log-probability of a candidate reaches log(1) = 0 here: every reveal is the schedule's minimum.
    threshold = _run(model, ids, mask, decoding="threshold", threshold=1.0, kv_cache=kv_cache, **options)
    assert torch.equal(threshold, exact)


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cache_refreshed_at_every_forward_is_the_exact_sampler(family, kv_cache, temperature):
    model = MODELS[family](vocab_size=32, seed=3)
    ids, mask = _prompts(32, seed=3)
    exact = _run(model, ids, mask, temperature, steps=10)
    cached = _run(model, ids, mask, temperature, steps=10, kv_cache=kv_cache, cache_refresh_every=1)
    assert torch.equal(cached, exact)
    # Without refreshes the cache is an approximation, but still a valid decode.
    approximate = _run(model, ids, mask, temperature, steps=10, kv_cache=kv_cache)
    assert (approximate != 31).all()


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
def test_cached_forward_on_an_unchanged_canvas_gives_the_full_forward_logits(family, kv_cache):
    """Right after a refresh the cache is exact, so the window-only forward must reproduce the full forward: this
    checks position ids, the attention mask over cached + window positions, and (Qwen2) the logit shift."""
    model = MODELS[family](vocab_size=16, seed=4)
    ids, mask = _prompts(16, width=7, seed=4)
    canvas = torch.cat([ids, torch.randint(0, 15, (4, 4)), torch.full((4, 8), 15)], 1)
    canvas[:, 13] = 15  # a still-masked position in the current block
    full_mask = torch.cat([mask, torch.ones(4, 12, dtype=mask.dtype)], 1)
    keep = torch.arange(11, 15)  # the current block
    cache = BlockKVCache(model, kv_cache)
    refreshed = cache.refresh(canvas, full_mask, keep)
    reference = forward_logits(model, canvas, full_mask, keep)
    assert torch.equal(refreshed, reference)
    shift = 1 if family == "qwen2_shifted" else 0
    assert cache.window == (11 - shift, 15 if kv_cache == "dual" else 19)
    for _ in range(2):  # the cache is cropped back after each use
        assert torch.allclose(cache.logits(canvas, full_mask, keep), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
def test_cached_forwards_feed_only_the_window(family, kv_cache):
    model, widths = counting(MODELS[family](vocab_size=16, seed=5))
    ids, mask = _prompts(16, seed=5)
    _run(model, ids, mask, steps=8, kv_cache=kv_cache)  # 2 blocks of 8 positions, 4 forwards each
    shift = 1 if family == "qwen2_shifted" else 0
    total = 6 + 16
    window = [8 + shift, 8 + shift] if kv_cache == "dual" else [16 + shift, 8 + shift]
    expected = [total] + [window[0]] * 3 + [total] + [window[1]] * 3
    assert widths == expected


@pytest.mark.parametrize("options", FAST_MODES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("family", sorted(MODELS))
def test_batch_decodes_each_row_as_alone_padded_or_not(options, family):
    """Greedy: each row of a left-padded batch decodes as it does alone without pads, and alone with extra pads.

    In float64, so that the rounding differences between batch shapes and padded widths (about 1e-6 in float32)
    cannot flip the random model's near-ties between block positions (confidences equal to 4 digits).
    """
    model = MODELS[family](vocab_size=24, seed=1).double()
    ids, mask = _prompts(24, seed=1)
    fed = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    batch = _run(model, ids, mask, **options)
    handle.remove()
    forwards, (_, widths) = [], counting(model)
    for row in range(4):
        real = ids[row, mask[row].bool()].unsqueeze(0)
        before = len(widths)
        alone = _run(model, real, torch.ones_like(real), **options)
        forwards.append(len(widths) - before)
        padded = torch.cat([torch.full((1, 3), 5), real], 1)
        padded_mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(real)], 1)
        assert torch.equal(batch[row], alone[0]), row
        assert torch.equal(_run(model, padded, padded_mask, **options)[0], alone[0]), row
    if options.get("decoding") == "threshold":
        # Rows finish blocks at different forwards here; finished rows are no longer fed to the model.
        assert len(set(forwards)) > 1, forwards
        assert min(fed) < len(ids) and len(fed) >= max(forwards)


@pytest.mark.parametrize("min_tokens_per_step", [None, 1, 3])
@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_threshold_reveals_the_minimum_and_every_confident_position(min_tokens_per_step, threshold):
    vocab = 24
    mask_id = vocab - 1
    model = tiny_bidirectional_llama(vocab_size=vocab, seed=7)
    ids, mask = _prompts(vocab, seed=7)
    calls = []  # (canvas, block logits) of every forward

    def record(module, args, kwargs, output):
        calls.append((kwargs["input_ids"].clone(), output.logits.detach().clone()))

    handle = model.register_forward_hook(record, with_kwargs=True)
    final = _run(
        model, ids, mask, steps=8, decoding="threshold", threshold=threshold, min_tokens_per_step=min_tokens_per_step
    )
    handle.remove()
    schedule = reveal_schedule(8, 4)
    final_canvas = torch.cat([ids, final], 1)

    def batch_rows(inputs):  # which batch rows a forward was fed (prompts are distinct)
        return [next(r for r in range(len(ids)) if torch.equal(inputs[j, :6], ids[r])) for j in range(len(inputs))]

    fed_rows = [batch_rows(inputs) for inputs, _ in calls]

    def state_after(index, row):  # a row's canvas when it is next fed to the model (or at the end)
        for inputs, rows in zip([c for c, _ in calls[index + 1 :]], fed_rows[index + 1 :]):
            if row in rows:
                return inputs[rows.index(row)]
        return final_canvas[row]

    forwards_per_block = [0, 0]
    for index, (before, logits) in enumerate(calls):
        after = torch.stack([state_after(index, row) for row in fed_rows[index]])
        gen_before, gen_after = before[:, 6:], after[:, 6:]
        block = int((gen_before == mask_id).any(0).nonzero()[0]) // 8
        step = forwards_per_block[block]
        forwards_per_block[block] += 1
        block_before = gen_before[:, 8 * block : 8 * block + 8]
        masked = block_before == mask_id
        # Only rows still decoding the block are fed to the model.
        assert masked.any(-1).all()
        revealed = (gen_before == mask_id) & (gen_after != mask_id)
        # Reveals only in the current block; revealed tokens never change.
        assert not revealed[:, : 8 * block].any() and not revealed[:, 8 * block + 8 :].any()
        kept = gen_before != mask_id
        assert torch.equal(gen_before[kept], gen_after[kept])
        # At least the minimum per row (all that is left when fewer remain).
        minimum = min_tokens_per_step if min_tokens_per_step is not None else schedule[step]
        assert (revealed.sum(-1) >= masked.sum(-1).clamp(max=minimum)).all()
        # Every masked position whose greedy candidate reaches the threshold is revealed, with that candidate.
        logits[..., mask_id] = float("-inf")
        probs = logits.double().softmax(-1)
        best, token = probs.max(-1)
        confident = masked & (best >= threshold + 1e-6)
        block_revealed = revealed[:, 8 * block : 8 * block + 8]
        assert block_revealed[confident].all()
        assert torch.equal(gen_after[:, 8 * block : 8 * block + 8][block_revealed], token[block_revealed])
    if min_tokens_per_step is None:
        assert max(forwards_per_block) <= 4  # never more forwards than the fixed schedule
    assert (final != mask_id).all()


def test_confident_model_decodes_each_block_in_one_forward():
    logits = torch.full((16,), -10.0)
    logits[9] = 10.0
    model, widths = counting(ConstantLogits(logits))
    ids, mask = _prompts(16)
    out = _run(model, ids, mask, decoding="threshold", threshold=0.9)
    assert (out == 9).all() and len(widths) == 2  # 2 blocks, one forward each instead of 4
    unsure, widths = counting(ConstantLogits(torch.zeros(16)))  # probability 1/15 everywhere: only the minimum
    _run(unsure, ids, mask, decoding="threshold", threshold=0.9, min_tokens_per_step=1)
    assert len(widths) == 16


def test_fast_modes_are_reproducible_and_leave_the_global_rng_alone():
    model = tiny_bidirectional_llama(vocab_size=32, seed=8)
    ids, mask = _prompts(32, seed=8)
    state = torch.get_rng_state()
    options = dict(decoding="threshold", threshold=0.6, kv_cache="dual")
    first = _run(model, ids, mask, 0.9, seed=1, **options)
    assert torch.equal(first, _run(model, ids, mask, 0.9, seed=1, **options))
    assert not torch.equal(first, _run(model, ids, mask, 0.9, seed=2, **options))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(decoding="parallel"), "decoding"),
        (dict(decoding="threshold", threshold=0.0), "threshold"),
        (dict(decoding="threshold", threshold=1.5), "threshold"),
        (dict(min_tokens_per_step=2), "threshold' only"),
        (dict(decoding="threshold", min_tokens_per_step=0), "at least 1"),
        (dict(kv_cache="full"), "kv_cache"),
        (dict(cache_refresh_every=2), "needs kv_cache"),
        (dict(kv_cache="dual", cache_refresh_every=0), "at least 1"),
        (dict(kv_cache="dual", cache_refresh_every=1.5), "at least 1"),
    ],
)
def test_fast_mode_validation(options, message):
    model = tiny_bidirectional_llama(vocab_size=16, seed=0)
    ids, mask = _prompts(16)
    with pytest.raises(ValueError, match=message):
        _run(model, ids, mask, **options)


def test_kv_cache_needs_a_transformers_model():
    ids, mask = _prompts(16)
    model = ConstantLogits(torch.zeros(16))
    with pytest.raises(ValueError, match="position_ids"):
        diffusion_generate(model, ids, mask, mask_token_id=15, gen_length=8, block_length=4, steps=4, kv_cache="dual")


def test_kv_cache_through_a_peft_model():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_bidirectional_llama(vocab_size=16, seed=0),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    ids, mask = _prompts(16)
    exact = _run(model, ids, mask, mask_token_id=15)
    assert torch.equal(_run(model, ids, mask, mask_token_id=15, kv_cache="dual", cache_refresh_every=1), exact)
