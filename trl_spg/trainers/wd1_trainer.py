"""wd1: ratio-free weighted policy optimisation on d1's one-step sequence log-likelihood.

Tang, Dolga, Yoon and Bogunovic, 2025, "wd1: Weighted Policy Optimization for Reasoning in Diffusion Language
Models", arXiv 2507.08838 (code: github.com/xiaohangt/wd1, trainer ``wll_d1_neg``). No importance ratio, no old or
reference policy: within each group of ``G`` completions of a prompt, with advantages ``A_i``,

    w+_i = softmax(psi * A)_i,    w-_i = softmax(-psi * A)_i,    loss_group = -sum_i (w+_i - w-_i) log pi(o_i | q),

so completions above the group mean are pulled up and those below pushed down, each group's weights summing to 1.
``log pi(o_i | q)`` is d1's one-step mean-field estimate (completion fully masked, prompt tokens masked with
probability ``p_mask_prompt``) summed over the completion's tokens, as wd1's code sums it; its prompt mask is drawn
afresh for every micro-step (inner iteration). wd1's code uses ``psi = 1`` (the plain softmax of the advantages)
and group-centred rewards without std scaling (``scale_rewards="none"``).

Normalisation: wd1's code computes the loss on micro-batches that each hold one group and averages them over the
accumulation steps, i.e. the mean over groups of ``loss_group``. TRL shuffles a rollout batch before splitting it
into micro-batches, so here the weights are computed over each whole group at rollout time (from the advantages of
every process) and each micro-batch contributes ``-sum_i (w+_i - w-_i) log pi(o_i | q) * G / B``: summed over the
micro-batches of an optimizer step this is again the mean over its groups of ``loss_group``.
"""

from __future__ import annotations

import torch

from ..masking import one_step_masks
from ..scoring import one_step_token_logprobs
from .diffusion_trainer import DiffusionGRPOTrainer
from .model_card import TrainingMethod
from .wd1_config import WD1Config

#: Key of the batch entry holding each completion's net weight ``w+ - w-``.
WEIGHTS_KEY = "wd1_weights"

WD1_METHOD = TrainingMethod(
    name="wd1 (weighted policy optimisation)",
    summary=(
        "A masked diffusion LM writes a completion by filling a canvas of mask tokens over several denoising steps. "
        "Its likelihood is intractable, so wd1 avoids policy ratios: it raises the estimated log-likelihood of each "
        "completion in proportion to softmax(psi * advantage) over its group and lowers it in proportion to "
        "softmax(-psi * advantage), with d1's one-step log-likelihood estimate."
    ),
    config_class="WD1Config",
    tags=("wd1",),
    citation="""@article{tang2025wd1,
    title   = {{wd1: Weighted Policy Optimization for Reasoning in Diffusion Language Models}},
    author  = {Tang, Xiaohang and Dolga, Rares and Yoon, Sangwoong and Bogunovic, Ilija},
    journal = {arXiv preprint arXiv:2507.08838},
    year    = {2025},
    url     = {https://arxiv.org/abs/2507.08838}
}""",
)


def wd1_weights(advantages: torch.Tensor, group_size: int, psi: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``w+ = softmax(psi A)`` and ``w- = softmax(-psi A)`` within each group of ``group_size`` consecutive entries.

    ``advantages`` (N,) holds whole groups in order (TRL's layout before the per-process slice); both results are
    (N,) and sum to 1 over every group.
    """
    if advantages.numel() % group_size:
        raise ValueError(f"{advantages.numel()} advantages do not split into groups of {group_size}.")
    grouped = advantages.float().reshape(-1, group_size)
    return (psi * grouped).softmax(-1).reshape(-1), (-psi * grouped).softmax(-1).reshape(-1)


def wd1_loss(sequence_logps: torch.Tensor, net_weights: torch.Tensor, group_size: int) -> torch.Tensor:
    """``-sum_i (w+_i - w-_i) log pi(o_i | q) * G / B`` over a micro-batch of ``B`` completions (see the module)."""
    count = max(sequence_logps.shape[0], 1)
    return -(net_weights.to(sequence_logps.dtype) * sequence_logps).sum() * group_size / count


class WD1Trainer(DiffusionGRPOTrainer):
    """Trainer for wd1 on masked diffusion LMs: group-softmax weighted one-step log-likelihood, no ratio.

    Same arguments as [`SPGTrainer`], with a [`WD1Config`]. No old-policy or reference forward is ever spent.
    """

    config_class = WD1Config
    _tag_names = ["trl", "wd1", "diffusion-lm"]
    _name = "wd1"
    _card_method = WD1_METHOD
    _card_settings = ("psi", "p_mask_prompt", "num_generations", "num_iterations", "learning_rate", "scale_rewards")

    def _group_size(self) -> int:
        return self.num_generations if self.model.training else self.num_generations_eval

    def _generate_and_score_completions(self, inputs):
        """TRL's rollout batch plus each completion's net weight ``w+ - w-``, computed over its whole group."""
        output = super()._generate_and_score_completions(inputs)
        advantages = output["advantages"]
        everyone = self.accelerator.gather(advantages)  # process order = TRL's order before its per-process slice
        positive, negative = wd1_weights(everyone, self._group_size(), self.args.psi)
        start = self.accelerator.process_index * advantages.shape[0]
        output[WEIGHTS_KEY] = (positive - negative)[start : start + advantages.shape[0]]
        return output

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        masks = one_step_masks(
            prompt_mask.cpu(),
            completion_mask.cpu(),
            p_mask_prompt=self.args.p_mask_prompt,
            tail_visible=self.args.likelihood_canvas == "visible",
            generator=self._generator("masks", "cpu"),
        )
        token_logps = one_step_token_logprobs(
            model,
            prompt_ids,
            prompt_mask,
            completion_ids,
            masks.noised[:, 0].to(prompt_ids.device),
            self.mask_token_id,
        )
        sequence_logps = (token_logps * completion_mask).sum(-1)
        loss = wd1_loss(sequence_logps, inputs[WEIGHTS_KEY], self._group_size())
        self._log_mean("wd1/sequence_logp", sequence_logps, completion_mask.sum(-1) > 0)
        return self._scaled_for_accumulation(loss)
