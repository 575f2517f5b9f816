"""The canvas of the likelihood estimates: what each convention estimates (the exact-likelihood oracle), and that
every trainer scores the completions on the canvas they were generated on."""

import math

import pytest
import torch
from exact_likelihood import exact_quantities
from tiny_models import char_variety, make_args, tiny_bidirectional_llama

from trl_spg import DiffuGRPOTrainer, SPGTrainer, WD1Trainer
from trl_spg.bounds import elbo_estimate
from trl_spg.masking import sample_masks
from trl_spg.scoring import masked_token_logprobs

MASK = 7
PROMPT, COMPLETION, TAIL = [1, 2, 3], [4, 0, 2, 5], [5, 6, 6]  # the completion ends with its EOS (5)


def elbo_samples(model, tail_visible: bool, canvas_tail: list[int], num_masks=20000, seed=0):
    """One sequence-scale ELBO sample per random mask of the completion, on ``PROMPT + COMPLETION + canvas_tail``."""
    completion_ids = torch.tensor([COMPLETION + canvas_tail])
    completion_mask = torch.tensor([[1] * len(COMPLETION) + [0] * len(canvas_tail)])
    prompt_ids = torch.tensor([PROMPT])
    masks = sample_masks(
        torch.ones_like(prompt_ids), completion_mask, num_masks=num_masks, strategy="random",
        tail_visible=tail_visible, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    with torch.no_grad():
        logps = masked_token_logprobs(model, prompt_ids, torch.ones_like(prompt_ids), completion_ids, masks, MASK)
    scored = masks.scored
    assert not scored[..., len(COMPLETION) :].any()  # the tail is never scored
    per_mask = len(COMPLETION) * torch.where(scored, logps.double(), 0.0).sum(-1) / scored.sum(-1)
    estimate = len(COMPLETION) * elbo_estimate(logps.double(), scored).item()
    return estimate, per_mask.std().item() / math.sqrt(per_mask.numel())


def test_each_convention_estimates_the_elbo_on_its_own_canvas():
    """`masked` estimates the ELBO of the completion with its tail masked on the rollout's canvas (the tail
    marginalised), `visible` the ELBO given the generated tail, `trimmed` the ELBO on a canvas without the tail;
    the three differ by more than 6 standard errors, so a wrong canvas would fail here."""
    model = tiny_bidirectional_llama(vocab_size=8, seed=4)
    exact = {
        "masked": exact_quantities(model, PROMPT, COMPLETION, MASK, 1.0, suffix=[MASK] * len(TAIL))["elbo"],
        "visible": exact_quantities(model, PROMPT, COMPLETION, MASK, 1.0, suffix=TAIL)["elbo"],
        "trimmed": exact_quantities(model, PROMPT, COMPLETION, MASK, 1.0)["elbo"],
    }
    runs = {
        "masked": elbo_samples(model, tail_visible=False, canvas_tail=TAIL),
        "visible": elbo_samples(model, tail_visible=True, canvas_tail=TAIL),
        "trimmed": elbo_samples(model, tail_visible=False, canvas_tail=[]),
    }
    for name, (estimate, stderr) in runs.items():
        assert abs(estimate - exact[name]) < 4 * stderr, name
    stderr = max(s for _, s in runs.values())
    gaps = [
        abs(exact[a] - exact[b]) for a, b in [("masked", "visible"), ("masked", "trimmed"), ("visible", "trimmed")]
    ]
    assert min(gaps) > 6 * stderr, (exact, stderr)


class CanvasRecorder:
    """Wraps a trainer's likelihood estimate to record the completion tensors it is given."""

    def __init__(self, monkeypatch, module, name):
        self.calls, original = [], getattr(module, name)

        def recording(*args, **kwargs):
            noised = getattr(args[4], "noised", args[4])  # MonteCarloMasks (SPG) or the one-step mask tensor
            self.calls.append({"completion_ids": args[3].clone(), "noised": noised.clone()})
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, recording)


@pytest.mark.parametrize("canvas", ["masked", "visible", "trimmed"])
@pytest.mark.parametrize("trainer_class", [SPGTrainer, DiffuGRPOTrainer, WD1Trainer])
def test_every_trainer_scores_on_the_rollout_canvas(canvas, trainer_class, tmp_path, tiny_model, tiny_tokenizer,
                                                   prompt_dataset, monkeypatch):  # fmt: skip
    import trl_spg.objective
    import trl_spg.trainers.d1_trainer
    import trl_spg.trainers.wd1_trainer

    module, name = {
        SPGTrainer: (trl_spg.objective, "masked_token_logprobs"),
        DiffuGRPOTrainer: (trl_spg.trainers.d1_trainer, "one_step_token_logprobs"),
        WD1Trainer: (trl_spg.trainers.wd1_trainer, "one_step_token_logprobs"),
    }[trainer_class]
    recorder = CanvasRecorder(monkeypatch, module, name)
    import trl_spg.trainers.diffusion_trainer as base

    sampler = base.diffusion_generate

    def ending_early(*a, **k):  # a random tiny model rarely says EOS: end every other rollout at token 5
        ids = sampler(*a, **k)
        ids[::2, 4] = tiny_tokenizer.eos_token_id
        return ids

    monkeypatch.setattr(base, "diffusion_generate", ending_early)
    overrides = {"num_iterations": 2, "beta": 0.0} if trainer_class is DiffuGRPOTrainer else {}
    args = make_args(tmp_path, config_class=trainer_class.config_class, max_steps=1, max_completion_length=12,
                     block_length=4, diffusion_steps=6, likelihood_canvas=canvas, temperature=1.0, **overrides)  # fmt: skip
    trainer = trainer_class(
        tiny_model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    canvases = []
    original = trainer._generate_single_turn

    def keep_canvas(*a, **k):
        result = original(*a, **k)
        canvases.append(trainer._rollout_canvas.clone())
        return result

    monkeypatch.setattr(trainer, "_generate_single_turn", keep_canvas)
    trainer.train()
    assert recorder.calls and canvases
    (canvas_ids,) = canvases
    eos = tiny_tokenizer.eos_token_id
    lengths = [(row == eos).nonzero()[0].item() + 1 if (row == eos).any() else len(row) for row in canvas_ids]
    for call in recorder.calls:
        ids = call["completion_ids"]
        if canvas == "trimmed":
            assert ids.shape[1] < 12 or max(lengths) == 12  # the longest completion of the batch, not the canvas
        else:
            assert ids.shape[1] == 12  # prompt + max_completion_length, as the rollout was decoded
            # The generated tail travels with the batch (TRL shuffles rows: compare as sets of rows).
            assert {tuple(r) for r in ids.tolist()} <= {tuple(r) for r in canvas_ids.tolist()}
    if canvas != "trimmed":
        # The tail (after each completion's first EOS) is masked in the input (`masked`) or left visible.
        for call in recorder.calls:
            noised = call["noised"].reshape(call["completion_ids"].shape[0], -1, call["noised"].shape[-1])[..., -12:]
            ids = call["completion_ids"]
            after_eos = (ids == eos).long().cumsum(-1) - (ids == eos).long() > 0
            tail = after_eos[:, None, :].expand_as(noised)
            assert noised[tail].all() if canvas == "masked" else not noised[tail].any()
        assert any(length < 12 for length in lengths)  # some completion did end early: there was a tail to check
