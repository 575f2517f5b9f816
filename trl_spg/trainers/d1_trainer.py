"""d1 / diffu-GRPO: TRL's GRPO loss on d1's one-step mean-field estimate of each completion token's log-probability.

Zhao, Gupta, Zheng and Grover, 2025, "d1: Scaling Reasoning in Diffusion Large Language Models via Reinforcement
Learning", arXiv 2504.12216. The log-probability of completion token ``o_k`` is estimated from a single forward in
which the whole completion is masked and every prompt token is masked independently with probability
``p_mask_prompt`` (0.15): ``log pi(o_k | q')``. GRPO then uses these per-token values exactly as it uses an
autoregressive model's: clipped importance ratio against the old policy, KL to the reference policy (``beta``),
``num_iterations`` (the paper's mu) inner updates per rollout batch. Each inner iteration perturbs the prompt afresh.

Hooks replaced (beside the diffusion rollouts of `DiffusionGRPOTrainer`):

* ``_get_per_token_logps_and_entropies``: the one-step estimate instead of an autoregressive forward;
* ``_generate_and_score_completions``: after TRL's, attaches the rollout batch's prompt masks, one per inner
  iteration, to the batch (key ``"d1_masks"``, (B, num_iterations, P + C)), so that they follow each completion
  through TRL's shuffling and splitting;
* ``_compute_loss``: selects the current inner iteration's masks (and the matching old / reference log-probs), then
  runs TRL's own GRPO loss unchanged.

When old and current log-probs use the same prompt mask. TRL computes the old policy's log-probs at rollout time,
once per rollout batch, and only when the policy can change before a batch is used (``num_iterations > 1`` or more
``steps_per_generation`` than ``gradient_accumulation_steps``); otherwise it takes the detached current values, so the
ratio is exactly 1. At rollout time the hook therefore scores every completion once per inner iteration, each with
that iteration's prompt mask, and returns (B, num_iterations, C); the reference model's log-probs (``beta > 0``) are
computed the same way. Inner iteration ``i`` of a rollout batch then compares the current policy with the old one
(and the reference) on identical masked inputs: the prompt mask is the one drawn for that completion and iteration.
The masks come from the trainer's reproducible stream for (seed, rollout micro-step, process), never the global RNG;
iterations get different draws.
"""

from __future__ import annotations

import torch

from ..masking import one_step_masks
from ..scoring import one_step_token_logprobs
from .d1_config import DiffuGRPOConfig
from .diffusion_trainer import DiffusionGRPOTrainer
from .model_card import TrainingMethod

#: Key of the batch entry holding each completion's prompt masks, one per inner iteration.
MASKS_KEY = "d1_masks"

D1_METHOD = TrainingMethod(
    name="diffu-GRPO (d1)",
    summary=(
        "A masked diffusion LM writes a completion by filling a canvas of mask tokens over several denoising steps. "
        "Its likelihood is intractable, so diffu-GRPO estimates each completion token's log-probability from one "
        "forward with the whole completion masked and the prompt randomly perturbed, and uses it in GRPO's clipped "
        "policy-ratio loss with a KL penalty to the reference model."
    ),
    config_class="DiffuGRPOConfig",
    tags=("d1", "diffu-grpo"),
    citation="""@article{zhao2025d1,
    title   = {{d1: Scaling Reasoning in Diffusion Large Language Models via Reinforcement Learning}},
    author  = {Zhao, Siyan and Gupta, Devaansh and Zheng, Qinqing and Grover, Aditya},
    journal = {arXiv preprint arXiv:2504.12216},
    year    = {2025},
    url     = {https://arxiv.org/abs/2504.12216}
}""",
)


class DiffuGRPOTrainer(DiffusionGRPOTrainer):
    """Trainer for d1 / diffu-GRPO on masked diffusion LMs: TRL's GRPO loss on d1's one-step log-probabilities.

    Same arguments as [`SPGTrainer`], with a [`DiffuGRPOConfig`]. With ``beta > 0`` the reference model is TRL's: the
    base model with the adapters disabled when training LoRA, else a second copy loaded from the model's path.
    """

    config_class = DiffuGRPOConfig
    _tag_names = ["trl", "d1", "diffu-grpo", "diffusion-lm"]
    _name = "d1"
    _card_method = D1_METHOD
    _card_settings = (
        "p_mask_prompt",
        "beta",
        "epsilon",
        "epsilon_high",
        "loss_type",
        "num_generations",
        "num_iterations",
        "learning_rate",
        "scale_rewards",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rollout_masks = None  # (B, num_iterations, P + C) masks of the rollout batch being scored
        self._loss_masks = None  # (B, 1, P + C) masks of the micro-batch whose loss is being computed

    # ----------------------------------------------------------------------------------------------------------
    # Prompt masks: one draw per completion and inner iteration, attached to the rollout batch

    def _masks_for_rollout(self, prompt_mask: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
        """The rollout batch's masks, drawn on first use (old-policy forward, reference forward or the batch)."""
        if self._rollout_masks is None:
            num_draws = self.num_iterations if self.model.training else 1
            masks = one_step_masks(
                prompt_mask.cpu(),
                completion_mask.cpu(),
                p_mask_prompt=self.args.p_mask_prompt,
                num_draws=num_draws,
                tail_visible=self.args.likelihood_canvas == "visible",
                generator=self._generator("prompt-masks", "cpu"),
            )
            self._rollout_masks = masks.noised.to(prompt_mask.device)
        return self._rollout_masks

    def _generate_and_score_completions(self, inputs):
        self._rollout_masks = None
        try:
            output = super()._generate_and_score_completions(inputs)
            output[MASKS_KEY] = self._masks_for_rollout(output["prompt_mask"], output["completion_mask"])
        finally:
            self._rollout_masks = None
        return output

    def _inner_iteration(self) -> int:
        """Which of the rollout batch's inner iterations the current micro-step belongs to (0 in evaluation)."""
        if not self.model.training:
            return 0
        steps = self.args.steps_per_generation
        return (self._step % (steps * self.num_iterations)) // steps

    # ----------------------------------------------------------------------------------------------------------
    # Log-probabilities and loss

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, **kwargs
    ):
        """d1's one-step estimate ``log pi(o_k | q')`` where GRPO asks for per-token log-probs.

        Inside `_compute_loss` (current policy): this inner iteration's prompt masks, (B, C) log-probs and, when
        asked, entropies. At rollout time (old policy, reference model): every inner iteration's masks, (B,
        num_iterations, C), which `_compute_loss` slices.
        """
        prompt_width = input_ids.shape[1] - logits_to_keep
        prompt_ids, completion_ids = input_ids[:, :prompt_width], input_ids[:, prompt_width:]
        prompt_mask, completion_mask = attention_mask[:, :prompt_width], attention_mask[:, prompt_width:]
        in_loss = self._loss_masks is not None
        if not in_loss and self._rollout_canvas is not None and self.args.likelihood_canvas != "trimmed":
            # TRL scores the old / reference policy on its trimmed batch: score the canvas the loss will use.
            completion_ids, completion_mask = self._on_rollout_canvas(completion_ids, completion_mask)
        noised = self._loss_masks if in_loss else self._masks_for_rollout(prompt_mask, completion_mask)
        batch_size = batch_size or input_ids.shape[0]
        logps, entropies = [], []
        for start in range(0, input_ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            per_draw = []
            for draw in range(noised.shape[1]):  # one forward per inner iteration keeps `batch_size` rows
                with self.accelerator.autocast():
                    result = one_step_token_logprobs(
                        model,
                        prompt_ids[rows],
                        prompt_mask[rows],
                        completion_ids[rows],
                        noised[rows, draw],
                        self.mask_token_id,
                        with_entropy=compute_entropy,
                    )
                if compute_entropy:
                    result, entropy = result
                    entropies.append(entropy)
                per_draw.append(result)
            logps.append(torch.stack(per_draw, dim=1))
        logps = torch.cat(logps)
        if in_loss:
            return logps[:, 0], (torch.cat(entropies) if compute_entropy else None), None
        return logps, None, None

    def _compute_loss(self, model, inputs):
        """TRL's GRPO loss on the current inner iteration's masks and the matching old / reference log-probs."""
        iteration = self._inner_iteration()
        inputs = dict(inputs)  # the buffered batch is reused by later iterations: leave it as it is
        self._loss_masks = inputs.pop(MASKS_KEY)[:, iteration : iteration + 1]
        for key in ("old_per_token_logps", "ref_per_token_logps"):
            if inputs.get(key) is not None:
                inputs[key] = inputs[key][:, iteration]
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._loss_masks = None
