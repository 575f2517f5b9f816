"""Tests for the in-code tiny tokenizer / model (`trl_spg.tiny`) and the diffusion SFT warm start."""

import math
import subprocess
import sys

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import AutoTokenizer

from trl_spg.tiny import build_char_tokenizer, build_tiny_diffusion_lm
from trl_spg.tiny.warm_start import LR_SCHEDULES, _left_pad, diffusion_sft

PROMPTS = ["1+2=", "3+4=", "ab:", "xyz:"]
COMPLETIONS = ["<answer>3</answer>", "<answer>7</answer>", "ba", "zyx"]
COMPLETION_LENGTH = 8


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _full_mask_prediction(model, tokenizer, prompt, length):
    """One denoising step from a fully masked completion: argmax at every completion position."""
    ids = _ids(tokenizer, prompt) + [tokenizer.mask_token_id] * length
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    return logits[0, -length:].argmax(-1).tolist()


# --- tokenizer ---------------------------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_single_token_extras(tokenizer):
    text = "what is 12+30?\n a: b  = c <answer>42</answer><|mask|><|eot|>"
    ids = _ids(tokenizer, text)
    assert tokenizer.decode(ids) == text
    tokens = tokenizer.convert_ids_to_tokens(ids)
    for whole in ("<answer>", "</answer>", "<|mask|>", "<|eot|>"):
        assert whole in tokens
    assert len(_ids(tokenizer, "<answer>")) == 1
    assert _ids(tokenizer, "<|mask|>") == [tokenizer.mask_token_id]
    # Character level: one id per character, and no special tokens added implicitly.
    assert len(_ids(tokenizer, "ab 1\n")) == 5
    assert tokenizer("ab")["input_ids"] == _ids(tokenizer, "ab")
    # Skipping special tokens keeps the (non-special) answer tags.
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.replace("<|mask|>", "").replace("<|eot|>", "")


def test_tokenizer_special_tokens(tokenizer):
    special = [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id]
    assert None not in special
    assert len(set(special)) == 3
    assert tokenizer.padding_side == "left"
    batch = tokenizer(["a", "abc"], padding=True)
    assert batch["input_ids"][0][:2] == [tokenizer.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1]
    assert tokenizer.apply_chat_template([{"role": "user", "content": "1+1="}], tokenize=False) == "1+1="


def test_tokenizer_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "x = 7:\n<answer>7</answer><|eot|>"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.decode(_ids(reloaded, text)) == text
    assert len(reloaded) == len(tokenizer)
    for name in ("pad_token_id", "eos_token_id", "mask_token_id"):
        assert getattr(reloaded, name) == getattr(tokenizer, name)
    assert reloaded.padding_side == "left"


# --- model -------------------------------------------------------------------------------------------------------


def test_model_config(tokenizer):
    model = build_tiny_diffusion_lm(tokenizer)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.mask_token_id == tokenizer.mask_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.is_causal is False


def test_model_is_bidirectional(tokenizer):
    model = build_tiny_diffusion_lm(tokenizer)
    ids = torch.tensor([_ids(tokenizer, "12+34=46")])
    changed = ids.clone()
    changed[0, -1] = tokenizer.mask_token_id
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    # A causal model would leave the first position untouched by a change at the last one.
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-4)


def test_model_left_padding_invariance(tokenizer):
    model = build_tiny_diffusion_lm(tokenizer)
    texts = ["1+2=3", "12+345=357"]
    batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(**batch, position_ids=position_ids).logits
        for row, text in enumerate(texts):
            single = model(input_ids=torch.tensor([_ids(tokenizer, text)])).logits[0]
            torch.testing.assert_close(padded[row, -single.shape[0] :], single, atol=1e-5, rtol=0)


def test_model_deterministic_init_and_global_rng_untouched(tokenizer):
    before = torch.get_rng_state()
    first = build_tiny_diffusion_lm(tokenizer, seed=3)
    assert torch.equal(before, torch.get_rng_state())
    second = build_tiny_diffusion_lm(tokenizer, seed=3)
    other = build_tiny_diffusion_lm(tokenizer, seed=4)
    first_sd, second_sd, other_sd = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(first_sd[k], second_sd[k]) for k in first_sd)
    assert not torch.equal(first_sd["lm_head.weight"], other_sd["lm_head.weight"])


# --- warm start --------------------------------------------------------------------------------------------------


def test_diffusion_sft_memorises_and_restores_mode(tokenizer):
    model = build_tiny_diffusion_lm(tokenizer, seed=0)
    params_before = [p.detach().clone() for p in model.parameters()]
    steps = []
    losses = diffusion_sft(
        model,
        tokenizer,
        PROMPTS,
        COMPLETIONS,
        completion_length=COMPLETION_LENGTH,
        num_steps=150,
        batch_size=4,
        learning_rate=3e-3,
        generator=torch.Generator().manual_seed(0),
        callback=lambda step, loss: steps.append(step),
    )
    assert len(losses) == 150 and steps == list(range(1, 151))
    assert not model.training  # built in eval mode, so eval mode is restored
    assert any(not torch.equal(a, b) for a, b in zip(params_before, model.parameters()))
    initial, final = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert final < 0.5 * initial

    reproduced = 0
    for prompt, completion in zip(PROMPTS, COMPLETIONS):
        target = _ids(tokenizer, completion)
        target += [tokenizer.eos_token_id] * (COMPLETION_LENGTH - len(target))
        reproduced += _full_mask_prediction(model, tokenizer, prompt, COMPLETION_LENGTH) == target
    # One-step decoding from all-mask is the hardest case; most pairs (EOS tail included) must come out exactly.
    assert reproduced >= 3


def test_diffusion_sft_is_reproducible_from_generator(tokenizer):
    runs = []
    for _ in range(2):
        model = build_tiny_diffusion_lm(tokenizer, seed=1)
        runs.append(
            diffusion_sft(
                model,
                tokenizer,
                PROMPTS,
                COMPLETIONS,
                completion_length=COMPLETION_LENGTH,
                num_steps=3,
                batch_size=3,
                learning_rate=1e-3,
                generator=torch.Generator().manual_seed(7),
            )
        )
    assert runs[0] == runs[1]


def test_diffusion_sft_rejects_too_long_completion(tokenizer):
    model = build_tiny_diffusion_lm(tokenizer)
    with pytest.raises(ValueError, match="completion_length"):
        diffusion_sft(
            model,
            tokenizer,
            ["a:"],
            ["abcd"],  # 4 tokens + EOS > 4
            completion_length=4,
            num_steps=1,
            batch_size=1,
            learning_rate=1e-3,
            generator=torch.Generator().manual_seed(0),
        )


def test_diffusion_sft_requires_mask_token(tokenizer):
    no_mask_tokenizer = build_char_tokenizer()
    no_mask_tokenizer.mask_token = None
    model = build_tiny_diffusion_lm(tokenizer)
    model.config.mask_token_id = None
    assert no_mask_tokenizer.mask_token_id is None
    with pytest.raises(ValueError, match="mask token"):
        diffusion_sft(
            model,
            no_mask_tokenizer,
            ["a:"],
            ["b"],
            completion_length=4,
            num_steps=1,
            batch_size=1,
            learning_rate=1e-3,
            generator=torch.Generator().manual_seed(0),
        )


def test_diffusion_sft_learning_rate_schedules(tokenizer):
    assert LR_SCHEDULES == ("constant", "linear", "cosine")

    def run(schedule, steps, multipliers=None):
        def record(optimizer, args, kwargs):
            multipliers.append(optimizer.param_groups[0]["lr"] / 1e-2)

        model = build_tiny_diffusion_lm(tokenizer, seed=1)
        hook = register_optimizer_step_pre_hook(record) if multipliers is not None else None
        try:
            losses = diffusion_sft(
                model,
                tokenizer,
                PROMPTS,
                COMPLETIONS,
                completion_length=COMPLETION_LENGTH,
                num_steps=steps,
                batch_size=2,
                learning_rate=1e-2,
                lr_schedule=schedule,
                generator=torch.Generator().manual_seed(3),
            )
        finally:
            if hook is not None:
                hook.remove()
        return losses, model.lm_head.weight.detach().clone()

    # Multipliers at steps 1..4 of 4: constant, linear to 0, half a cosine to 0 (no warm-up).
    expected = {
        "constant": [1.0] * 4,
        "linear": [1.0, 0.75, 0.5, 0.25],
        "cosine": [1.0, 0.5 + 0.5 * math.sqrt(0.5), 0.5, 0.5 - 0.5 * math.sqrt(0.5)],
    }
    for schedule, multipliers in expected.items():
        seen = []
        run(schedule, 4, seen)
        assert seen == pytest.approx(multipliers, abs=1e-12), schedule
    constant_lrs = []
    run("constant", 3, constant_lrs)
    assert constant_lrs == [1.0] * 3  # exactly the given rate: the default schedule changes nothing

    # One step: every schedule starts at the full learning rate; after two, the decayed ones have moved less.
    one = [run(schedule, 1) for schedule in ("constant", "linear", "cosine")]
    assert all(torch.equal(one[0][1], other[1]) for other in one[1:])
    start = build_tiny_diffusion_lm(tokenizer, seed=1).lm_head.weight.detach()
    (losses_c, constant), (losses_l, linear) = run("constant", 2), run("linear", 2)
    assert losses_c[0] == losses_l[0] and not torch.equal(constant, linear)
    assert (linear - start).norm() < (constant - start).norm()
    with pytest.raises(ValueError, match="lr_schedule"):
        run("step", 1)


def test_left_pad_right_aligns_prompts_with_their_attention_mask():
    input_ids, attention_mask = _left_pad([[5, 6, 7], [8], []], pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert input_ids.dtype == attention_mask.dtype == torch.long


# --- package layout and the tiny Sudoku policy ------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_package_imports_only_the_model_builders():
    """`import trl_spg.tiny` must not pull in the warm start or the Sudoku policy; `tiny.sudoku` nothing above it."""
    code = (
        "import sys, trl_spg.tiny as t; "
        "assert {'build_char_tokenizer', 'build_tiny_diffusion_lm', 'bidirectional_llama', 'SIMPLE_CHAT_TEMPLATE'} "
        "<= set(dir(t)); "
        "assert not {'trl_spg.tiny.warm_start', 'trl_spg.tiny.sudoku'} & set(sys.modules), sorted(sys.modules); "
        "import trl_spg.tiny.sudoku; "
        "above = sorted(m for m in sys.modules if m.startswith('trl_spg.') and m.split('.')[1] in "
        "{'trainers', 'config', 'trainer', 'scripts', 'evaluation', 'task_evaluation'}); "
        "assert not above, above"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_sudoku_defaults_are_plain_settings():
    from trl_spg.tiny import sudoku

    assert not hasattr(sudoku, "tiny_training_defaults")
    assert sudoku.TINY_MODEL == "tiny"
    assert sudoku.TRAINING_DEFAULTS["max_completion_length"] == sudoku.TINY_COMPLETION_LENGTH == 20
    assert sudoku.TRAINING_DEFAULTS["lr_scheduler_type"] == "linear"
    assert sudoku.SPG_DEFAULTS == dict(num_mc_masks=4, min_mask_ratio=0.3, p_mask_prompt=0.0, eubo_beta=1.0)
    assert not set(sudoku.TRAINING_DEFAULTS) & set(sudoku.SPG_DEFAULTS)


def test_tiny_sudoku_model_logs_the_warm_start_and_then_loads_from_the_cache(tmp_path, caplog):
    from trl_spg.tasks.sudoku import sudoku_split
    from trl_spg.tiny.sudoku import TinySudokuSpec, tiny_sudoku_model

    rows = sudoku_split()[0][:8]
    spec = TinySudokuSpec(hidden_size=32, num_layers=1, sft_steps=2, sft_batch_size=4)
    with caplog.at_level("INFO", logger="trl_spg.tiny.sudoku"):
        trained, _ = tiny_sudoku_model(rows, spec, tmp_path)
    messages = [record.getMessage() for record in caplog.records if record.name == "trl_spg.tiny.sudoku"]
    assert messages[0].startswith("Warm-starting the tiny Sudoku policy: 2 SFT steps") and str(tmp_path) in messages[0]
    assert messages[1].startswith("Warm start done in ")
    caplog.clear()
    with caplog.at_level("INFO", logger="trl_spg.tiny.sudoku"):
        loaded, tokenizer = tiny_sudoku_model(rows, spec, tmp_path)
    assert [record.getMessage() for record in caplog.records][0].startswith("Loading the warm-started")
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))
    assert tokenizer.mask_token_id == loaded.config.mask_token_id
