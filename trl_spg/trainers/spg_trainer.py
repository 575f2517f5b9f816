"""`SPGTrainer`: TRL's `GRPOTrainer` with diffusion rollouts and SPG's sandwiched likelihood bounds.

Only three GRPO hooks change, the first two in the shared base class `DiffusionGRPOTrainer`
(`trl_spg.trainers.diffusion_trainer`):

* ``_generate_single_turn``: rollouts come from semi-autoregressive diffusion decoding (`trl_spg.sampler`);
* ``_get_per_token_logps_and_entropies``: SPG uses no importance ratio, so the old-policy log-probs GRPO asks
  for are never computed (a masked diffusion LM has no per-token autoregressive log-probs anyway);
* ``_compute_loss`` (here): the SPG loss ``-sum_j A_j L_j bound_j / sum_j L_j`` with bounds estimated from fresh Monte
  Carlo masks (`trl_spg.objective.SPGObjective`).

Prompt formatting, reward functions, advantages, buffering over ``steps_per_generation`` / ``num_iterations``,
logging, PEFT and distributed training are TRL's.
"""

from __future__ import annotations

from ..objective import SPGObjective
from .diffusion_trainer import DiffusionGRPOTrainer
from .model_card import TrainingMethod
from .spg_config import SPGConfig

SPG_METHOD = TrainingMethod(
    name="Sandwiched Policy Gradient (SPG)",
    summary=(
        "A masked diffusion LM writes a completion by filling a canvas of mask tokens over several denoising steps. "
        "Its likelihood is intractable, so SPG sandwiches it: completions with a positive advantage raise a lower "
        "bound (ELBO), the others lower an upper bound (EUBO or an ELBO/EUBO mixture), both estimated from Monte "
        "Carlo masks."
    ),
    config_class="SPGConfig",
    tags=("spg",),
    citation="""@inproceedings{wang2026spg,
    title     = {{SPG: Sandwiched Policy Gradient for Masked Diffusion Language Models}},
    author    = {Wang, Chenyu and Rashidinejad, Paria and Su, DiJia and Jiang, Song and Wang, Sid and Zhao, Siyan and Zhou, Cai and Shen, Shannon Zejiang and Chen, Feiyu and Jaakkola, Tommi and Tian, Yuandong and Liu, Bo},
    booktitle = {International Conference on Learning Representations (ICLR)},
    year      = {2026},
    url       = {https://arxiv.org/abs/2510.09541}
}""",
)

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
    (`trl_spg.models`), then TRL loads it (``args.model_init_kwargs``, ``quantization_config``). Models that are
    not a ``GenerationMixin`` work too. Pass ``peft_config`` (or a ``PeftModel``) to train LoRA adapters. ``tools``,
    ``rollout_func`` and ``environment_factory`` are rejected: they replace single-turn diffusion decoding.
    """

    config_class = SPGConfig
    _tag_names = ["trl", "spg", "diffusion-lm"]
    _name = "SPG"
    _card_method = SPG_METHOD
    _card_settings = _CARD_SETTINGS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = SPGObjective.from_config(self.args)

    # ----------------------------------------------------------------------------------------------------------
    # Loss

    def _compute_loss(self, model, inputs):
        output = self.objective.loss(
            model, inputs, mask_token_id=self.mask_token_id, generator=self._generator("masks", "cpu")
        )
        scored = output.lengths > 0
        bounds = output.bounds
        self._finite_checks["likelihood bounds (non-finite model logits, e.g. a bf16 overflow?)"] = bounds["selected"][
            scored
        ]
        self._log_mean("spg/elbo", bounds["elbo"], scored)
        if bounds["eubo"] is not None:
            self._log_mean("spg/eubo", bounds["eubo"], scored)
        self._log_mean("spg/negative_bound", bounds["negative"], scored)
        self._log_mean("spg/bound_gap", bounds["negative"] - bounds["elbo"], scored)
        self._log_mean("spg/negative_fraction", (output.advantages <= 0).float(), scored)
        self._log_mean("spg/completion_length", output.lengths.float(), scored)
        return self._scaled_for_accumulation(output.loss)
