"""Bad input gets a clear, early error (or one warning) naming the fix; a killed run resumes to the same weights."""

import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from peft import LoraConfig
from safetensors.torch import load_file
from tiny_models import BareDiffusionLM, char_variety, make_args, tiny_bidirectional_llama
from transformers import LlamaConfig, LlamaForCausalLM

from trl_spg import SPGTrainer
from trl_spg.tiny import build_char_tokenizer, build_tiny_diffusion_lm
from trl_spg.trainers.model_card import UNKNOWN_BASE_MODEL


def make_trainer(tmp_path, model, tokenizer, dataset, **overrides):
    return SPGTrainer(
        model, char_variety, args=make_args(tmp_path, **overrides), train_dataset=dataset, processing_class=tokenizer
    )


def snapshot(model):
    return {name: param.detach().clone() for name, param in model.named_parameters()}


# ------------------------------------------------------------------------------------------- the model


def silent_config(tokenizer) -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    config.mask_token_id = tokenizer.mask_token_id
    assert not hasattr(config, "is_causal")
    return config


def test_causal_models_are_rejected_from_config_or_probe(tmp_path, tiny_tokenizer, prompt_dataset):
    autoregressive = LlamaForCausalLM(silent_config(tiny_tokenizer))  # transformers' default: causal
    with pytest.raises(ValueError, match=r"attends causally.*is_causal=False"):
        make_trainer(tmp_path, autoregressive, tiny_tokenizer, prompt_dataset)
    with pytest.raises(ValueError, match="attends causally"):  # config silent: the probe decides
        make_trainer(
            tmp_path,
            BareDiffusionLM(silent_config(tiny_tokenizer), backbone_is_causal=True),
            tiny_tokenizer,
            prompt_dataset,
        )
    trainer = make_trainer(
        tmp_path,
        BareDiffusionLM(silent_config(tiny_tokenizer), backbone_is_causal=False),
        tiny_tokenizer,
        prompt_dataset,
    )
    assert trainer.mask_token_id == tiny_tokenizer.mask_token_id


@pytest.mark.parametrize(
    "mask_token_id, message",
    [(10**6, r"mask_token_id=1000000 is outside the model's vocabulary \(ids 0 to 57\)"), (-1, "outside")],
)
def test_mask_token_outside_the_vocabulary(
    tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, mask_token_id, message
):
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, mask_token_id=mask_token_id)


@pytest.mark.parametrize("role", ["pad", "eos"])
def test_mask_token_equal_to_pad_or_eos(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, role):
    token_id = getattr(tiny_tokenizer, f"{role}_token_id")
    with pytest.raises(ValueError, match=f"mask_token_id={token_id} is also"):
        make_trainer(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, mask_token_id=token_id)


# ------------------------------------------------------------------------------------------- the config


def test_any_completion_length_works_with_default_blocks_and_steps(
    tmp_path, tiny_model, tiny_tokenizer, prompt_dataset
):
    """A GRPO-style length that 32 does not divide: one block, length / 2 steps; explicit values still checked."""
    trainer = make_trainer(
        tmp_path,
        tiny_model,
        tiny_tokenizer,
        prompt_dataset,
        max_completion_length=10,
        block_length=None,
        diffusion_steps=None,
        max_steps=1,
    )
    assert (trainer.args.block_length, trainer.args.diffusion_steps) == (10, 5)
    trainer.train()
    assert trainer.state.global_step == 1
    config = make_args(tmp_path, max_completion_length=96, block_length=None, diffusion_steps=None)
    assert (config.block_length, config.diffusion_steps) == (32, 48)
    with pytest.raises(ValueError, match="must divide"):
        make_args(tmp_path, max_completion_length=10, block_length=4, diffusion_steps=None)


def test_generation_kwargs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="generation_kwargs"):
        make_args(tmp_path, generation_kwargs={"top_k": 5, "do_sample": True})


def test_ignored_grpo_options_give_one_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_args(tmp_path, loss_type="grpo", epsilon=0.3, epsilon_high=0.28, importance_sampling_level="sequence")
    ours = [w for w in caught if "SPGConfig ignores" in str(w.message)]
    assert len(ours) == 1
    text = str(ours[0].message)
    assert all(name in text for name in ("loss_type", "epsilon=0.3", "epsilon_high", "importance_sampling_level"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_args(tmp_path)
    assert not [w for w in caught if "SPGConfig ignores" in str(w.message)]


# ------------------------------------------------------------------------------------------- the data


def test_prompts_longer_than_the_model_allows(tmp_path, tiny_tokenizer):
    model = tiny_bidirectional_llama(vocab_size=len(tiny_tokenizer))
    model.config.max_position_embeddings = 16
    dataset = Dataset.from_dict({"prompt": ["123456789="] * 4})
    trainer = make_trainer(tmp_path, model, tiny_tokenizer, dataset, mask_token_id=tiny_tokenizer.mask_token_id)
    with pytest.raises(ValueError, match=r"prompt of 10 tokens plus max_completion_length=8 exceeds .*=16"):
        trainer.train()


def test_card_of_a_model_built_in_code(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    trainer = SPGTrainer(
        tiny_model,
        char_variety,
        args=make_args(tmp_path),
        train_dataset=prompt_dataset,
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj"]),
    )
    trainer.create_model_card(tags="my-tag")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "base_model" not in card.split("---")[1]
    assert "not recorded" in card and f"load_model_and_tokenizer({UNKNOWN_BASE_MODEL!r})" in card
    assert "load_model_and_tokenizer('')" not in card
    assert ModelCard(card).data.tags == ["trl", "spg", "diffusion-lm", "lora", "peft", "my-tag"]  # a string tag


def test_no_fake_zero_bounds_when_every_completion_is_masked(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    trainer = make_trainer(
        tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, mask_truncated_completions=True, max_steps=1
    )
    trainer.eos_token_ids = [10**6]  # nothing ends: every completion is truncated, so masked out
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["completions/clipped_ratio"] == 1.0
    assert not any(key.startswith("spg/") for key in logged)


# ------------------------------------------------------------------------------------------- non-finite values


def test_infinite_reward_stops_before_the_optimizer_step(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    def sometimes_infinite(completions, **kwargs):
        return [math.inf if i == 1 else 1.0 for i in range(len(completions))]

    trainer = SPGTrainer(
        tiny_model,
        sometimes_infinite,
        args=make_args(tmp_path),
        train_dataset=prompt_dataset,
        processing_class=tiny_tokenizer,
    )
    before = snapshot(trainer.model)
    with pytest.raises(FloatingPointError, match=r"Non-finite advantages .* at optimizer step 0"):
        trainer.train()
    assert all(torch.equal(param, before[name]) for name, param in trainer.model.named_parameters())


def test_nan_logits_stop_before_the_optimizer_step(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    trainer = make_trainer(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset)

    def nan_when_scoring(module, inputs, output):  # rollouts run without gradients and stay finite
        return output * math.nan if torch.is_grad_enabled() else output

    trainer.model.lm_head.register_forward_hook(nan_when_scoring)
    before = snapshot(trainer.model)
    with pytest.raises(FloatingPointError, match="Non-finite likelihood bounds"):
        trainer.train()
    assert all(torch.equal(param, before[name]) for name, param in trainer.model.named_parameters())


# ------------------------------------------------------------------------------------------- crash safety


def run_job(output_dir: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same numerics in every job
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "train_job.py"), str(output_dir), *flags],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """SIGKILL after step 3 (checkpoint at step 2), resume: same final weights as a run never killed; at most one
    save interval (2 steps) is repeated. The reward returns None and NaN for some completions throughout."""
    killed = run_job(tmp_path / "killed", "--hang_after_step", "3")
    uninterrupted = run_job(tmp_path / "uninterrupted")
    deadline = time.monotonic() + 120
    while not (tmp_path / "killed" / "reached").exists():
        assert killed.poll() is None, killed.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the job never reached step 3"
        time.sleep(0.2)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert (tmp_path / "killed" / "checkpoint-2").is_dir() and not (tmp_path / "killed" / "final").exists()
    resumed = run_job(tmp_path / "killed", "--resume")
    for job in (resumed, uninterrupted):
        assert job.wait(timeout=180) == 0, job.stderr.read().decode()[-2000:]
    resumed_at = int((tmp_path / "killed" / "resumed_at").read_text())
    assert resumed_at == 2  # the last checkpoint before the kill
    weights = [
        load_file(path / "final" / "model.safetensors") for path in (tmp_path / "killed", tmp_path / "uninterrupted")
    ]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    initial = build_tiny_diffusion_lm(build_char_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, seed=0)
    assert any(not torch.equal(param, weights[0][name]) for name, param in initial.state_dict().items())
