"""`DiffusionGRPOTrainer`: TRL's `GRPOTrainer` with diffusion rollouts, the base of every trainer in this package.

What every trainer of a masked diffusion LM here shares, whatever its likelihood estimate and loss:

* ``_generate_single_turn``: rollouts come from semi-autoregressive diffusion decoding (`trl_spg.sampler`);
* model loading (LLaDA / Dream checkpoints resolve to their converted native copy), the checks of the model and its
  mask token, and the rejection of ``tools`` / ``rollout_func`` / ``environment_factory``;
* reproducible random streams per (purpose, micro-step, process) (`_generator`);
* ``_get_per_token_logps_and_entropies``: a placeholder for losses without an importance ratio, so GRPO's old-policy
  forward is never spent (a trainer whose loss uses the ratio replaces it);
* ``compute_loss``: every loss is checked for non-finite values (on every process at once) before it reaches the
  weights; helpers for the division by the accumulation steps and for gathered metrics;
* the model card, which decodes with the diffusion sampler.

`SPGTrainer`, `DiffuGRPOTrainer` and `WD1Trainer` subclass it and replace the loss (and, for d1, the per-token
log-probabilities GRPO's loss consumes). Prompt formatting, reward functions, advantages, buffering over
``steps_per_generation`` / ``num_iterations``, logging, PEFT and distributed training are TRL's.
"""

from __future__ import annotations

import math
import os

import torch
from accelerate.utils import send_to_device
from transformers import GenerationConfig
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import pad

from ..modeling import attends_bidirectionally, mask_token_problems, resolve_mask_token_id, unwrap_model
from ..models import resolve_checkpoint
from ..sampler import completion_mask_from_ids, diffusion_generate
from ..seeding import make_generator
from .diffusion_config import DiffusionGRPOConfig
from .model_card import TrainingMethod, build_model_card


class DiffusionGRPOTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` for masked diffusion LMs: diffusion rollouts, model checks, seeding and the model card.

    `trl.GRPOTrainer`'s arguments, reward functions and datasets, with a config of type ``config_class``. ``model``
    is a model instance or a hub id / local path: LLaDA / Dream checkpoints resolve to their converted native copy
    (`trl_spg.models`), then TRL loads it (``args.model_init_kwargs``, ``quantization_config``). Models that are
    not a ``GenerationMixin`` work too. Pass ``peft_config`` (or a ``PeftModel``) to train LoRA adapters. ``tools``,
    ``rollout_func`` and ``environment_factory`` are rejected: they replace single-turn diffusion decoding.

    Subclasses set ``config_class``, ``_name``, ``_tag_names``, ``_card_method`` and ``_card_settings`` (the config
    fields listed in the model card) and replace the loss.
    """

    config_class: type[DiffusionGRPOConfig] = DiffusionGRPOConfig
    _tag_names = ["trl", "diffusion-lm"]
    _name = "DiffusionGRPO"
    _card_method: TrainingMethod | None = None
    _card_settings: tuple[str, ...] = ("num_generations", "num_iterations", "learning_rate", "scale_rewards")

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: DiffusionGRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = self.config_class(f"{str(name).rstrip('/').split('/')[-1]}-{self._name}")
        if not isinstance(args, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs args of type {self.config_class.__name__}, got {type(args).__name__}."
            )
        unsupported = {"tools": tools, "rollout_func": rollout_func, "environment_factory": environment_factory}
        given = [name for name, value in unsupported.items() if value]
        if given:
            raise ValueError(
                f"{type(self).__name__} does not support {', '.join(given)}: its rollouts are single-turn diffusion "
                "decodes and its loss scores every completion token, so multi-turn tool calls and custom rollout "
                "functions (which replace diffusion decoding) cannot be honoured."
            )
        if isinstance(model, str):
            # LLaDA / Dream resolve to their converted native folder; TRL then loads it like any model
            # (model_init_kwargs, quantization_config, dtype, trust_remote_code, device placement).
            init_kwargs = args.model_init_kwargs or {}
            model = resolve_checkpoint(
                model,
                trust_remote_code=bool(init_kwargs.get("trust_remote_code", args.trust_remote_code)),
                **{key: init_kwargs[key] for key in ("revision", "token", "cache_dir") if key in init_kwargs},
            )
        else:
            _attach_generation_config(model)
            if args.gradient_checkpointing and not getattr(
                unwrap_model(model), "supports_gradient_checkpointing", True
            ):
                raise ValueError(
                    f"{type(unwrap_model(model)).__name__} does not support gradient checkpointing; "
                    f"pass gradient_checkpointing=False in {type(args).__name__}."
                )
        if train_dataset is not None and hasattr(train_dataset, "__len__"):
            # TRL's sampler yields only whole rollout batches of distinct prompts: fewer prompts would train 0 steps.
            needed = args.generation_batch_size // args.num_generations
            if len(train_dataset) < needed:
                raise ValueError(
                    f"The training data has {len(train_dataset)} prompts; one rollout batch takes {needed} distinct "
                    f"prompts (per_device_train_batch_size x processes x steps_per_generation / num_generations = "
                    f"{args.generation_batch_size} / {args.num_generations}). Add prompts or lower "
                    "per_device_train_batch_size."
                )
        super().__init__(
            model,
            reward_funcs,
            args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        self.mask_token_id = resolve_mask_token_id(unwrap_model(self.model), self._tokenizer, args.mask_token_id)
        self._check_model_and_special_tokens()
        self._eval_calls = 0
        self._finite_checks: dict = {}
        self._rollout_canvas: torch.Tensor | None = None  # the rollout batch's full canvas, while it is scored

    def _check_model_and_special_tokens(self) -> None:
        """Fail at start, with the fix, on a model or mask token the trainer cannot train with."""
        model = unwrap_model(self.model)
        if not attends_bidirectionally(model):
            raise ValueError(
                f"{type(model).__name__} attends causally (an autoregressive model): {type(self).__name__} needs a "
                "bidirectional masked diffusion LM. Pass a LLaDA or Dream checkpoint (e.g. "
                f"{type(self).__name__}('GSAI-ML/LLaDA-8B-Instruct', ...) "
                "loads it as a bidirectional Llama), or build the model with `is_causal=False` in its config "
                "(e.g. LlamaConfig(is_causal=False, ...))."
            )
        problems = mask_token_problems(
            model, self._tokenizer, self.mask_token_id, f"{type(self.args).__name__}.mask_token_id"
        )
        if problems:
            raise ValueError(problems[0])

    # ----------------------------------------------------------------------------------------------------------
    # Randomness: one reproducible stream per (purpose, micro-step, process); the global RNG is never reseeded.

    def _micro_step(self) -> int:
        """Index of the current forward/backward micro-step, stable across resumes (TRL's `_step` is not saved)."""
        accumulation = self.args.gradient_accumulation_steps
        return self.state.global_step * accumulation + self._step % accumulation

    def _generator(self, purpose: str, device) -> torch.Generator:
        if self.model.training:
            index = self._micro_step()
        else:
            self._eval_calls += 1
            index = f"eval{self._eval_calls}"
        return make_generator(device, self.args.seed, purpose, index, self.accelerator.process_index)

    # ----------------------------------------------------------------------------------------------------------
    # Rollouts

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """Diffusion rollouts for already tokenized prompts; returns completion ids cut after the first EOS."""
        if images is not None and any(image is not None for image in images):
            raise ValueError(f"{type(self).__name__} supports text-only prompts.")
        self._check_prompt_lengths(prompt_ids)
        device = self.accelerator.device
        prompts = [torch.tensor(ids) for ids in prompt_ids]
        input_ids = pad(prompts, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        attention_mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left").to(device)
        generator = self._generator("rollout", device)
        # Sharded weights are made whole for the rollout here, and only here: DeepSpeed ZeRO-3 gathers them once per
        # rollout batch (`ds3_gather_for_generation`, as TRL does for generate), FSDP1 summons them, and FSDP2 modules
        # all-gather per layer inside each forward. Every denoising step then runs on full weights.
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
            self.accelerator.autocast(),
        ):
            completion_ids = diffusion_generate(
                unwrapped_model,
                input_ids,
                attention_mask,
                self.args.rollout_config(),
                mask_token_id=self.mask_token_id,
                eos_token_id=self.eos_token_ids,  # batch compaction (`rollout_compact_batch`)
                generator=generator,
            )
        keep = completion_mask_from_ids(completion_ids, self.eos_token_ids).bool()
        # TRL gets the completions cut after the first EOS (its rewards, metrics and logs read them); the whole
        # canvas is kept for the likelihood (`likelihood_canvas`), row for row in TRL's order.
        self._rollout_canvas = completion_ids
        return [ids[row].tolist() for ids, row in zip(completion_ids.cpu(), keep.cpu())], None

    def _generate_and_score_completions(self, inputs):
        """TRL's rollout batch, its completions on the canvas they were generated on (`likelihood_canvas`)."""
        self._rollout_canvas = None
        try:
            output = super()._generate_and_score_completions(inputs)
            if self.args.likelihood_canvas != "trimmed":
                output["completion_ids"], output["completion_mask"] = self._on_rollout_canvas(
                    output["completion_ids"], output["completion_mask"]
                )
        finally:
            self._rollout_canvas = None
        return output

    def _on_rollout_canvas(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor):
        """The rollout batch's completions as generated, all ``max_completion_length`` tokens (the tail after the
        first EOS included, for the ``visible`` convention), and their mask (1 up to the first EOS) at that width."""
        width = self.args.max_completion_length
        if self._rollout_canvas is None:  # completions that did not come from `_generate_single_turn`: no tail known
            ids = completion_ids[:, :width]
            canvas = torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=self._tokenizer.pad_token_id)
        else:
            canvas = self._rollout_canvas.to(completion_ids.device)
        mask = completion_mask[:, :width]
        return canvas, torch.nn.functional.pad(mask, (0, width - mask.shape[1]))

    def _check_prompt_lengths(self, prompt_ids) -> None:
        config = unwrap_model(self.model).config.get_text_config()
        max_positions = getattr(config, "max_position_embeddings", None)
        longest = max(len(ids) for ids in prompt_ids)
        if max_positions is not None and longest + self.args.max_completion_length > max_positions:
            raise ValueError(
                f"A prompt of {longest} tokens plus max_completion_length={self.args.max_completion_length} exceeds "
                f"the model's max_position_embeddings={max_positions}. Shorten or filter the prompts (at most "
                f"{max_positions - self.args.max_completion_length} tokens), or lower max_completion_length."
            )

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """Placeholder old-policy log-probs for losses without an importance ratio (SPG, wd1): no forward pass is spent.

        A trainer whose loss uses GRPO's ratio (d1) replaces this hook with its own likelihood estimate.
        """
        zeros = torch.zeros(input_ids.shape[0], logits_to_keep, device=input_ids.device)
        return zeros, None, None

    # ----------------------------------------------------------------------------------------------------------
    # Loss scaffolding shared by every loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss of the micro-batch, stopped before a non-finite value reaches the weights (every trainer)."""
        self._finite_checks = {}  # a subclass's `_compute_loss` may add named tensors to check
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._check_finite(
            {"advantages (an infinite reward?)": inputs["advantages"], **self._finite_checks, "loss": loss}
        )
        return loss

    def _check_finite(self, quantities: dict) -> None:
        """Raise, on every process at once, naming the first non-finite quantity; the optimizer step is not taken."""
        flags = []
        for name, value in quantities.items():
            value = value.detach()
            if name.startswith("advantages"):
                # TRL's `nan_to_num` turns an infinite advantage into the largest finite float: count it as infinite.
                value = value.masked_fill(value.abs() >= torch.finfo(value.dtype).max, math.inf)
            flags.append((~torch.isfinite(value)).any())
        bad = self.accelerator.gather(torch.stack(flags).float().unsqueeze(0)).sum(0)
        if bad.any():
            name = next(name for name, flag in zip(quantities, bad) if flag)
            raise FloatingPointError(
                f"Non-finite {name} at optimizer step {self.state.global_step} (micro-step {self._micro_step()}); "
                "the optimizer step was not taken. See docs/troubleshooting.md."
            )

    def _scaled_for_accumulation(self, loss: torch.Tensor) -> torch.Tensor:
        """The micro-batch loss divided by the accumulation steps in training, as GRPO's own `_compute_loss` does.

        `GRPOTrainer` sets `loss_is_scaled_for_ga`, so transformers' `Trainer` leaves the division to the loss.
        """
        if not self.model.training:
            return loss
        return loss / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)

    def _log_mean(self, name: str, values: torch.Tensor, scored: torch.Tensor) -> None:
        """Log the mean of ``values`` over the scored completions of every process; nothing if none is scored.

        Completions with no token (e.g. all masked by `mask_truncated_completions`) carry no value, so they are left
        out rather than logged as fake zeros.
        """
        gathered = self.accelerator.gather(torch.where(scored, values.detach().float(), float("nan")))
        if not gathered.isnan().all():
            self._metrics["train" if self.model.training else "eval"][name].append(gathered.nanmean().item())

    # ----------------------------------------------------------------------------------------------------------
    # Checkpoints: a resume in the middle of a rollout batch continues on the same rollouts

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint, plus this process's unfinished rollout batch when the checkpoint falls inside one.

        With ``num_iterations > 1`` (or ``steps_per_generation`` above the accumulation steps) a rollout batch is
        trained on over several optimizer steps; TRL does not save it, so a resumed run would draw new rollouts
        where the uninterrupted one reuses the old ones.
        """
        super()._save_checkpoint(model, trial)
        if self._step % (self.args.steps_per_generation * self.num_iterations) == 0:
            return  # the next step draws a new rollout batch either way
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        state = {"step": self._step, "buffered_inputs": self._buffered_inputs}
        torch.save(state, os.path.join(folder, _ROLLOUT_BATCH_FILE.format(self.accelerator.process_index)))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """transformers' save, except that under FSDP a final save writes the whole model (or adapter) even when
        checkpoints are sharded (``fsdp_state_dict_type: SHARDED_STATE_DICT``, FSDP2's default), where transformers
        would write no weights at all. Checkpoints stay sharded."""
        plugin = self.accelerator.state.fsdp_plugin if self.is_fsdp_enabled else None
        if plugin is None or _internal_call or "FULL_STATE_DICT" in str(plugin.state_dict_type):
            return super().save_model(output_dir, _internal_call)
        from torch.distributed.fsdp import StateDictType

        sharded, plugin.state_dict_type = plugin.state_dict_type, StateDictType.FULL_STATE_DICT
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            plugin.state_dict_type = sharded

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint or "", _ROLLOUT_BATCH_FILE.format(self.accelerator.process_index))
        if checkpoint is not None and os.path.isfile(path):
            state = torch.load(path, map_location="cpu", weights_only=False)
            self._step = state["step"]
            self._buffered_inputs = send_to_device(state["buffered_inputs"], self.accelerator.device)

    # ----------------------------------------------------------------------------------------------------------
    # Model card

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **_):
        """Write ``README.md`` in ``output_dir``: how to load the result and decode with the diffusion sampler."""
        if not self.is_world_process_zero():
            return
        args = self.args
        config = unwrap_model(self.model).config
        # A converted LLaDA/Dream checkpoint remembers its hub id; a local folder or a model built in code has none.
        base_model = getattr(config, "converted_from", None) or getattr(config, "_name_or_path", None) or None
        if base_model is not None and os.path.isdir(base_model):
            base_model = None
        settings = {name: getattr(args, name) for name in self._card_settings}
        decoding = {"mask_token_id": self.mask_token_id, **args.rollout_config().keywords()}
        card = build_model_card(
            method=self._card_method,
            model_name=model_name or os.path.basename(os.path.normpath(args.output_dir)),
            base_model=base_model,
            hub_model_id=args.hub_model_id,
            is_adapter=hasattr(self.model, "peft_config"),
            settings=settings,
            decoding=decoding,
            dataset_name=dataset_name,
            tags=[*self._tag_names, *([tags] if isinstance(tags, str) else tags or [])],
        )
        card.save(os.path.join(args.output_dir, "README.md"))


_ROLLOUT_BATCH_FILE = "rollout_batch_rank{}.pt"


def _attach_generation_config(model) -> None:
    """Give models that are not a ``GenerationMixin`` the ``generation_config`` TRL reads pad/EOS ids from."""
    inner = unwrap_model(model)
    if getattr(inner, "generation_config", None) is None:
        config = inner.config
        inner.generation_config = GenerationConfig(
            pad_token_id=getattr(config, "pad_token_id", None), eos_token_id=getattr(config, "eos_token_id", None)
        )
