"""Structure of SPG's Monte Carlo masks for every strategy."""

import pytest
import torch

from trl_spg.masking import BLOCK_SAMPLINGS, apply_masks, choose_k_of, sample_masks

BLOCK = 4


def _layout():
    # Three left-padded prompts (width 5) and completions of width 12 with lengths 12, 7 and 1.
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    lengths = torch.tensor([12, 7, 1])
    completion_mask = (torch.arange(12)[None] < lengths[:, None]).long()
    return prompt_mask, completion_mask, lengths


def _draw(strategy, num_masks=64, seed=0, **kwargs):
    prompt_mask, completion_mask, lengths = _layout()
    masks = sample_masks(
        prompt_mask,
        completion_mask,
        num_masks=num_masks,
        strategy=strategy,
        block_length=BLOCK,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
    return prompt_mask, completion_mask, lengths, masks


@pytest.mark.parametrize("strategy", ["all", "random", "block_all", "block_random"])
@pytest.mark.parametrize("p_mask_prompt", [0.0, 0.5])
def test_common_invariants(strategy, p_mask_prompt):
    num_masks = 1 if strategy == "all" else 64
    prompt_mask, completion_mask, lengths, masks = _draw(strategy, num_masks, p_mask_prompt=p_mask_prompt)
    assert masks.noised.shape == (3, num_masks, 17) and masks.scored.shape == (3, num_masks, 12)
    prompt_noise, completion_noise = masks.noised[..., :5], masks.noised[..., 5:]
    # Pads never masked; post-EOS always masked in the input and never scored.
    assert not (prompt_noise & ~prompt_mask.bool()[:, None]).any()
    tail = ~completion_mask.bool()[:, None].expand_as(completion_noise)
    assert completion_noise[tail].all()
    assert not masks.scored[tail].any()
    # Scored = masked content; every mask scores at least one token.
    assert torch.equal(masks.scored, completion_noise & ~tail)
    assert (masks.scored.sum(-1) >= 1).all()
    if p_mask_prompt == 0:
        assert not prompt_noise.any()
    else:
        assert prompt_noise.any()


def test_all_masks_whole_completion():
    _, completion_mask, _, masks = _draw("all", num_masks=1)
    assert torch.equal(masks.scored[:, 0], completion_mask.bool())
    with pytest.raises(ValueError, match="num_masks=1"):
        _draw("all", num_masks=2)


def test_random_counts_in_range():
    _, _, lengths, masks = _draw("random", num_masks=400, min_t=0.25, max_t=0.75)
    counts = masks.scored.sum(-1)
    for row, length in enumerate(lengths.tolist()):
        low, high = max(1, int(length * 0.25)), max(max(1, int(length * 0.25)), min(int(length * 0.75), length))
        assert counts[row].min() >= low and counts[row].max() <= high
        assert set(counts[row].tolist()) == set(range(low, high + 1))  # every count in range occurs


def _check_block_structure(masks, lengths, strategy):
    """Without prompt perturbation: clean prefix blocks, one (partly) masked content block, fully masked suffix."""
    for row, length in enumerate(lengths.tolist()):
        for scored in masks.scored[row]:
            first = int(scored.float().argmax())
            start = first - first % BLOCK  # the chosen block: everything before it is clean
            end = min(start + BLOCK, length)
            assert start < length  # the chosen block holds content
            assert not scored[:start].any()
            assert scored[end:length].all()  # fully masked suffix
            count = int(scored[start:end].sum())
            assert 1 <= count <= end - start
            if strategy == "block_all":
                assert count == end - start


@pytest.mark.parametrize("block_sampling", ["independent", "stratified"])
@pytest.mark.parametrize("strategy", ["block_all", "block_random"])
def test_block_structure(strategy, block_sampling):
    _, _, lengths, masks = _draw(strategy, num_masks=200, block_sampling=block_sampling)
    _check_block_structure(masks, lengths, strategy)
    # Every content block gets chosen sometimes: the first scored position's block varies over all of them.
    first_block = masks.scored[0].float().argmax(-1) // BLOCK
    assert set(first_block.tolist()) == {0, 1, 2}


def _chosen_blocks(masks):
    """The block of every mask, read off its first scored position (valid without prompt perturbation)."""
    return masks.scored.float().argmax(-1) // BLOCK


@pytest.mark.parametrize("strategy", ["block_all", "block_random"])
def test_stratified_masks_of_a_completion_take_different_blocks(strategy):
    # Rows have 3, 2 and 1 content blocks. With m = 3 masks: all three blocks, both blocks (the first one again for
    # the third mask), and the single block three times; with m = 2 the masks differ wherever two blocks exist.
    independent_repeats = 0
    for seed in range(20):
        blocks = _chosen_blocks(_draw(strategy, num_masks=3, seed=seed, block_sampling="stratified")[-1])
        assert sorted(blocks[0].tolist()) == [0, 1, 2]
        assert sorted(blocks[1, :2].tolist()) == [0, 1] and blocks[1, 2] == blocks[1, 0]
        assert blocks[2].tolist() == [0, 0, 0]
        pairs = _chosen_blocks(_draw(strategy, num_masks=2, seed=seed, block_sampling="stratified")[-1])
        assert (pairs[:2, 0] != pairs[:2, 1]).all()
        pairs = _chosen_blocks(_draw(strategy, num_masks=2, seed=seed, block_sampling="independent")[-1])
        independent_repeats += int(pairs[0, 0] == pairs[0, 1])
    # The independent choice does repeat a block (probability 1/3 per completion of row 0's kind).
    assert independent_repeats > 0


def test_stratified_block_of_each_mask_is_uniform():
    """Each mask's block is uniform over the content blocks (what keeps the ELBO estimate's expectation), while the
    two masks of a completion never share one."""
    rows = 3000
    completion_mask = (torch.arange(12)[None] < torch.full((rows, 1), 11)).long()  # 3 content blocks
    masks = sample_masks(
        torch.ones(rows, 2, dtype=torch.long),
        completion_mask,
        num_masks=2,
        strategy="block_all",
        block_length=BLOCK,
        block_sampling="stratified",
        generator=torch.Generator().manual_seed(0),
    )
    blocks = _chosen_blocks(masks)
    assert (blocks[:, 0] != blocks[:, 1]).all()
    for index in range(2):
        freq = torch.bincount(blocks[:, index], minlength=3).float() / rows
        # standard error sqrt(2/9/3000) ~ 0.0086
        assert torch.allclose(freq, torch.full((3,), 1 / 3), atol=0.035), freq


def test_block_random_partial_block_counts():
    _, _, lengths, masks = _draw("block_random", num_masks=400)
    # Row 1 has length 7: blocks [0,4) and [4,7). If block 1 is chosen, 1..3 of its tokens are masked.
    row = masks.scored[1]
    chose_last = ~row[:, :4].any(-1)
    counts = row[chose_last][:, 4:7].sum(-1)
    assert set(counts.tolist()) == {1, 2, 3}
    # If block 0 is chosen, 1..4 of its tokens are masked and block 1 is fully masked.
    chose_first = row[:, :4].any(-1) & row[:, 4:7].all(-1)
    assert set(row[chose_first][:, :4].sum(-1).tolist()) <= {1, 2, 3, 4}
    assert len(set(row[chose_first][:, :4].sum(-1).tolist())) == 4


def test_prompt_perturbation_rate_and_completion_prefix():
    prompt_mask, _, lengths, masks = _draw("block_random", num_masks=2000, p_mask_prompt=0.15)
    real = prompt_mask.bool()[:, None].expand(-1, 2000, -1)
    rate = masks.noised[..., :5][real].float().mean().item()
    # 11 real prompt tokens x 2000 masks: standard error ~0.0024.
    assert abs(rate - 0.15) < 0.01
    # Clean earlier completion blocks get perturbed too: row 0 sometimes has scored tokens before a full suffix.
    row = masks.scored[0]
    chose_last = row[:, 8:12].any(-1) & ~row[:, 4:8].all(-1)
    assert chose_last.any()
    assert row[chose_last][:, :4].any()


def test_reproducible_and_seed_sensitive():
    a = _draw("block_random", seed=3, p_mask_prompt=0.15)[-1]
    b = _draw("block_random", seed=3, p_mask_prompt=0.15)[-1]
    c = _draw("block_random", seed=4, p_mask_prompt=0.15)[-1]
    assert torch.equal(a.noised, b.noised)
    assert not torch.equal(a.noised, c.noised)


def test_global_rng_untouched():
    state = torch.get_rng_state()
    _draw("random")
    assert torch.equal(state, torch.get_rng_state())


def test_choose_k_of_uniform():
    candidates = torch.tensor([[True, False, True, True, False]]).expand(3000, -1)
    k = torch.full((3000,), 2)
    chosen = choose_k_of(candidates, k, torch.rand(3000, 5, generator=torch.Generator().manual_seed(0)))
    assert (chosen.sum(-1) == 2).all() and not chosen[:, [1, 4]].any()
    freq = chosen.float().mean(0)[[0, 2, 3]]
    # Each candidate is chosen with probability 2/3; standard error sqrt(2/9/3000) ~ 0.0086.
    assert torch.allclose(freq, torch.full((3,), 2 / 3), atol=0.035)


def test_apply_masks():
    ids = torch.tensor([[5, 6, 7]])
    noised = torch.tensor([[[True, False, True], [False, False, False]]])
    assert apply_masks(ids, noised, 9).tolist() == [[[9, 6, 9], [5, 6, 7]]]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="strategy"):
        _draw("blocks")
    with pytest.raises(ValueError, match="min_t"):
        _draw("random", min_t=0.8, max_t=0.2)
    with pytest.raises(ValueError, match="block sampling"):
        _draw("block_all", block_sampling="sorted")


@pytest.mark.parametrize("strategy", ["block_all", "block_random"])
def test_stratified_equals_independent_with_one_mask_or_one_block(strategy):
    """Same random numbers, same first block: a single mask, or a completion of one block (e.g. the Sudoku example's
    20-token rollouts in one block), gives bit-identical masks under both choices."""
    one = {s: _draw(strategy, num_masks=1, seed=2, p_mask_prompt=0.3, block_sampling=s)[-1] for s in BLOCK_SAMPLINGS}
    assert torch.equal(one["independent"].noised, one["stratified"].noised)
    completion_mask = torch.ones(5, 4, dtype=torch.long)  # one block of 4
    draws = {
        s: sample_masks(
            torch.ones(5, 3, dtype=torch.long),
            completion_mask,
            num_masks=4,
            strategy=strategy,
            block_length=BLOCK,
            p_mask_prompt=0.3,
            block_sampling=s,
            generator=torch.Generator().manual_seed(3),
        )
        for s in BLOCK_SAMPLINGS
    }
    assert torch.equal(draws["independent"].noised, draws["stratified"].noised)
