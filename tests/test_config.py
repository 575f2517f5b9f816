"""SPGConfig and DecodingConfig: the default rule of the decoding settings and early, explicit rejections."""

import pytest

from trl_spg import DecodingConfig, SPGConfig


def make(**overrides):
    options = dict(output_dir="/tmp/spg-config-test", report_to="none", bf16=False, use_cpu=True)
    options.update(overrides)
    return SPGConfig(**options)


@pytest.mark.parametrize(
    "length, block, steps",
    [(256, 32, 128), (512, 32, 256), (128, 32, 64), (20, 20, 10), (48, 48, 24), (100, 100, 50), (1, 1, 1)],
)
def test_one_default_rule_for_block_and_steps(length, block, steps):
    """Block 32 when it divides the length, else the whole generation; steps = length / 2 rounded to the blocks.
    Rollouts (the config) and evaluation (DecodingConfig, any length) apply the same rule."""
    resolved = DecodingConfig(gen_length=length).resolved()
    assert (resolved.block_length, resolved.steps) == (block, steps)
    config = make(max_completion_length=length)
    assert (config.block_length, config.diffusion_steps) == (block, steps)
    assert config.rollout_config() == DecodingConfig(
        gen_length=length, block_length=block, steps=steps, temperature=0.9
    )


def test_other_lengths_keep_the_block_where_it_divides():
    rollout = DecodingConfig(gen_length=20, block_length=10, steps=20)
    assert (rollout.at_length(20).block_length, rollout.at_length(20).steps) == (10, 20)
    assert (rollout.at_length(40).block_length, rollout.at_length(40).steps) == (10, 20)
    assert (rollout.at_length(48).block_length, rollout.at_length(48).steps) == (48, 24)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"use_vllm": True}, "use_vllm"),
        ({"use_transformers_continuous_batching": True}, "continuous batching"),
        ({"mix_weight": 1.5}, "mix_weight"),
        ({"mix_weight": -0.1}, "mix_weight"),
        ({"eubo_beta": 0.0}, "eubo_beta"),
        ({"eubo_beta": -1.0}, "eubo_beta"),
        ({"masking_strategy": "all", "num_mc_masks": 2}, "num_mc_masks=1"),
        ({"masking_strategy": "blocks"}, "masking_strategy"),
        ({"negative_bound": "kl"}, "negative_bound"),
        ({"remasking": "entropy"}, "remasking"),
        ({"block_length": 48}, "must divide max_completion_length"),
        ({"diffusion_steps": 100}, "multiple of the number of blocks"),
        ({"diffusion_steps": 4}, "multiple of the number of blocks"),
        ({"min_mask_ratio": 0.9, "max_mask_ratio": 0.1}, "min_mask_ratio"),
        ({"p_mask_prompt": 1.0}, "p_mask_prompt"),
        ({"num_mc_masks": 0}, "num_mc_masks"),
        ({"block_sampling": "sorted"}, "block_sampling"),
        ({"beta": 0.04}, "KL"),
        ({"top_entropy_quantile": 0.2}, "top_entropy_quantile"),
        ({"entropy_coef": 0.1}, "entropy"),
        ({"off_policy_mask_threshold": 0.5}, "off_policy_mask_threshold"),
        ({"delta": 2.0}, "delta"),
        ({"top_p": 0.9}, "top_p"),
        ({"top_k": 5}, "top_k"),
        ({"rollout_decoding": "parallel"}, "rollout_decoding"),
        ({"rollout_decoding": "threshold", "rollout_threshold": 0.0}, "rollout_threshold"),
        ({"rollout_min_tokens_per_step": 1}, "rollout_decoding='threshold' only"),
        ({"rollout_decoding": "threshold", "rollout_min_tokens_per_step": 0}, "rollout_min_tokens_per_step"),
        ({"rollout_kv_cache": "full"}, "rollout_kv_cache"),
        ({"rollout_cache_refresh_every": 4}, "rollout_cache_refresh_every needs"),
        ({"rollout_kv_cache": "dual", "rollout_cache_refresh_every": 0}, "rollout_cache_refresh_every"),
        ({"temperature": -1.0}, "temperature=-1.0: must be >= 0"),
        ({"likelihood_canvas": "full"}, "likelihood_canvas='full': choose one of"),
    ],
)
def test_rejections_name_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        make(**overrides)


def test_objective_carries_every_setting():
    from dataclasses import asdict

    from trl_spg.objective import SPGObjective

    settings = dict(
        negative_bound="eubo",
        eubo_beta=2.0,
        mix_weight=0.25,
        masking_strategy="all",
        num_mc_masks=1,
        block_length=16,
        min_mask_ratio=0.1,
        max_mask_ratio=0.9,
        p_mask_prompt=0.05,
        block_sampling="independent",
    )
    config = make(max_completion_length=64, diffusion_steps=8, likelihood_canvas="visible", **settings)
    assert asdict(SPGObjective.from_config(config)) == {**settings, "tail_visible": True}
    assert not SPGObjective.from_config(make(likelihood_canvas="trimmed")).tail_visible
