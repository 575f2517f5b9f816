"""Model cards for models and LoRA adapters trained here: huggingface_hub's `ModelCard` from our template.

The metadata is a `ModelCardData`; the text is `templates/model_card.md`. Its snippet decodes with
`trl_spg.diffusion_generate`, since a masked diffusion LM does not decode with `model.generate`, using the decoding
settings of the training rollouts. The training method (SPG or a baseline) is a `TrainingMethod`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata, resources

from huggingface_hub import ModelCard, ModelCardData

ADAPTER_TAGS = ("lora", "peft")
#: Loaded by an adapter's snippet when the base model was not recorded (a model built in code, a local folder).
UNKNOWN_BASE_MODEL = "<base-model-id>"
VERSION_PACKAGES = ("trl_spg", "trl", "transformers", "peft", "torch")


@dataclass(frozen=True)
class TrainingMethod:
    """What a model card says about the training method: its name, a paragraph, the config class, tags, citation."""

    name: str
    summary: str
    config_class: str
    tags: tuple[str, ...]
    citation: str


def installed_versions(packages=VERSION_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_model_card(
    *,
    model_name: str,
    base_model: str | None,
    hub_model_id: str | None,
    is_adapter: bool,
    settings: dict,
    decoding: dict,
    dataset_name: str | None = None,
    tags: str | list[str] | None = None,
    versions: dict[str, str] | None = None,
    method: TrainingMethod,
) -> ModelCard:
    """The model card of a model (or LoRA adapter) trained with ``method``.

    ``base_model`` is the hub id training started from (None when unknown); ``hub_model_id`` the repository the
    snippet loads (default: ``model_name``); ``settings`` the training settings listed in the card; ``decoding``
    the `diffusion_generate` keywords of the snippet (``mask_token_id`` and `DecodingConfig.keywords`); ``tags`` a tag or list of tags added to the card's own; ``versions`` defaults to the
    installed versions of trl_spg, trl, transformers, peft and torch.
    """
    extra_tags = [tags] if isinstance(tags, str) else list(tags or [])
    base_tags = ("trl", *method.tags, "diffusion-lm")
    card_tags = list(dict.fromkeys([*base_tags, *(ADAPTER_TAGS if is_adapter else ()), *extra_tags]))
    card_data = ModelCardData(
        base_model=base_model,
        datasets=[dataset_name] if dataset_name else None,
        library_name="peft" if is_adapter else "transformers",
        model_name=model_name,
        tags=card_tags,
    )
    sampler_arguments = {key: repr(value) for key, value in decoding.items() if value is not None}
    sampler_arguments.setdefault("mask_token_id", "tokenizer.mask_token_id")
    template = resources.files("trl_spg").joinpath("templates/model_card.md").read_text(encoding="utf-8")
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=model_name,
        base_model=base_model,
        is_adapter=is_adapter,
        dataset_name=dataset_name,
        base_model_literal=repr(base_model or UNKNOWN_BASE_MODEL),
        repo_literal=repr(hub_model_id or model_name),
        sampler_arguments=sampler_arguments,
        settings=settings,
        versions=versions if versions is not None else installed_versions(),
        method=method,
    )
