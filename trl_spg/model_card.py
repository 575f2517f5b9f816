"""Model cards (README.md) for checkpoints and LoRA adapters post-trained with SPG.

Everything here is plain string building: no trainer, model or network access. `spg_model_card` returns the text
of a Hugging Face model card (YAML front matter followed by Markdown) and `write_model_card` stores it as
``README.md`` in an output folder.

The card's usage snippet deliberately avoids ``model.generate`` and the ``text-generation`` pipeline: a masked
diffusion LM produces text by iteratively unmasking a canvas of mask tokens, which is what
`trl_spg.sampler.diffusion_generate` implements, so the snippet calls that sampler with the decoding settings used
for the rollouts during training.
"""

from __future__ import annotations

import json
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

__all__ = ["BASE_TAGS", "ADAPTER_TAGS", "SPG_BIBTEX", "TRL_BIBTEX", "spg_model_card", "write_model_card"]

#: Tags every card carries; adapters add `ADAPTER_TAGS`.
BASE_TAGS = ("trl", "spg", "diffusion-lm")
ADAPTER_TAGS = ("lora", "peft")

#: Shown for every value that is None.
NOT_SET = "not set"

#: Distributions whose versions are recorded when the caller passes none.
_DEFAULT_VERSION_PACKAGES = ("trl_spg", "trl", "transformers", "peft", "torch")

#: Placeholder loaded in the adapter snippet when the base model was not recorded.
_UNKNOWN_BASE_PLACEHOLDER = "<base-model-id>"

#: Keyword arguments of `diffusion_generate` filled from `decoding`, in the order they are written.
_SAMPLER_KEYWORDS = ("mask_token_id", "gen_length", "block_length", "steps", "temperature", "remasking")
#: Of those, the ones the sampler has a default for (left out of the snippet when not set).
_SAMPLER_OPTIONAL = ("temperature", "remasking")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

SPG_BIBTEX = """\
@inproceedings{wang2026spg,
    title         = {{SPG: Sandwiched Policy Gradient for Masked Diffusion Language Models}},
    author        = {Wang, Chenyu and Rashidinejad, Paria and Su, DiJia and Jiang, Song and Wang, Sid and Zhao, Siyan and Zhou, Cai and Shen, Shannon Zejiang and Chen, Feiyu and Jaakkola, Tommi and Tian, Yuandong and Liu, Bo},
    booktitle     = {International Conference on Learning Representations (ICLR)},
    year          = {2026},
    eprint        = {2510.09541},
    archivePrefix = {arXiv},
    url           = {https://arxiv.org/abs/2510.09541}
}"""

TRL_BIBTEX = """\
@software{vonwerra2020trl,
    title   = {{TRL: Transformers Reinforcement Learning}},
    author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallou{\\'e}dec, Quentin},
    license = {Apache-2.0},
    url     = {https://github.com/huggingface/trl},
    year    = {2020}
}"""

#: Short meanings of the SPG / training settings; unknown keys are listed with an empty meaning.
SPG_SETTING_MEANINGS: dict[str, str] = {
    "negative_bound": "Bound optimised for completions with non-positive advantage: `mix`, `eubo`, `elbo` or `none`",
    "eubo_beta": "Exponent β of the evidence upper bound (EUBO)",
    "mix_weight": "Weight w of the EUBO in the mixture w·EUBO + (1 − w)·ELBO",
    "masking_strategy": "How the Monte Carlo masks behind the bound estimates are drawn "
    "(`all`, `random`, `block_all`, `block_random`)",
    "num_mc_masks": "Monte Carlo masks drawn per completion to estimate the bounds",
    "min_mask_ratio": "Smallest fraction of the maskable span (the chosen block, or the whole completion for "
    "`random`) that a mask covers",
    "max_mask_ratio": "Largest fraction of the maskable span (the chosen block, or the whole completion for "
    "`random`) that a mask covers",
    "p_mask_prompt": "Probability of masking each clean token before the masked block (prompt perturbation)",
    "mask_block_length": "Block width used by the block-wise masking strategies",
    "num_generations": "Completions sampled per prompt; advantages are computed within each group",
    "num_iterations": "Gradient updates taken on each batch of rollouts",
    "learning_rate": "Optimizer learning rate",
    "scale_rewards": "Normalisation of rewards into advantages inside a group (`group`, `batch` or `none`)",
    "beta": "Weight of the KL penalty towards the reference model",
    "epsilon": "Clipping range of the importance ratio",
    "max_steps": "Optimizer steps in the run",
    "num_train_epochs": "Passes over the training prompts",
    "per_device_train_batch_size": "Completions per device in each micro-batch",
    "gradient_accumulation_steps": "Micro-batches accumulated before each optimizer step",
    "max_prompt_length": "Longest prompt kept, in tokens",
    "seed": "Random seed of the run",
}

DECODING_MEANINGS: dict[str, str] = {
    "gen_length": "Tokens generated after the prompt",
    "block_length": "Width of the blocks that are decoded one after another, left to right",
    "steps": "Denoising steps in total, shared evenly by the blocks",
    "temperature": "Sampling temperature of the proposed tokens (0 picks the most likely one)",
    "remasking": "Which masked positions are revealed first at each step (`low_confidence` or `random`)",
    "mask_token_id": "Id of the mask token that fills the not-yet-decoded positions",
}


def _installed_versions(packages: tuple[str, ...] = _DEFAULT_VERSION_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` (None for a package that is not installed)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions.get("trl_spg") is None and "trl_spg" in versions:
        import trl_spg

        versions["trl_spg"] = getattr(trl_spg, "__version__", None)
    return versions


def _display(value: Any) -> str:
    """A value as written in a Markdown table cell: None -> "not set", pipes escaped, one line."""
    if value is None:
        return NOT_SET
    text = value if isinstance(value, str) else repr(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _python_literal(value: Any) -> str:
    """A Python literal for ``value`` (strings double-quoted, as ruff would format them)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _table(header: tuple[str, str, str], rows: list[tuple[str, str, str]]) -> str:
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def _settings_table(settings: dict, meanings: dict[str, str]) -> str:
    rows = [(f"`{key}`", _display(value), meanings.get(key, "")) for key, value in settings.items()]
    if not rows:
        return f"_No settings were recorded ({NOT_SET})._"
    return _table(("setting", "value", "meaning"), rows)


def _hub_reference(repo_id: str, section: str = "") -> str:
    """A Markdown link to the Hub page of ``repo_id`` when it looks like a Hub id, else the id in backticks.

    ``section`` is the URL prefix of the repository type (``"datasets/"`` for datasets, empty for models).
    """
    if _HUB_ID.match(repo_id):
        return f"[{repo_id}](https://huggingface.co/{section}{repo_id})"
    return f"`{repo_id}`"


def _front_matter(*, base_model: str | None, is_adapter: bool, tags: list[str], dataset_name: str | None) -> str:
    data: dict[str, Any] = {}
    if base_model is not None:
        data["base_model"] = base_model
    data["library_name"] = "peft" if is_adapter else "transformers"
    data["tags"] = tags
    if dataset_name is not None:
        data["datasets"] = [dataset_name]
    # No pipeline_tag: these models decode by iterative unmasking, not through the text-generation pipeline.
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False) + "---\n"


def _card_tags(is_adapter: bool, extra: list[str] | None) -> list[str]:
    tags: list[str] = []
    for tag in (*BASE_TAGS, *(ADAPTER_TAGS if is_adapter else ()), *(extra or [])):
        if tag not in tags:
            tags.append(tag)
    return tags


def _usage_snippet(*, base_model: str | None, repo_id: str, is_adapter: bool, decoding: dict) -> str:
    """The Python snippet of the "How to use" section (valid Python whatever the inputs)."""
    lines = [
        "import torch",
    ]
    if is_adapter:
        lines.append("from peft import PeftModel")
    lines += [
        "",
        "from trl_spg.models import load_model_and_tokenizer",
        "from trl_spg.sampler import completion_mask_from_ids, diffusion_generate",
        "",
        'device = "cuda" if torch.cuda.is_available() else "cpu"',
        "# LLaDA and Dream checkpoints load onto transformers' native bidirectional classes; others load as they are.",
    ]
    if is_adapter:
        base = base_model if base_model is not None else _UNKNOWN_BASE_PLACEHOLDER
        if base_model is None:
            lines.append(
                "# The base model was not recorded: replace the placeholder with the model the adapter was trained on."
            )
        lines += [
            f"base_model, tokenizer = load_model_and_tokenizer({_python_literal(base)})",
            "base_model = base_model.to(device)",
            f"model = PeftModel.from_pretrained(base_model, {_python_literal(repo_id)}).eval()",
        ]
    else:
        lines += [
            f"model, tokenizer = load_model_and_tokenizer({_python_literal(repo_id)})",
            "model = model.to(device).eval()",
        ]
    lines += [
        "",
        'messages = [{"role": "user", "content": "what is 7 * 6?"}]',
        "prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)",
        'inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)',
        "",
        "# Masked diffusion decoding: the completion starts as mask tokens that are revealed block by block.",
        "completion_ids = diffusion_generate(",
        "    model,",
        '    inputs["input_ids"],',
        '    inputs["attention_mask"],',
    ]
    for key in _SAMPLER_KEYWORDS:
        value = decoding.get(key)
        if value is None:
            if key in _SAMPLER_OPTIONAL:
                continue
            if key == "mask_token_id":
                lines.append("    mask_token_id=tokenizer.mask_token_id,  # not set at training time")
            else:
                lines.append(f"    {key}=None,  # not set at training time: choose a value")
            continue
        lines.append(f"    {key}={_python_literal(value)},")
    lines += [
        ")",
        "# Everything after the first end-of-sequence token is filler.",
        "keep = completion_mask_from_ids(completion_ids, tokenizer.eos_token_id)[0].bool()",
        "print(tokenizer.decode(completion_ids[0][keep], skip_special_tokens=True))",
    ]
    return "\n".join(lines)


def spg_model_card(
    *,
    model_name: str,
    base_model: str | None,
    hub_model_id: str | None,
    is_adapter: bool,
    spg_settings: dict,
    decoding: dict,
    dataset_name: str | None = None,
    tags: list[str] | None = None,
    versions: dict[str, str] | None = None,
) -> str:
    """Text of the README.md model card of a masked diffusion LM (or LoRA adapter) post-trained with SPG.

    Args:
        model_name: Name of the trained artefact (repository or folder name); used as the title.
        base_model: Hub id of the model training started from, or None when it is unknown or local-only.
        hub_model_id: Repository the artefact is pushed to, used in the loading snippet; falls back to
            ``model_name``.
        is_adapter: True when the artefact is a PEFT (LoRA) adapter rather than full weights.
        spg_settings: SPG and training settings, one table row each, in the given order.
        decoding: Diffusion decoding settings (``gen_length``, ``block_length``, ``steps``, ``temperature``,
            ``remasking``, ``mask_token_id``, ...); the sampler arguments of the snippet come from here.
        dataset_name: Training dataset (Hub id), listed in the front matter when given.
        tags: Extra tags, added after ``trl``, ``spg``, ``diffusion-lm`` (and ``lora``, ``peft`` for adapters).
        versions: Framework versions to record; by default the installed versions of trl_spg, trl, transformers,
            peft and torch.

    Returns:
        The model card: YAML front matter, then Markdown. None values are shown as "not set".
    """
    repo_id = hub_model_id or model_name
    card_tags = _card_tags(is_adapter, tags)
    if versions is None:
        versions = _installed_versions()

    if is_adapter:
        kind = "a LoRA adapter (PEFT)"
        base_sentence = (
            f"It adapts the base model {_hub_reference(base_model)}, which has to be loaded first."
            if base_model is not None
            else "The base model was not recorded, so the model this adapter plugs into has to be known from "
            "elsewhere."
        )
    else:
        kind = "a full set of model weights"
        base_sentence = (
            f"It was fine-tuned from {_hub_reference(base_model)}."
            if base_model is not None
            else "The base model was not recorded."
        )
    dataset_sentence = (
        f"Training prompts came from {_hub_reference(dataset_name, 'datasets/')}." if dataset_name is not None else ""
    )

    snippet = _usage_snippet(base_model=base_model, repo_id=repo_id, is_adapter=is_adapter, decoding=decoding)
    if is_adapter:
        loading = (
            "Load the base model with transformers, put the adapter on top of it with `PeftModel.from_pretrained`, "
            "then decode with the sampler shipped in `trl_spg`:"
        )
    else:
        loading = "Load the weights with transformers, then decode with the sampler shipped in `trl_spg`:"

    version_rows = "\n".join(f"- {name}: {_display(value)}" for name, value in versions.items())
    if not version_rows:
        version_rows = f"- {NOT_SET}"

    sections = [
        _front_matter(base_model=base_model, is_adapter=is_adapter, tags=card_tags, dataset_name=dataset_name),
        f"# {model_name}",
        " ".join(
            part
            for part in (
                f"`{model_name}` is {kind} for a masked diffusion language model, post-trained with reinforcement "
                "learning using Sandwiched Policy Gradient (SPG) with `trl_spg`, an SPG plugin for "
                "[TRL](https://github.com/huggingface/trl).",
                base_sentence,
                dataset_sentence,
            )
            if part
        ),
        "A masked diffusion LM writes its answer by starting from a run of mask tokens and filling them in over "
        "several denoising steps, every step predicting all masked positions at once. Its exact sequence "
        "likelihood is intractable, so SPG sandwiches it: completions that beat their group's average reward "
        "push up a lower bound of the likelihood (the ELBO), and the others push down an upper bound (the EUBO, "
        "or a mixture of EUBO and ELBO). Both bounds are estimated from a few block-wise Monte Carlo masks per "
        "completion.",
        "## How to use",
        'The usual `model.generate(...)` and `pipeline("text-generation")` do not apply to this model: it does '
        "not decode left to right one token at a time but by iteratively unmasking a canvas of mask tokens. "
        + loading,
        f"```python\n{snippet}\n```",
        "The sampler arguments above are the decoding settings used for the rollouts during training (table "
        "below); `steps` must be a multiple of `gen_length / block_length`.",
        "## Training settings",
        "### SPG",
        _settings_table(spg_settings, SPG_SETTING_MEANINGS),
        "### Decoding",
        _settings_table(decoding, DECODING_MEANINGS),
        "## Framework versions",
        version_rows,
        "## Citation",
        "SPG:",
        f"```bibtex\n{SPG_BIBTEX}\n```",
        "TRL:",
        f"```bibtex\n{TRL_BIBTEX}\n```",
    ]
    # The front matter already ends with a newline; everything else is separated by blank lines.
    return sections[0] + "\n" + "\n\n".join(sections[1:]) + "\n"


def write_model_card(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``<path>/README.md``, creating the folder ``path`` if needed."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(text, encoding="utf-8")
