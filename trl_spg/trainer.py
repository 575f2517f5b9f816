"""`SPGTrainer`: TRL's `GRPOTrainer` with diffusion rollouts and SPG's sandwiched likelihood bounds.

Only three GRPO hooks change, the first two in the shared base class `DiffusionGRPOTrainer`
(`trl_spg.diffusion_trainer`):

* ``_generate_single_turn``: rollouts come from semi-autoregressive diffusion decoding (`trl_spg.sampler`);
* ``_get_per_token_logps_and_entropies``: SPG uses no importance ratio, so the old-policy log-probs GRPO asks
  for are never computed (a masked diffusion LM has no per-token autoregressive log-probs anyway);
* ``_compute_loss`` (here): the SPG loss ``-sum_j A_j L_j bound_j / sum_j L_j`` with bounds estimated from fresh Monte
  Carlo masks (`trl_spg.objective.SPGObjective`).

Prompt formatting, reward functions, advantages, buffering over ``steps_per_generation`` / ``num_iterations``,
logging, PEFT and distributed training are TRL's.
"""

from __future__ import annotations

import math

import torch

from .config import SPGConfig
from .diffusion_trainer import DiffusionGRPOTrainer
from .model_card import SPG_METHOD
from .objective import SPGObjective

# Training settings listed in the model card.
_CARD_SETTINGS = (
    "negative_bound",
    "eubo_beta",
    "mix_weight",
    "masking_strategy",
    "num_mc_masks",
    "min_mask_ratio",
    "max_mask_ratio",
    "p_mask_prompt",
    "block_sampling",
    "num_generations",
    "num_iterations",
    "learning_rate",
    "scale_rewards",
)


class SPGTrainer(DiffusionGRPOTrainer):
    """Trainer for SPG (Sandwiched Policy Gradient) on masked diffusion language models.

    `trl.GRPOTrainer`'s arguments, reward functions and datasets, with an [`SPGConfig`]. ``model`` is a model instance
    or a hub id / local path: LLaDA / Dream checkpoints resolve to their converted native copy
    (`trl_spg.checkpoints`), then TRL loads it (``args.model_init_kwargs``, ``quantization_config``). Models that are
    not a ``GenerationMixin`` work too. Pass ``peft_config`` (or a ``PeftModel``) to train LoRA adapters. ``tools``,
    ``rollout_func`` and ``environment_factory`` are rejected: they replace single-turn diffusion decoding.
    """

    config_class = SPGConfig
    _tag_names = ["trl", "spg", "diffusion-lm"]
    _name = "SPG"
    _paper = {
        "title": "SPG: Sandwiched Policy Gradient for Masked Diffusion Language Models",
        "id": "2510.09541",
    }

    _card_method = SPG_METHOD
    _card_settings = _CARD_SETTINGS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = SPGObjective.from_config(self.args)

    # ----------------------------------------------------------------------------------------------------------
    # Loss

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        output = self.objective.loss(
            model, inputs, mask_token_id=self.mask_token_id, generator=self._generator("masks", "cpu")
        )
        self._check_finite(output)
        self._log_bound_metrics(mode, output)
        # GRPOTrainer sets `loss_is_scaled_for_ga = True`, so transformers' Trainer returns the loss unchanged: the
        # division by the accumulation steps happens here, as in GRPO's own `_compute_loss`.
        accumulation = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        return output.loss / (accumulation if mode == "train" else 1.0)

    def _check_finite(self, output) -> None:
        """Stop before a non-finite loss reaches the weights, on every process at once, naming its source."""
        scored = output.lengths > 0
        advantages = output.advantages.detach()
        # TRL's `nan_to_num` turns an infinite advantage into the largest finite float: count that as infinite too.
        advantages = advantages.masked_fill(advantages.abs() >= torch.finfo(advantages.dtype).max, math.inf)
        quantities = {
            "advantages (an infinite reward?)": advantages,
            "likelihood bounds (non-finite model logits, e.g. a bf16 overflow?)": output.bounds["selected"][scored],
            "loss": output.loss.reshape(1),
        }
        bad = torch.stack([(~torch.isfinite(value.detach())).any() for value in quantities.values()]).float()
        bad = self.accelerator.gather(bad.unsqueeze(0)).sum(0)
        if bad.any():
            name = next(name for name, flag in zip(quantities, bad) if flag)
            raise FloatingPointError(
                f"Non-finite {name} at optimizer step {self.state.global_step} (micro-step {self._micro_step()}); "
                "the optimizer step was not taken. See docs/troubleshooting.md."
            )

    def _log_bound_metrics(self, mode, output):
        # Completions with no token (e.g. all masked by `mask_truncated_completions`) carry no bound: they are left
        # out, and a step without any scored completion logs no bound metrics at all rather than fake zeros.
        scored = output.lengths > 0

        def values(tensor):
            return self.accelerator.gather(torch.where(scored, tensor.detach().float(), float("nan")))

        if not self.accelerator.gather(scored.sum()).sum():
            return
        bounds, metrics = output.bounds, self._metrics[mode]
        metrics["spg/elbo"].append(values(bounds["elbo"]).nanmean().item())
        if bounds["eubo"] is not None:
            metrics["spg/eubo"].append(values(bounds["eubo"]).nanmean().item())
        metrics["spg/negative_bound"].append(values(bounds["negative"]).nanmean().item())
        metrics["spg/bound_gap"].append(values(bounds["negative"] - bounds["elbo"]).nanmean().item())
        metrics["spg/negative_fraction"].append(values((output.advantages <= 0).float()).nanmean().item())
        metrics["spg/completion_length"].append(values(output.lengths.float()).nanmean().item())
