"""SPGTrainer on a tiny bidirectional Llama: training, masks, rewards, PEFT, saving."""

import asyncio
import json

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import BareDiffusionLM, char_variety, make_args, tiny_bidirectional_llama
from transformers import TrainerCallback
from trl.rewards import get_soft_overlong_punishment, think_format_reward

import trl_spg.objective as objective_module
from trl_spg import SPGConfig, SPGTrainer, WD1Config, WD1Trainer
from trl_spg.masking import sample_masks
from trl_spg.objective import SPGObjective
from trl_spg.seeding import make_generator


def snapshot(model):
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def moved(model, before):
    return {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}


class MaskRecorder:
    """Wraps `sample_masks` where the SPG objective calls it and keeps every draw."""

    def __init__(self, monkeypatch):
        self.draws = []
        monkeypatch.setattr(objective_module, "sample_masks", self)

    def __call__(self, *args, **kwargs):
        masks = sample_masks(*args, **kwargs)
        self.draws.append(masks.noised.clone())
        return masks


def test_full_finetuning_changes_weights_and_logs(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    trainer = SPGTrainer(
        tiny_model,
        char_variety,
        args=make_args(tmp_path),
        train_dataset=prompt_dataset,
        processing_class=tiny_tokenizer,
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert moved(trainer.model, before) == set(before)
    logged = trainer.state.log_history[0]
    for key in ("spg/elbo", "spg/eubo", "spg/negative_bound", "spg/bound_gap", "spg/negative_fraction", "reward"):
        assert key in logged
    assert logged["spg/bound_gap"] == pytest.approx(logged["spg/negative_bound"] - logged["spg/elbo"], abs=1e-5)


def test_lora_changes_only_adapter_weights(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = SPGTrainer(
        tiny_model,
        char_variety,
        args=make_args(tmp_path, max_steps=3),
        train_dataset=prompt_dataset,
        processing_class=tiny_tokenizer,
        peft_config=peft_config,
    )
    before = snapshot(trainer.model)
    trainer.train()
    changed = moved(trainer.model, before)
    assert changed and all("lora_B" in name or "lora_A" in name for name in changed)
    assert any("lora_B" in name for name in changed)


def test_existing_peft_model_saves_and_reloads(tmp_path, tiny_tokenizer, prompt_dataset):
    from trl_spg.tiny import build_tiny_diffusion_lm

    base = build_tiny_diffusion_lm(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer = SPGTrainer(
        model, char_variety, args=make_args(tmp_path), train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    fresh = build_tiny_diffusion_lm(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    ids = torch.tensor([[5, 6, 7, 2, 2, 2]])
    trained = trainer.model.eval()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=0, atol=0)
    # The adapter matters: the base alone gives different logits.
    with reloaded.disable_adapter():
        assert not torch.allclose(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits)


def fixed_inputs():
    gen = torch.Generator().manual_seed(0)
    return {
        "prompt_ids": torch.tensor([[0, 5, 6], [7, 8, 9], [0, 0, 5], [6, 6, 6]]),
        "prompt_mask": torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1], [1, 1, 1]]),
        "completion_ids": torch.randint(4, 30, (4, 8), generator=gen),
        "completion_mask": (torch.arange(8)[None] < torch.tensor([[8], [3], [5], [1]])).long(),
        "advantages": torch.tensor([1.5, -0.5, -1.0, 0.0]),
    }


def test_trainer_loss_is_the_objective_of_its_config(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    """The trainer's loss is `SPGObjective` of its config, with masks from the (seed, micro-step, process) stream."""
    args = make_args(tmp_path, p_mask_prompt=0.3, negative_bound="eubo", eubo_beta=2.0)
    trainer = SPGTrainer(
        tiny_model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    trainer.model.train()
    loss = trainer._compute_loss(trainer.model, fixed_inputs())
    expected = SPGObjective.from_config(args).loss(
        trainer.model,
        fixed_inputs(),
        mask_token_id=tiny_tokenizer.mask_token_id,
        generator=make_generator("cpu", 0, "masks", 0, 0),
    )
    assert loss.item() != 0.0
    torch.testing.assert_close(loss, expected.loss)


@pytest.mark.parametrize("negative_bound", ["mix", "eubo", "elbo"])
def test_a_trained_step_raises_positive_elbos_and_lowers_negative_bounds(
    tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, negative_bound
):
    """Not just the sign of the loss: after one SGD step on SPG's loss, every positive sample's ELBO is higher and
    every negative sample's bound lower, measured with the same masks."""
    args = make_args(tmp_path, negative_bound=negative_bound, num_mc_masks=4)
    trainer = SPGTrainer(
        tiny_model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    model, inputs = trainer.model, fixed_inputs()
    inputs["advantages"] = torch.tensor([1.0, -1.0, 1.0, -1.0])

    def bounds():
        output = trainer.objective.loss(
            model, inputs, mask_token_id=trainer.mask_token_id, generator=torch.Generator().manual_seed(1)
        )
        return output, output.bounds["elbo"].detach(), output.bounds["negative"].detach()

    output, elbo, negative = bounds()
    output.loss.backward()
    with torch.no_grad():
        for param in model.parameters():
            param -= 1e-3 * param.grad
    _, elbo_after, negative_after = bounds()
    positive = inputs["advantages"] > 0
    assert (elbo_after[positive] > elbo[positive]).all()
    assert (negative_after[~positive] < negative[~positive]).all()


@pytest.mark.parametrize("advantage_sign", [1.0, -1.0])
def test_positive_only_and_negative_only_batches(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, advantage_sign):
    trainer = SPGTrainer(
        tiny_model,
        char_variety,
        args=make_args(tmp_path),
        train_dataset=prompt_dataset,
        processing_class=tiny_tokenizer,
    )
    inputs = {
        "prompt_ids": torch.tensor([[5, 6], [7, 8]]),
        "prompt_mask": torch.ones(2, 2, dtype=torch.long),
        "completion_ids": torch.tensor([[9, 10, 11, 1, 1, 1, 1, 1], [12, 13, 1, 1, 1, 1, 1, 1]]),
        "completion_mask": torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]),
        "advantages": advantage_sign * torch.tensor([0.5, 2.0]),
    }
    trainer.model.train()
    loss = trainer._compute_loss(trainer.model, inputs)
    metrics = trainer._metrics["train"]
    elbo, negative = metrics["spg/elbo"][-1], metrics["spg/negative_bound"][-1]
    assert metrics["spg/negative_fraction"][-1] == (1.0 if advantage_sign < 0 else 0.0)
    assert elbo < 0 and negative != elbo
    # -A * bound with bound < 0: positive for positive advantages, negative for negative ones.
    assert loss.item() * advantage_sign > 0


def test_num_iterations_uses_fresh_reproducible_masks(
    tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, monkeypatch
):
    recorder = MaskRecorder(monkeypatch)
    args = make_args(tmp_path, num_iterations=2, steps_per_generation=2, per_device_train_batch_size=2, max_steps=4)
    trainer = SPGTrainer(
        tiny_model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    generations = []
    original = trainer._generate_single_turn
    monkeypatch.setattr(trainer, "_generate_single_turn", lambda *a, **k: generations.append(1) or original(*a, **k))
    trainer.train()
    assert len(generations) == 1  # 4 micro-steps = 2 slices x 2 iterations over one rollout batch
    assert len(recorder.draws) == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(recorder.draws[i], recorder.draws[j])
    first_run = [d.clone() for d in recorder.draws]
    recorder.draws.clear()
    from trl_spg.tiny import build_tiny_diffusion_lm

    model = build_tiny_diffusion_lm(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    args = make_args(tmp_path, num_iterations=2, steps_per_generation=2, per_device_train_batch_size=2, max_steps=4)
    SPGTrainer(model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer).train()
    assert all(torch.equal(a, b) for a, b in zip(first_run, recorder.draws))


def test_gradient_accumulation_masks_differ_per_micro_step(
    tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, monkeypatch
):
    recorder = MaskRecorder(monkeypatch)
    args = make_args(tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=2, max_steps=2)
    trainer = SPGTrainer(
        tiny_model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    trainer.train()
    assert len(recorder.draws) == 4
    assert len({tuple(d.flatten().tolist()) for d in recorder.draws}) == 4


def test_equal_rewards_give_zero_gradient(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    trainer = SPGTrainer(
        tiny_model,
        lambda completions, **kw: [1.0] * len(completions),
        args=make_args(tmp_path, max_steps=1),
        train_dataset=prompt_dataset,
        processing_class=tiny_tokenizer,
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert trainer.state.log_history[0]["grad_norm"] == 0.0
    assert trainer.state.log_history[0]["loss"] == 0.0
    assert moved(trainer.model, before) == set()


def test_trl_reward_functions_conversational_async_and_weights(tmp_path, tiny_model, tiny_tokenizer):
    dataset = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": "12="}], [{"role": "user", "content": "3="}]] * 2}
    )
    seen = {}

    async def async_length(completions, completion_ids, **kwargs):
        await asyncio.sleep(0)
        seen["kwargs"] = set(kwargs)
        seen["completion"] = completions[0]
        return [float(len(ids)) for ids in completion_ids]

    def sometimes_none(completions, **kwargs):
        return [None if i % 2 else 0.5 for i in range(len(completions))]

    args = make_args(tmp_path, reward_weights=[1.0, 0.5, 2.0, 1.0], per_device_train_batch_size=4, num_generations=2)
    trainer = SPGTrainer(
        tiny_model,
        [think_format_reward, get_soft_overlong_punishment(8, 4), async_length, sometimes_none],
        args=args,
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )
    trainer.train()
    assert seen["completion"][0]["role"] == "assistant"
    assert "trainer_state" in seen["kwargs"]
    logged = trainer.state.log_history[0]
    for name in ("think_format_reward", "soft_overlong_punishment_reward", "async_length", "sometimes_none"):
        assert f"rewards/{name}/mean" in logged


def test_log_completions(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    args = make_args(tmp_path, log_completions=True, max_steps=1)
    trainer = SPGTrainer(
        tiny_model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    trainer.train()
    logs = trainer._logs
    # One rollout batch: every completion logged with its prompt and its reward, which the reward function gives again.
    assert len(logs["completion"]) == len(logs["prompt"]) == args.per_device_train_batch_size
    assert set(logs["prompt"]) <= set(prompt_dataset["prompt"])
    assert all(isinstance(text, str) and tiny_tokenizer.mask_token not in text for text in logs["completion"])
    assert list(logs["rewards"]["char_variety"]) == char_variety(list(logs["completion"]))


def test_model_from_path_loads_tokenizer(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    path = tmp_path / "tiny"
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    args = make_args(tmp_path, model_init_kwargs={"dtype": "float32"})
    trainer = SPGTrainer(str(path), char_variety, args=args, train_dataset=prompt_dataset)
    assert trainer.mask_token_id == tiny_tokenizer.mask_token_id
    assert trainer.processing_class.padding_side == "left"
    assert trainer.processing_class.get_vocab() == tiny_tokenizer.get_vocab()
    saved = {name: param.detach().clone() for name, param in tiny_model.named_parameters()}
    loaded = dict(trainer.model.named_parameters())
    assert all(torch.equal(loaded[name], value) for name, value in saved.items())  # the saved weights, loaded
    trainer.train()
    assert any(not torch.equal(loaded[name], value) for name, value in saved.items())  # and trained


def test_non_generation_mixin_model(tmp_path, tiny_tokenizer, prompt_dataset):
    config = tiny_bidirectional_llama(vocab_size=len(tiny_tokenizer)).config
    config.mask_token_id = tiny_tokenizer.mask_token_id
    model = BareDiffusionLM(config)
    with pytest.raises(ValueError, match="gradient_checkpointing=False"):
        SPGTrainer(
            model,
            char_variety,
            args=make_args(tmp_path, gradient_checkpointing=True),
            train_dataset=prompt_dataset,
            processing_class=tiny_tokenizer,
        )
    trainer = SPGTrainer(
        model, char_variety, args=make_args(tmp_path), train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert moved(trainer.model, before)


def test_missing_mask_token_is_a_clear_error(tmp_path, tiny_tokenizer, prompt_dataset):
    config = tiny_bidirectional_llama(vocab_size=len(tiny_tokenizer)).config
    config.mask_token_id = None
    model = BareDiffusionLM(config)
    tiny_tokenizer.mask_token = None
    with pytest.raises(ValueError, match="mask_token_id"):
        SPGTrainer(
            model,
            char_variety,
            args=make_args(tmp_path),
            train_dataset=prompt_dataset,
            processing_class=tiny_tokenizer,
        )
    # An explicit id in the config fixes it.
    trainer = SPGTrainer(
        model,
        char_variety,
        args=make_args(tmp_path, mask_token_id=2),
        train_dataset=prompt_dataset,
        processing_class=tiny_tokenizer,
    )
    assert trainer.mask_token_id == 2


def test_rejects_non_spg_config(tmp_path, tiny_model, prompt_dataset, tiny_tokenizer):
    from trl import GRPOConfig

    with pytest.raises(TypeError, match="SPGConfig"):
        SPGTrainer(
            tiny_model,
            char_variety,
            args=GRPOConfig(output_dir=str(tmp_path), bf16=False),
            train_dataset=prompt_dataset,
            processing_class=tiny_tokenizer,
        )


def test_push_to_hub_uploads_adapter_and_card(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, monkeypatch):
    """Everything up to the network call: the folder handed to the upload holds the adapter and our card."""
    import transformers.trainer

    uploads = []

    class FakeApi:
        def upload_folder(self, **kwargs):
            folder = tmp_path / "out"
            uploads.append({"kwargs": kwargs, "files": {p.name for p in folder.iterdir()}})
            uploads[-1]["card"] = (folder / "README.md").read_text()
            return "uploaded"

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    args = make_args(tmp_path, max_steps=1, hub_model_id="someone/tiny-spg")
    trainer = SPGTrainer(
        tiny_model,
        char_variety,
        args=args,
        train_dataset=prompt_dataset,
        processing_class=tiny_tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.hub_model_id = "someone/tiny-spg"  # the repo would exist after init_hf_repo
    assert trainer.push_to_hub() == "uploaded"
    (upload,) = uploads
    assert upload["kwargs"]["repo_id"] == "someone/tiny-spg"
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "tokenizer.json"} <= upload["files"]
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == 4
    # The card loads the adapter and decodes with the rollouts' settings, never with `generate`.
    card = upload["card"]
    assert "PeftModel.from_pretrained" in card and "someone/tiny-spg" in card and "2510.09541" in card
    assert "diffusion_generate" in card and "block_length=4" in card.replace(" ", "")
    code = "".join(card.split("```")[1::2])
    assert "pipeline(" not in code and ".generate(" not in code


class GradientRecorder(TrainerCallback):
    """Keeps the gradients of every optimizer step (after accumulation and clipping)."""

    def __init__(self):
        self.steps = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})


def test_gradient_accumulation_two_equals_one_on_the_same_batch(tmp_path, tiny_tokenizer, prompt_dataset):
    """The same 4 rollouts as one micro-batch or as 2 accumulated micro-batches of 2 give the same gradient.

    The loss is normalised by the summed completion lengths of each micro-batch, so the two agree when the
    micro-batches hold equally many completion tokens: here every completion runs to full length (no EOS id can
    occur) and the masks are deterministic (the whole completion masked, no prompt masking).
    """
    from trl_spg.tiny import build_tiny_diffusion_lm

    gradients = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        args = make_args(
            tmp_path / f"ga{accumulation}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            masking_strategy="all",
            num_mc_masks=1,
            p_mask_prompt=0.0,
            max_grad_norm=1e9,
        )
        model = build_tiny_diffusion_lm(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
        recorder = GradientRecorder()
        trainer = SPGTrainer(
            model,
            char_variety,
            args=args,
            train_dataset=prompt_dataset,
            processing_class=tiny_tokenizer,
            callbacks=[recorder],
        )
        trainer.eos_token_ids = [10**6]  # no completion ends early
        trainer.train()
        (step,) = recorder.steps
        gradients.append(step)
    one, two = gradients
    assert any(grad.abs().max() > 0 for grad in one.values())
    for name, grad in one.items():
        torch.testing.assert_close(two[name], grad, rtol=1e-5, atol=1e-7)


def test_evaluation_on_start_with_an_eval_dataset(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    args = make_args(
        tmp_path, eval_strategy="steps", eval_steps=2, eval_on_start=True, per_device_eval_batch_size=4, max_steps=2
    )
    trainer = SPGTrainer(
        tiny_model,
        char_variety,
        args=args,
        train_dataset=prompt_dataset,
        eval_dataset=prompt_dataset.select(range(2)),
        processing_class=tiny_tokenizer,
    )
    trainer.train()
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [0, 2]
    for entry in evaluations:
        assert entry["eval_spg/elbo"] < 0 and entry["eval_reward"] > 0


def test_resume_reproduces_masks_and_parameters(tmp_path, tiny_tokenizer, prompt_dataset, monkeypatch):
    """A run resumed from its step-2 checkpoint draws the uninterrupted run's masks for steps 3-4 and ends with its
    parameters."""
    from trl_spg.tiny import build_tiny_diffusion_lm

    recorder = MaskRecorder(monkeypatch)
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)

    def trainer():
        model = build_tiny_diffusion_lm(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
        return SPGTrainer(
            model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
        )

    full = trainer()
    full.train()
    uninterrupted = [draw.clone() for draw in recorder.draws]
    recorder.draws.clear()
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert len(uninterrupted) == 4 and len(recorder.draws) == 2
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted[2:], recorder.draws))
    for (name, param), other in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(param, other), name


@pytest.mark.parametrize("algorithm", ["spg", pytest.param("wd1", marks=pytest.mark.slow)])
def test_resume_inside_a_rollout_batch_trains_on_the_same_rollouts(
    tmp_path, tiny_tokenizer, prompt_dataset, algorithm
):
    """With 2 inner iterations per rollout batch, the step-1 checkpoint falls inside a batch: the resumed run trains
    step 2 on the saved rollouts (no new rollout) and ends with the uninterrupted run's parameters."""
    from trl_spg.tiny import build_tiny_diffusion_lm

    trainer_class, config_class = (SPGTrainer, SPGConfig) if algorithm == "spg" else (WD1Trainer, WD1Config)
    args = make_args(tmp_path, config_class, max_steps=2, save_strategy="steps", save_steps=1, num_iterations=2)
    rollouts = []

    def trainer():
        model = build_tiny_diffusion_lm(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
        built = trainer_class(
            model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
        )
        generate = built._generate_single_turn
        built._generate_single_turn = lambda *a, **k: rollouts.append(1) or generate(*a, **k)
        return built

    full = trainer()
    full.train()
    assert len(rollouts) == 1  # one rollout batch for both steps
    assert (tmp_path / "out" / "checkpoint-1" / "rollout_batch_rank0.pt").is_file()
    assert not (tmp_path / "out" / "checkpoint-2" / "rollout_batch_rank0.pt").exists()  # at a batch boundary
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))
    assert len(rollouts) == 1
    for (name, param), other in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(param, other), name


def test_compacted_rollouts_train_exactly_as_full_ones(tmp_path, tiny_tokenizer, prompt_dataset):
    """`rollout_compact_batch` (on by default) feeds the model fewer rows but changes no rollout, hence no update:
    2 steps with it on and off give the same completions and the same parameters."""
    from trl_spg.tiny import build_tiny_diffusion_lm

    eos = tiny_tokenizer.eos_token_id

    def run(compact: bool):
        model = build_tiny_diffusion_lm(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
        rows, completions = [], []

        # A raised EOS logit makes rollouts end early at varied positions (so rows leave the batch).
        def raise_eos(module, args, kwargs, output):
            output.logits[..., eos] += 3.0

        model.register_forward_hook(raise_eos, with_kwargs=True)
        model.register_forward_pre_hook(
            lambda module, args, kwargs: rows.append(len(kwargs["input_ids"])), with_kwargs=True
        )
        args = make_args(tmp_path / str(compact), rollout_compact_batch=compact, log_completions=False)
        trainer = SPGTrainer(
            model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
        )
        generate = trainer._generate_single_turn
        trainer._generate_single_turn = lambda *a, **k: (
            completions.append(generate(*a, **k)[0]) or (completions[-1], None)
        )
        trainer.train()
        return completions, dict(trainer.model.named_parameters()), sum(rows)

    compacted, compacted_params, compacted_rows = run(True)
    full, full_params, full_rows = run(False)
    assert compacted == full and any(len(ids) < 8 for batch in full for ids in batch)  # some end early with EOS
    assert compacted_rows < full_rows
    for name, param in full_params.items():
        assert torch.equal(param, compacted_params[name]), name


@pytest.mark.parametrize("option", ["tools", "rollout_func", "environment_factory"])
def test_rejects_options_that_bypass_diffusion_rollouts(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, option):
    with pytest.raises(ValueError, match=option):
        SPGTrainer(
            tiny_model,
            char_variety,
            args=make_args(tmp_path),
            train_dataset=prompt_dataset,
            processing_class=tiny_tokenizer,
            **{option: [len] if option == "tools" else len},
        )


@pytest.mark.parametrize("trainer_class", [SPGTrainer, WD1Trainer])
def test_fast_rollout_options_reach_the_sampler(
    tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, monkeypatch, trainer_class
):
    """The `rollout_*` fields live in `DiffusionGRPOConfig`, so every trainer's rollouts use them."""
    import trl_spg.trainers.diffusion_trainer as trainer_module

    calls, sampler = [], trainer_module.diffusion_generate

    def recording(model, ids, mask, config, **kwargs):
        calls.append(vars(config))
        return sampler(model, ids, mask, config, **kwargs)

    monkeypatch.setattr(trainer_module, "diffusion_generate", recording)
    args = make_args(
        tmp_path,
        config_class=trainer_class.config_class,
        max_steps=1,
        rollout_decoding="threshold",
        rollout_threshold=0.5,
        rollout_min_tokens_per_step=1,
        rollout_kv_cache="dual",
        rollout_cache_refresh_every=2,
    )
    trainer = trainer_class(
        tiny_model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    trainer.train()
    assert calls
    options = {key: calls[0][key] for key in ("decoding", "threshold", "min_tokens_per_step", "kv_cache")}
    assert options == {"decoding": "threshold", "threshold": 0.5, "min_tokens_per_step": 1, "kv_cache": "dual"}
    assert calls[0]["cache_refresh_every"] == 2
    assert trainer.state.global_step == 1 and "loss" in trainer.state.log_history[0]
