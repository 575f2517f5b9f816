"""The d1 (diffu-GRPO) and wd1 baselines: one-step estimate, ratio, prompt masks, weights, losses, LoRA training."""

import math

import pytest
import torch
from peft import LoraConfig
from tiny_models import char_variety, make_args, tiny_bidirectional_llama

from trl_spg import DiffuGRPOConfig, DiffuGRPOTrainer, WD1Config, WD1Trainer
from trl_spg.masking import one_step_masks
from trl_spg.scoring import one_step_token_logprobs
from trl_spg.seeding import make_generator
from trl_spg.trainers.d1_trainer import D1_METHOD, MASKS_KEY
from trl_spg.trainers.model_card import build_model_card
from trl_spg.trainers.wd1_trainer import WD1_METHOD, WEIGHTS_KEY, wd1_loss, wd1_weights

MASK = 7


def direct_one_step(model, prompt_ids, prompt_mask, completion_ids, noised, mask_token_id):
    """The one-step estimate written out: mask, one model call, log-softmax, gather; and the entropies."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    input_ids = torch.where(noised, torch.full_like(input_ids, mask_token_id), input_ids)
    attention_mask = torch.cat([prompt_mask, torch.ones_like(completion_ids)], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logps = logits[:, prompt_ids.shape[1] :].float().log_softmax(-1)
    entropies = -(logps.exp() * logps).sum(-1)
    return logps.gather(-1, completion_ids[..., None])[..., 0], entropies


def layout():
    prompt_ids = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 1, 2, 3]])
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    completion_ids = torch.tensor([[4, 0, 2, 5], [1, 3, 6, 6]])
    completion_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def test_one_step_masks_mask_the_completion_and_perturb_the_prompt():
    prompt_ids, prompt_mask, _, completion_mask = layout()
    rows = 2000
    masks = one_step_masks(
        prompt_mask.repeat(rows, 1),
        completion_mask.repeat(rows, 1),
        p_mask_prompt=0.15,
        num_draws=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert masks.noised.shape == (2 * rows, 3, 9)
    assert masks.noised[..., 5:].all()  # the whole completion, post-EOS included
    assert torch.equal(masks.scored, completion_mask.bool().repeat(rows, 1)[:, None].expand(-1, 3, -1))
    real = prompt_mask.bool().repeat(rows, 1)[:, None].expand(-1, 3, -1)
    assert not masks.noised[..., :5][~real].any()  # pads never
    rate = masks.noised[..., :5][real].float().mean().item()
    assert abs(rate - 0.15) < 0.01  # 8 real tokens x 2000 x 3 draws: standard error ~0.0019
    # The inner iterations' draws are independent: they differ, and agree only as often as chance says.
    agree = (masks.noised[:, 0, :5] == masks.noised[:, 1, :5])[real[:, 0]].float().mean().item()
    assert abs(agree - (0.85**2 + 0.15**2)) < 0.02


def test_one_step_estimate_equals_a_direct_computation():
    model = tiny_bidirectional_llama(vocab_size=8, seed=3)
    prompt_ids, prompt_mask, completion_ids, completion_mask = layout()
    masks = one_step_masks(
        prompt_mask, completion_mask, p_mask_prompt=0.5, num_draws=1, generator=torch.Generator().manual_seed(1)
    )
    noised = masks.noised[:, 0]
    assert noised[:, :5].any()  # the prompt really is perturbed
    with torch.no_grad():
        logps, entropies = one_step_token_logprobs(
            model, prompt_ids, prompt_mask, completion_ids, noised, MASK, with_entropy=True
        )
        expected, expected_entropies = direct_one_step(model, prompt_ids, prompt_mask, completion_ids, noised, MASK)
        clean, _ = direct_one_step(model, prompt_ids, prompt_mask, completion_ids, noised & False, MASK)
    assert logps.shape == (2, 4)
    torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropies, expected_entropies, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logps, clean, atol=1e-3)  # the masking matters: a clean input scores differently


def fixed_inputs(num_draws=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1], [1, 1, 1]])
    completion_mask = (torch.arange(8)[None] < torch.tensor([[8], [3], [5], [1]])).long()
    masks = one_step_masks(prompt_mask, completion_mask, p_mask_prompt=0.5, num_draws=num_draws, generator=gen)
    return {
        "prompt_ids": torch.tensor([[0, 5, 6], [7, 8, 9], [0, 0, 5], [6, 6, 6]]),
        "prompt_mask": prompt_mask,
        "completion_ids": torch.randint(4, 30, (4, 8), generator=gen),
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.5, -0.5, -1.0, 0.0]),
        MASKS_KEY: masks.noised,
    }


def grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_d1_with_one_iteration_has_ratio_one_and_the_advantage_weighted_logprob_gradient(
    tmp_path, tiny_model, tiny_tokenizer, prompt_dataset
):
    """num_iterations=1 (aligned steps): TRL skips the old-policy forward, the ratio is exactly 1, the loss value is
    -sum A m / sum m and its gradient that of -sum A log pi(o_k | q') m / sum m (bnpo, beta=0)."""
    args = make_args(tmp_path, config_class=DiffuGRPOConfig, beta=0.0)
    trainer = DiffuGRPOTrainer(
        tiny_model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    model, inputs = trainer.model.train(), fixed_inputs()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    from_trainer = grads(model)
    model.zero_grad()
    advantages, mask = inputs["advantages"][:, None], inputs["completion_mask"]
    assert loss.item() == pytest.approx((-(advantages * mask).sum() / mask.sum()).item(), abs=1e-7)
    assert trainer._metrics["train"]["clip_ratio/region_mean"][-1] == 0.0
    logps = one_step_token_logprobs(
        model,
        inputs["prompt_ids"],
        inputs["prompt_mask"],
        inputs["completion_ids"],
        inputs[MASKS_KEY][:, 0],
        trainer.mask_token_id,
    )
    (-(advantages * logps * mask).sum() / mask.sum()).backward()
    direct = grads(model)
    assert any(g.abs().max() > 0 for g in direct.values())
    for name, grad in direct.items():
        torch.testing.assert_close(from_trainer[name], grad, rtol=1e-5, atol=1e-7)


def test_d1_old_and_current_log_probs_use_the_same_prompt_masks(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    """Two inner iterations over one rollout batch: the old-policy log-probs (computed at rollout time) and the
    current ones of every micro-step come from the same masked inputs. With learning_rate=0 the policy never changes,
    so they must be equal; the two iterations' masks differ, and so do their log-probs."""
    args = make_args(
        tmp_path,
        config_class=DiffuGRPOConfig,
        beta=0.0,
        num_iterations=2,
        steps_per_generation=2,
        per_device_train_batch_size=2,
        max_steps=4,
        learning_rate=0.0,
        p_mask_prompt=0.5,
    )
    trainer = DiffuGRPOTrainer(
        tiny_model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    current, batches = [], []
    hook, compute_loss = trainer._get_per_token_logps_and_entropies, trainer._compute_loss

    def spy_hook(*args, **kwargs):
        result = hook(*args, **kwargs)
        if trainer._loss_masks is not None:
            current.append((trainer._loss_masks.clone(), result[0].detach().clone()))
        return result

    def spy_loss(model, inputs):
        batches.append((trainer._inner_iteration(), {key: value for key, value in inputs.items()}))
        return compute_loss(model, inputs)

    trainer._get_per_token_logps_and_entropies = spy_hook
    trainer._compute_loss = spy_loss
    trainer.train()
    assert [iteration for iteration, _ in batches] == [0, 0, 1, 1]
    for (iteration, inputs), (masks, logps) in zip(batches, current, strict=True):
        assert inputs["old_per_token_logps"].shape[1] == 2  # one set of old log-probs per inner iteration
        assert torch.equal(masks[:, 0], inputs[MASKS_KEY][:, iteration])
        mask = inputs["completion_mask"].bool()
        torch.testing.assert_close(logps[mask], inputs["old_per_token_logps"][:, iteration][mask], rtol=0, atol=1e-5)
    _, first = batches[0]
    assert not torch.equal(first[MASKS_KEY][:, 0], first[MASKS_KEY][:, 1])  # fresh masks per iteration
    old = first["old_per_token_logps"]
    assert (old[:, 0] - old[:, 1]).abs().max() > 1e-3  # a mask mix-up would show


def test_wd1_weights_sum_to_one_per_group_and_match_a_hand_computation():
    advantages = torch.tensor([1.0, -1.0, 0.0, 2.0, 2.0, 2.0])
    positive, negative = wd1_weights(advantages, group_size=3, psi=0.5)
    torch.testing.assert_close(positive.reshape(2, 3).sum(-1), torch.ones(2))
    torch.testing.assert_close(negative.reshape(2, 3).sum(-1), torch.ones(2))
    z = math.exp(0.5) + math.exp(-0.5) + 1.0
    expected = torch.tensor([math.exp(0.5) / z, math.exp(-0.5) / z, 1 / z, 1 / 3, 1 / 3, 1 / 3])
    torch.testing.assert_close(positive, expected)
    torch.testing.assert_close(negative, expected[[1, 0, 2, 3, 4, 5]])
    # A group with equal rewards gets no net weight: it does not move the policy.
    assert torch.equal((positive - negative)[3:], torch.zeros(3))
    with pytest.raises(ValueError, match="groups of 4"):
        wd1_weights(advantages, group_size=4)


def test_wd1_loss_equals_a_hand_computation(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    """Two groups of 2: loss = -sum_i (w+_i - w-_i) sum_k log pi(o_ik | q') * G / B, with the prompt masks of the
    trainer's (seed, micro-step, process) stream."""
    args = make_args(tmp_path, config_class=WD1Config, num_generations=2, psi=2.0)
    trainer = WD1Trainer(
        tiny_model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    model, inputs = trainer.model.train(), fixed_inputs()
    del inputs[MASKS_KEY]
    advantages = [1.5, -0.5, -1.0, 0.0]
    net = []
    for a, b in ((1.5, -0.5), (-1.0, 0.0)):
        plus = [math.exp(2 * a), math.exp(2 * b)]
        minus = [math.exp(-2 * a), math.exp(-2 * b)]
        net += [plus[i] / sum(plus) - minus[i] / sum(minus) for i in range(2)]
    inputs[WEIGHTS_KEY] = torch.tensor(net)
    inputs["advantages"] = torch.tensor(advantages)
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(model, inputs)
    masks = one_step_masks(
        inputs["prompt_mask"],
        inputs["completion_mask"],
        p_mask_prompt=0.15,
        generator=make_generator("cpu", 0, "masks", 0, 0),
    )
    with torch.no_grad():
        logps, _ = direct_one_step(
            model,
            inputs["prompt_ids"],
            inputs["prompt_mask"],
            inputs["completion_ids"],
            masks.noised[:, 0],
            trainer.mask_token_id,
        )
    sequence = (logps * inputs["completion_mask"]).sum(-1).tolist()
    expected = -sum(w * s for w, s in zip(net, sequence)) * 2 / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert wd1_loss(torch.tensor(sequence), torch.tensor(net), 2).item() == pytest.approx(expected, rel=1e-6)
    assert trainer._metrics["train"]["wd1/sequence_logp"][-1] == pytest.approx(sum(sequence) / 4, rel=1e-5)


def snapshot(model):
    return {name: param.detach().clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize(
    "trainer_class, overrides",
    [
        (DiffuGRPOTrainer, {"num_iterations": 2}),  # beta 0.04: old-policy and reference forwards at rollout time
        (WD1Trainer, {}),
    ],
)
def test_every_trainer_trains_lora_through_trl_and_moves_only_adapters(
    tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, trainer_class, overrides
):
    """(SPG's own LoRA test is `test_trainer.py::test_lora_changes_only_adapter_weights`.)"""
    args = make_args(tmp_path, config_class=trainer_class.config_class, **overrides)
    trainer = trainer_class(
        tiny_model,
        char_variety,
        args=args,
        train_dataset=prompt_dataset,
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert trainer.state.global_step == 2
    changed = {name for name, param in trainer.model.named_parameters() if not torch.equal(param, before[name])}
    assert changed and all("lora_A" in name or "lora_B" in name for name in changed)
    assert any("lora_B" in name for name in changed)
    logged = trainer.state.log_history[0]
    if trainer_class is DiffuGRPOTrainer:
        # The LoRA adapter starts as the identity, so at the first step the reference model (adapter disabled) is the
        # policy; on the same masked inputs the KL is exactly 0, on different prompt masks it would not be.
        assert logged["kl"] == 0.0 and trainer.state.log_history[1]["kl"] > 0
        assert "old_per_token_logps" in trainer._buffered_inputs[0]
    if trainer_class is WD1Trainer:
        # Each group's net weights sum to 0, so the rollout batch's do too.
        weights = torch.cat([batch[WEIGHTS_KEY] for batch in trainer._buffered_inputs])
        assert weights.abs().max() > 0 and abs(weights.sum().item()) < 1e-6
        assert "old_per_token_logps" not in trainer._buffered_inputs[0]
        assert "ref_per_token_logps" not in trainer._buffered_inputs[0]


def test_baseline_configs_defaults_and_rejections(tmp_path):
    d1 = make_args(tmp_path, config_class=DiffuGRPOConfig)
    assert (d1.beta, d1.epsilon, d1.loss_type, d1.p_mask_prompt, d1.scale_rewards) == (0.04, 0.5, "bnpo", 0.15, "none")
    wd1 = make_args(tmp_path, config_class=WD1Config)
    assert (wd1.beta, wd1.psi, wd1.p_mask_prompt) == (0.0, 1.0, 0.15)
    for config in (d1, wd1):  # the fast rollout modes are the base config's, off by default
        assert (config.rollout_decoding, config.rollout_kv_cache) == ("fixed", "none")
    for config_class, overrides, message in [
        (WD1Config, {"beta": 0.04}, "wd1 has no reference policy"),
        (WD1Config, {"psi": 0.0}, "psi"),
        (WD1Config, {"top_entropy_quantile": 0.5}, "top_entropy_quantile"),
        (DiffuGRPOConfig, {"p_mask_prompt": 1.0}, "p_mask_prompt"),
        (DiffuGRPOConfig, {"use_vllm": True}, "use_vllm"),
        (DiffuGRPOConfig, {"block_length": 3}, "must divide"),
        (DiffuGRPOConfig, {"rollout_decoding": "parallel"}, "rollout_decoding"),
        (WD1Config, {"rollout_kv_cache": "full"}, "rollout_kv_cache"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_args(tmp_path, config_class=config_class, **overrides)
    with pytest.warns(UserWarning, match="WD1Config ignores epsilon=0.3"):
        make_args(tmp_path, config_class=WD1Config, epsilon=0.3)


def test_trainers_reject_each_others_configs(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    with pytest.raises(TypeError, match="DiffuGRPOConfig"):
        DiffuGRPOTrainer(tiny_model, char_variety, args=make_args(tmp_path), train_dataset=prompt_dataset)
    with pytest.raises(TypeError, match="WD1Config"):
        WD1Trainer(
            tiny_model,
            char_variety,
            args=make_args(tmp_path, config_class=DiffuGRPOConfig),
            train_dataset=prompt_dataset,
        )


@pytest.mark.parametrize(
    "method, paper, tags", [(D1_METHOD, "2504.12216", ["d1", "diffu-grpo"]), (WD1_METHOD, "2507.08838", ["wd1"])]
)
def test_baseline_model_cards_name_their_method(method, paper, tags):
    card = build_model_card(
        model_name="tiny",
        base_model=None,
        hub_model_id=None,
        is_adapter=False,
        settings={"p_mask_prompt": 0.15},
        decoding={"gen_length": 8, "block_length": 4, "steps": 4, "temperature": 0.9, "remasking": "low_confidence"},
        versions={},
        method=method,
    )
    text = str(card)
    assert card.data.tags == ["trl", *tags, "diffusion-lm"]
    assert paper in text and f"trl_spg.{method.config_class}" in text and method.name in text
    assert "2510.09541" not in text and "Sandwiched" not in text


def test_d1_loss_is_d1s_clipped_ratio_plus_the_plain_k3_kl(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    """Inner iteration 1 of 2, beta 0.04, epsilon 0.5, bnpo: the loss d1's formulas give, with the KL term not
    multiplied by the importance ratio (TRL's `use_bias_correction_kl`, off by default here as in d1's code)."""
    args = make_args(tmp_path, config_class=DiffuGRPOConfig, num_iterations=2)
    assert (args.beta, args.epsilon, args.use_bias_correction_kl, args.loss_type) == (0.04, 0.5, False, "bnpo")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # the reference: no adapter
    trainer = DiffuGRPOTrainer(
        tiny_model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer,
        peft_config=lora,
    )  # fmt: skip
    model, inputs = trainer.model.train(), fixed_inputs(num_draws=2)
    gen = torch.Generator().manual_seed(5)
    shape = (4, 2, 8)
    inputs["old_per_token_logps"] = -torch.rand(shape, generator=gen) - 1.0
    inputs["ref_per_token_logps"] = -torch.rand(shape, generator=gen) - 1.0
    trainer._step, trainer.current_gradient_accumulation_steps = 1, 1  # the second inner iteration
    loss = trainer._compute_loss(model, dict(inputs)).item()

    with torch.no_grad():
        logps = direct_one_step(
            model,
            inputs["prompt_ids"],
            inputs["prompt_mask"],
            inputs["completion_ids"],
            inputs[MASKS_KEY][:, 1],
            trainer.mask_token_id,
        )[0]
    old, ref = inputs["old_per_token_logps"][:, 1], inputs["ref_per_token_logps"][:, 1]
    advantages, mask = inputs["advantages"][:, None], inputs["completion_mask"]
    ratio = torch.exp(logps - old)
    surrogate = torch.min(ratio * advantages, ratio.clamp(0.5, 1.5) * advantages)
    kl = torch.exp(ref - logps) - (ref - logps) - 1
    expected = ((-surrogate + 0.04 * kl) * mask).sum() / mask.sum()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    with_ratio = ((-surrogate + 0.04 * kl * ratio) * mask).sum() / mask.sum()
    assert abs(with_ratio.item() - expected.item()) > 1e-4  # the two conventions differ on these inputs
