"""Model cards for models and LoRA adapters trained here: huggingface_hub's `ModelCard` from our template.

The metadata is a `ModelCardData`; the text is `templates/model_card.md`. Its snippet decodes with
`trl_spg.diffusion_generate`, since a masked diffusion LM does not decode with `model.generate`, using the decoding
settings of the training rollouts. The training method (SPG by default, or a baseline) is a `TrainingMethod`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata, resources

from huggingface_hub import ModelCard, ModelCardData

BASE_TAGS = ("trl", "spg", "diffusion-lm")
ADAPTER_TAGS = ("lora", "peft")
#: Loaded by an adapter's snippet when the base model was not recorded (a model built in code, a local folder).
UNKNOWN_BASE_MODEL = "<base-model-id>"
#: `diffusion_generate` keywords filled from the decoding settings, in this order.
SAMPLER_ARGUMENTS = ("mask_token_id", "gen_length", "block_length", "steps", "temperature", "remasking")
VERSION_PACKAGES = ("trl_spg", "trl", "transformers", "peft", "torch")


@dataclass(frozen=True)
class TrainingMethod:
    """What a model card says about the training method: its name, a paragraph, the config class, tags, citation."""

    name: str
    summary: str
    config_class: str
    tags: tuple[str, ...]
    citation: str


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


def installed_versions(packages=VERSION_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def spg_model_card(
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
    method: TrainingMethod = SPG_METHOD,
) -> ModelCard:
    """The model card of a model (or LoRA adapter) trained with SPG (or another ``method``).

    ``base_model`` is the hub id training started from (None when unknown); ``hub_model_id`` the repository the
    snippet loads (default: ``model_name``); ``settings`` the training settings listed in the card; ``decoding``
    the sampler settings (``gen_length``, ``block_length``, ``steps``, ``temperature``, ``remasking``,
    ``mask_token_id``); ``tags`` a tag or list of tags added to the card's own; ``versions`` defaults to the
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
    sampler_arguments = {key: repr(decoding[key]) for key in SAMPLER_ARGUMENTS if decoding.get(key) is not None}
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
