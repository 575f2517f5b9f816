"""`DiffusionGRPOConfig`: TRL's `GRPOConfig` plus the diffusion rollout settings every trainer here shares.

`SPGConfig`, `DiffuGRPOConfig` and `WD1Config` subclass it: each adds its own likelihood-estimate and loss settings
and checks (`_problems`); a ratio-free loss (SPG, wd1) sets `_ratio_free_method` and gets the checks and the warning
for the GRPO options it cannot use.
"""

from __future__ import annotations

import warnings
from dataclasses import MISSING, dataclass, field, fields
from typing import ClassVar

from trl import GRPOConfig

from ..decoding import DecodingConfig, decoding_field

_GRPO_DEFAULTS = {f.name: f.default for f in fields(GRPOConfig) if f.default is not MISSING}
#: `DecodingConfig` field -> the config field that sets it for the rollouts.
ROLLOUT_FIELDS = {
    "gen_length": "max_completion_length",
    "block_length": "block_length",
    "steps": "diffusion_steps",
    "temperature": "temperature",
    "remasking": "remasking",
    "decoding": "rollout_decoding",
    "threshold": "rollout_threshold",
    "min_tokens_per_step": "rollout_min_tokens_per_step",
    "kv_cache": "rollout_kv_cache",
    "cache_refresh_every": "rollout_cache_refresh_every",
    "compact_batch": "rollout_compact_batch",
}
#: The canvas a completion's likelihood is computed on (see `DiffusionGRPOConfig.likelihood_canvas`).
LIKELIHOOD_CANVASES = ("masked", "visible", "trimmed")
#: GRPO loss options a ratio-free loss does not use: setting them only earns a warning.
_RATIO_OPTIONS = ("loss_type", "epsilon", "epsilon_high", "importance_sampling_level")


@dataclass
class DiffusionGRPOConfig(GRPOConfig):
    r"""
    Configuration shared by the trainers of masked diffusion LMs here: TRL's `GRPOConfig` plus diffusion rollouts.

    Rollouts come from semi-autoregressive diffusion decoding with the settings of a `trl_spg.DecodingConfig`
    (`rollout_config()`), whose fields these set: `max_completion_length` (its `gen_length`), `block_length`,
    `diffusion_steps` (its `steps`), `temperature`, `remasking` and the fast modes `rollout_decoding`,
    `rollout_threshold`, `rollout_min_tokens_per_step`, `rollout_kv_cache`, `rollout_cache_refresh_every` (its
    `decoding`, `threshold`, ...) and `rollout_compact_batch` (its `compact_batch`); their meaning, defaults and checks are `DecodingConfig`'s. Options that only make
    sense for autoregressive decoding (vLLM, continuous batching, top-k / top-p / min-p / repetition-penalty
    sampling, `generation_kwargs`) are rejected.

    Parameters:
        block_length (`int` or `None`, *optional*, defaults to `None`):
            Tokens per block of decoding, and the block size of SPG's `block_*` masks. `None`: 32 when it divides
            `max_completion_length`, else the whole completion.
        diffusion_steps (`int` or `None`, *optional*, defaults to `None`):
            Denoising steps per rollout. `None`: `max_completion_length // 2`, rounded to a multiple of the blocks.
        remasking (`str`, *optional*, defaults to `"low_confidence"`):
            Which masked positions are revealed first.
        rollout_decoding, rollout_threshold, rollout_min_tokens_per_step, rollout_kv_cache, rollout_cache_refresh_every:
            The rollouts' fast modes (`DecodingConfig`'s `decoding`, `threshold`, ...). Threshold decoding draws
            every token from the model's exact conditional; the KV caches perturb the conditionals (keep them for
            evaluation).
        rollout_compact_batch (`bool`, *optional*, defaults to `True`):
            `DecodingConfig.compact_batch` for the rollouts: a rollout whose first EOS and everything before it are
            decoded leaves the batch, and identical rollouts (a prompt's generations at the start) are forwarded
            once. Exact for the `masked` and `trimmed` likelihood canvases, which never read a token after the first
            EOS; with `likelihood_canvas="visible"` (the tail is part of the canvas) it is off whatever its value.
        mask_token_id (`int` or `None`, *optional*, defaults to `None`):
            Id of the `[MASK]` token. `None` takes the tokenizer's mask token, else `model.config.mask_token_id`.
        likelihood_canvas (`str`, *optional*, defaults to `"masked"`):
            The canvas every likelihood estimate (SPG's bounds, d1's and wd1's one-step estimate) is computed on.
            `"masked"`: prompt + `max_completion_length`, the canvas the rollout was decoded on, the positions after
            the first EOS masked and unscored (the completion's likelihood with its tail marginalised). `"visible"`:
            the same canvas with the generated tail tokens visible and unscored (the SPG reference code's
            convention). `"trimmed"`: prompt + the longest completion of the micro-batch (cheaper when completions
            end early, but not the canvas the rollout was generated on).
        p_mask_prompt (`float`, *optional*, defaults to `0.15`):
            Probability of masking each clean prompt token (SPG: each clean token before the chosen block) in the
            likelihood estimate, drawn afresh for every estimate.

        > Defaults that differ from `GRPOConfig`

        scale_rewards: `"none"` (advantages are not divided by the group std).
        temperature: `0.9`; max_completion_length: `256`; learning_rate: `3e-6`.
    """

    _VALID_DICT_FIELDS = GRPOConfig._VALID_DICT_FIELDS
    #: Name of a loss without importance ratio, clipping or KL (SPG, wd1); None for a loss that uses them (d1).
    _ratio_free_method: ClassVar[str | None] = None

    block_length: int | None = decoding_field("block_length")
    diffusion_steps: int | None = decoding_field("steps")
    remasking: str = decoding_field("remasking")
    rollout_decoding: str = decoding_field("decoding")
    rollout_threshold: float = decoding_field("threshold")
    rollout_min_tokens_per_step: int | None = decoding_field("min_tokens_per_step")
    rollout_kv_cache: str = decoding_field("kv_cache")
    rollout_cache_refresh_every: int | None = decoding_field("cache_refresh_every")
    rollout_compact_batch: bool = field(
        default=True,
        metadata={
            "help": "Drop finished rollouts from the decoding batch and forward identical ones once (exact; off "
            "with likelihood_canvas='visible', which reads the tokens after the first EOS)."
        },
    )
    mask_token_id: int | None = field(
        default=None,
        metadata={"help": "Id of the [MASK] token; default: the tokenizer's mask token, else model.config's."},
    )
    likelihood_canvas: str = field(
        default="masked",
        metadata={
            "help": "Canvas of the likelihood estimates: 'masked' (prompt + max_completion_length, tail masked), "
            "'visible' (the tail visible, as the SPG reference code) or 'trimmed' (prompt + longest completion).",
            "choices": list(LIKELIHOOD_CANVASES),
        },
    )
    p_mask_prompt: float = field(
        default=0.15, metadata={"help": "Probability of masking each clean prompt token in the likelihood estimate."}
    )

    # GRPOConfig fields whose defaults follow the SPG paper's protocol (shared by its baselines).
    scale_rewards: str = field(
        default="none", metadata={"help": "Advantage scaling; the default uses raw group-centred rewards ('none')."}
    )
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature of the rollouts."})
    max_completion_length: int | None = field(default=256, metadata={"help": "Generated tokens per rollout."})
    learning_rate: float = field(default=3e-6, metadata={"help": "Initial learning rate for AdamW."})

    def __post_init__(self):
        super().__post_init__()
        resolved = self.rollout_config().resolved()
        self.block_length, self.diffusion_steps = resolved.block_length, resolved.steps
        problems = self._problems()
        if problems:
            raise ValueError(f"Invalid {type(self).__name__}:\n- " + "\n- ".join(problems))
        if self._ratio_free_method is not None:
            ignored = [
                f"{name}={getattr(self, name)!r}"
                for name in _RATIO_OPTIONS
                if getattr(self, name) != _GRPO_DEFAULTS[name]
            ]
            if ignored:
                warnings.warn(
                    f"{type(self).__name__} ignores {', '.join(ignored)}: {self._ratio_free_method}'s loss has no "
                    "importance ratio or clipping.",
                    stacklevel=3,
                )

    def rollout_config(self) -> DecodingConfig:
        """The rollouts' decoding settings (batch compaction off for the `visible` canvas, which reads the tail)."""
        config = DecodingConfig(**{key: getattr(self, name) for key, name in ROLLOUT_FIELDS.items()})
        if self.likelihood_canvas == "visible":
            config.compact_batch = False
        return config

    def _problems(self) -> list[str]:
        """Every setting this config cannot run with, each with its fix (subclasses extend the list)."""
        problems = []
        if self.use_vllm:
            problems.append("use_vllm=True: vLLM decodes autoregressively; these rollouts use diffusion decoding.")
        if self.use_transformers_continuous_batching or self.use_transformers_paged:
            problems.append("transformers continuous batching is autoregressive; turn it off.")
        problems.extend(self.rollout_config().problems(ROLLOUT_FIELDS))
        if self.top_k or self.top_p != 1.0 or self.min_p is not None or self.repetition_penalty != 1.0:
            problems.append(
                "top_k / top_p / min_p / repetition_penalty apply to autoregressive decoding; diffusion rollouts "
                "use only temperature and remasking."
            )
        if self.generation_kwargs:
            problems.append(
                f"generation_kwargs={self.generation_kwargs}: diffusion rollouts do not use `generate`; set "
                "temperature, remasking, block_length and diffusion_steps instead."
            )
        if self.likelihood_canvas not in LIKELIHOOD_CANVASES:
            problems.append(f"likelihood_canvas={self.likelihood_canvas!r}: choose one of {LIKELIHOOD_CANVASES}.")
        if not 0.0 <= self.p_mask_prompt < 1.0:
            problems.append(f"p_mask_prompt={self.p_mask_prompt}: must lie in [0, 1).")
        method = self._ratio_free_method
        if method is not None:
            if self.beta != 0:
                problems.append(f"beta={self.beta}: {method} has no reference policy or KL penalty; set beta=0.0.")
            if self.top_entropy_quantile != 1.0:
                problems.append(
                    f"top_entropy_quantile < 1: {method} has no per-token entropies to filter on; leave it at 1.0."
                )
            if self.entropy_coef != 0 or self.use_adaptive_entropy:
                problems.append(
                    f"entropy bonuses are not part of {method}; set entropy_coef=0 and use_adaptive_entropy=False."
                )
            if self.off_policy_mask_threshold is not None:
                problems.append(
                    f"off_policy_mask_threshold needs importance ratios, which {method} does not use; leave it None."
                )
            if self.delta is not None:
                problems.append(f"delta clips importance ratios, which {method} does not use; leave it None.")
        return problems
