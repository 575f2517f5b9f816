"""Batch compaction of the sampler (`DecodingConfig.compact_batch`): finished rows leave the batch, identical rows
are forwarded once, and no token up to a row's first EOS changes (nor the generator's final state)."""

import pytest
import torch
from tiny_models import tiny_bidirectional_llama

from trl_spg import DecodingConfig, SPGConfig
from trl_spg.sampler import completion_mask_from_ids, diffusion_generate, finished_rows

VOCAB, MASK, EOS = 32, 31, 1
PROMPT = 7


def eos_after(model, cut: int, bias: float, width: int = 1000):
    """Add ``bias`` to the EOS logit at the positions whose position id (counted from the row's first real token) is
    in ``[cut, cut + width)``: rows with longer prompts reach it earlier in their completion, so rows finish at
    different steps. Depends on each row's own input only, like any model, and works with the KV cache's window
    forwards."""

    def hook(module, args, kwargs, output):
        positions = kwargs["position_ids"]
        keep = kwargs.get("logits_to_keep")
        if isinstance(keep, torch.Tensor):
            positions = positions[:, keep]
        output.logits[..., EOS] += bias * ((positions >= cut) & (positions < cut + width))
        return output

    model.register_forward_hook(hook, with_kwargs=True)
    return model


class RowsFed:
    """Records the canvas of every forward (the window, for the KV cache's window forwards)."""

    def __init__(self, model):
        self.canvases = []
        model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.canvases.append(kwargs["input_ids"].clone())

    @property
    def rows(self) -> list[int]:
        return [len(canvas) for canvas in self.canvases]


def model_(seed=2, cut=12, bias=12.0, width=1000):
    return eos_after(tiny_bidirectional_llama(vocab_size=VOCAB, seed=seed), cut=cut, bias=bias, width=width)


def prompts(rows=6, seed=0, repeats=1):
    """Left-padded prompts of lengths 7, 6, ..., 2 (so the EOS bias starts at different completion positions)."""
    data = torch.Generator().manual_seed(100 + seed)
    ids = torch.randint(2, MASK, (rows, PROMPT), generator=data)
    mask = torch.ones_like(ids)
    for row in range(rows):
        pad = row % (PROMPT - 1)
        ids[row, :pad], mask[row, :pad] = 0, 0
    return ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)


def generate(model, ids, mask, *, seed=0, generator=None, **options):
    settings = dict(mask_token_id=MASK, gen_length=24, block_length=8, steps=12)
    settings.update(options)
    generator = generator or torch.Generator().manual_seed(seed)
    return diffusion_generate(model, ids, mask, generator=generator, **settings)


def assert_same_up_to_first_eos(compact: torch.Tensor, full: torch.Tensor, eos=EOS) -> None:
    """Same tokens up to and including the first EOS (any of ``eos``), then what was revealed or EOS."""
    keep = completion_mask_from_ids(full, eos).bool()
    assert torch.equal(completion_mask_from_ids(compact, eos).bool(), keep)
    assert torch.equal(compact[keep], full[keep])
    # Rows that ran to the end are identical; the others hold what they had revealed, or EOS, after their EOS.
    assert (compact != MASK).all()
    tail = ~keep
    assert ((compact[tail] == full[tail]) | (compact[tail] == EOS)).all()


MODES = [
    dict(),
    dict(decoding="threshold", threshold=0.5),
    dict(decoding="threshold", threshold=0.5, min_tokens_per_step=1),
    dict(kv_cache="dual"),
    dict(decoding="threshold", threshold=0.5, kv_cache="prefix", cache_refresh_every=2),
]


def _name(options):
    return "-".join(f"{k}={v}" for k, v in options.items()) or "exact"


SEEDS = [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]


@pytest.mark.parametrize("options", MODES, ids=_name)
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_compaction_changes_no_token_up_to_the_first_eos(options, remasking, temperature, seed):
    model = model_(bias=8.0 if temperature else 12.0)
    ids, mask = prompts(seed=seed)
    settings = dict(temperature=temperature, remasking=remasking, **options)
    counter = RowsFed(model)
    generators = [torch.Generator().manual_seed(seed) for _ in range(2)]
    full = generate(model, ids, mask, compact_batch=False, eos_token_id=EOS, generator=generators[0], **settings)
    fed_full = sum(counter.rows)
    counter.canvases.clear()
    compact = generate(model, ids, mask, eos_token_id=[EOS, 0], generator=generators[1], **settings)
    assert_same_up_to_first_eos(compact, full, eos=[EOS, 0])  # two EOS ids: a completion ends at either
    assert torch.equal(generators[0].get_state(), generators[1].get_state())
    # The workload is a real one: rows end at different blocks, some before the last, so some forwards are saved.
    ends = completion_mask_from_ids(full, [EOS, 0]).sum(-1)
    assert len(set(ends.tolist())) > 1 and ends.min() < 16, ends
    assert sum(counter.rows) < fed_full


@pytest.mark.parametrize("decoding", ["fixed", "threshold"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_finished_rows_are_never_fed_again(decoding, temperature):
    model = model_()
    ids, mask = prompts()
    counter = RowsFed(model)
    out = generate(model, ids, mask, eos_token_id=EOS, temperature=temperature, decoding=decoding, threshold=0.7)
    for canvas in counter.canvases:
        assert not finished_rows(canvas[:, PROMPT:], MASK, torch.tensor([EOS])).any()
    # Rows that left early kept masked positions, which the result fills with EOS.
    assert min(counter.rows) < len(ids) and (out != MASK).all()


def test_identical_rows_are_forwarded_once_and_finished_rows_dropped():
    """Greedy rollouts of 3 prompts x 4 generations (the copies stay identical): each forward computes one row per
    prompt still decoding, and each prompt takes the forwards it takes alone."""
    model = model_()
    ids, mask = prompts(repeats=4)
    picked = torch.tensor([0, 3, 5]).repeat_interleave(4) * 4 + torch.arange(4).repeat(3)  # prompts of 7, 4, 2 tokens
    ids, mask = ids[picked], mask[picked]
    counter = RowsFed(model)
    alone, forwards = [], []
    for prompt in range(3):
        before = len(counter.canvases)
        alone.append(generate(model, ids[4 * prompt : 4 * prompt + 1], mask[4 * prompt : 4 * prompt + 1],
                              eos_token_id=EOS))  # fmt: skip
        forwards.append(len(counter.canvases) - before)
    assert min(forwards) < max(forwards) < 12, forwards  # 12: 3 blocks x 4 steps
    counter.canvases.clear()
    out = generate(model, ids, mask, eos_token_id=EOS)
    assert counter.rows == [sum(n > j for n in forwards) for j in range(max(forwards))]
    assert torch.equal(out, torch.cat(alone).repeat_interleave(4, 0))


@pytest.mark.parametrize("temperature, remasking", [(0.0, "low_confidence"), (0.0, "random"), (1.0, "random")])
def test_duplicates_are_forwarded_once_and_change_no_token(temperature, remasking):
    model = model_()
    ids, mask = prompts(rows=3, repeats=4)
    counter = RowsFed(model)
    full = generate(model, ids, mask, compact_batch=False, temperature=temperature, remasking=remasking)
    assert counter.rows == [12] * 12
    counter.canvases.clear()
    deduplicated = generate(model, ids, mask, temperature=temperature, remasking=remasking)  # no EOS ids: no drops
    assert torch.equal(deduplicated, full)
    if remasking == "low_confidence":  # greedy copies stay identical
        assert counter.rows == [3] * 12
    else:  # the copies diverge at their first reveals; the check stops at the first forward without duplicates
        assert counter.rows[0] == 3 and counter.rows[-1] == 12 and len(counter.rows) == 12


def test_generator_ends_in_the_same_state_when_every_row_finishes_early():
    """Evaluation reuses one generator across batches: compaction must leave it where the exact sampler does, even
    when the whole batch finishes before the last step."""
    model = model_(cut=0, bias=50.0)  # EOS everywhere: every row finishes at its first reveal
    ids, mask = prompts()
    states = []
    for compact in (False, True):
        generator = torch.Generator().manual_seed(5)
        for options in (dict(), dict(decoding="threshold", threshold=0.5)):
            generate(model, ids, mask, compact_batch=compact, eos_token_id=EOS, temperature=1.0, generator=generator,
                     remasking="random", **options)  # fmt: skip
        states.append(generator.get_state())
    assert torch.equal(states[0], states[1])


def test_compaction_off_or_without_eos_ids_decodes_every_row_to_the_end():
    model = model_(bias=50.0, width=1)  # an EOS at one position, then the model's own tokens
    ids, mask = prompts()
    counter = RowsFed(model)
    off = generate(model, ids, mask, compact_batch=False, eos_token_id=EOS, temperature=1.0)
    no_ids = generate(model, ids, mask, temperature=1.0)
    assert torch.equal(off, no_ids)
    assert counter.rows[:12] == [6] * 12 and counter.rows[12] == 6  # prompts differ: nothing to deduplicate
    on = generate(model, ids, mask, eos_token_id=EOS, temperature=1.0)
    assert_same_up_to_first_eos(on, off)
    tail = ~completion_mask_from_ids(off, EOS).bool()
    assert (off[tail] != EOS).any() and (on[tail] == EOS).sum() > (off[tail] == EOS).sum()


def test_the_visible_canvas_turns_compaction_off(tmp_path):
    options = dict(output_dir=str(tmp_path), report_to="none", bf16=False, use_cpu=True)
    assert SPGConfig(**options).rollout_config().compact_batch
    assert SPGConfig(**options, likelihood_canvas="trimmed").rollout_config().compact_batch
    assert not SPGConfig(**options, likelihood_canvas="visible").rollout_config().compact_batch
    assert not SPGConfig(**options, rollout_compact_batch=False).rollout_config().compact_batch


def test_validation():
    assert DecodingConfig().compact_batch is True
    assert any("compact_batch" in problem for problem in DecodingConfig(compact_batch="no").problems())
    assert "compact_batch" not in DecodingConfig().keywords()
    assert DecodingConfig(compact_batch=False).keywords()["compact_batch"] is False
    model = model_()
    ids, mask = prompts()
    with pytest.raises(ValueError, match="mask_token_id"):
        generate(model, ids, mask, eos_token_id=[EOS, MASK])
