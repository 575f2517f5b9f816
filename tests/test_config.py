"""SPGConfig: paper defaults and early, explicit rejections."""

import pytest

from trl_spg import SPGConfig


def make(**overrides):
    options = dict(output_dir="/tmp/spg-config-test", report_to="none", bf16=False, use_cpu=True)
    options.update(overrides)
    return SPGConfig(**options)


def test_paper_defaults():
    config = make()
    assert config.scale_rewards == "none" and config.beta == 0.0 and config.temperature == 0.9
    assert (config.negative_bound, config.eubo_beta, config.mix_weight) == ("mix", 1.5, 0.5)
    assert (config.masking_strategy, config.num_mc_masks, config.p_mask_prompt) == ("block_random", 2, 0.15)
    assert config.block_sampling == "stratified"
    assert (config.max_completion_length, config.block_length, config.diffusion_steps) == (256, 32, 128)
    # Rollouts use the exact sampler unless a fast mode is asked for.
    assert (config.rollout_decoding, config.rollout_kv_cache, config.rollout_cache_refresh_every) == (
        "fixed",
        "none",
        None,
    )
    assert (config.rollout_threshold, config.rollout_min_tokens_per_step) == (0.9, None)


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
    config = make(max_completion_length=64, diffusion_steps=8, **settings)
    assert asdict(SPGObjective.from_config(config)) == settings
