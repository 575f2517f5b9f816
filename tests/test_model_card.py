"""Model cards: metadata through huggingface_hub, the usage snippet (checked statically and run on a tiny model)."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import io
import re

import pytest
from huggingface_hub import ModelCard

from trl_spg.decoding import DecodingConfig
from trl_spg.sampler import diffusion_generate
from trl_spg.trainers.model_card import UNKNOWN_BASE_MODEL, build_model_card
from trl_spg.trainers.spg_trainer import SPG_METHOD

BASE = "GSAI-ML/LLaDA-8B-Instruct"
SETTINGS = {"negative_bound": "mix", "eubo_beta": 1.5, "num_mc_masks": 2, "learning_rate": 3e-6}
DECODING = {
    "mask_token_id": 126336,
    "gen_length": 256,
    "block_length": 32,
    "steps": 128,
    "temperature": 0.9,
    "remasking": "low_confidence",
}
VERSIONS = {"trl_spg": "0.1.0", "torch": "2.9.0"}


def make_card(**overrides) -> str:
    kwargs = dict(
        model_name="llada-spg-lora",
        base_model=BASE,
        hub_model_id="someone/llada-spg-lora",
        is_adapter=True,
        settings=SETTINGS,
        decoding=DECODING,
        dataset_name="openai/gsm8k",
        tags=["gsm8k"],
        versions=VERSIONS,
        method=SPG_METHOD,
    )
    kwargs.update(overrides)
    return str(build_model_card(**kwargs))


def python_snippet(text: str) -> str:
    (snippet,) = re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    return snippet


def sampler_keywords(snippet: str) -> dict[str, str]:
    (call,) = [
        node
        for node in ast.walk(ast.parse(snippet))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "diffusion_generate"
    ]
    assert len(call.args) == 3  # model, input ids, attention mask
    return {keyword.arg: ast.unparse(keyword.value) for keyword in call.keywords}


def test_metadata_of_adapter_and_full_model():
    adapter = ModelCard(make_card(tags="my-tag")).data.to_dict()
    assert adapter["base_model"] == BASE and adapter["library_name"] == "peft"
    assert adapter["datasets"] == ["openai/gsm8k"]
    # A single tag stays one tag (not one tag per character).
    assert adapter["tags"] == ["trl", "spg", "diffusion-lm", "lora", "peft", "my-tag"]
    full = ModelCard(make_card(is_adapter=False, dataset_name=None, tags=None)).data.to_dict()
    assert full["library_name"] == "transformers" and "datasets" not in full
    assert full["tags"] == ["trl", "spg", "diffusion-lm"]


@pytest.mark.parametrize("is_adapter", [True, False])
def test_snippet_passes_the_decoding_settings_to_the_sampler(is_adapter):
    snippet = python_snippet(make_card(is_adapter=is_adapter))
    keywords = sampler_keywords(snippet)
    assert {key: ast.literal_eval(value) for key, value in keywords.items()} == DECODING
    parameters = inspect.signature(diffusion_generate).parameters
    required = {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY and p.default is p.empty}
    assert required <= set(keywords) <= {*parameters, *(f.name for f in dataclasses.fields(DecodingConfig))}
    assert ("PeftModel.from_pretrained" in snippet) == is_adapter
    assert "pipeline(" not in snippet and ".generate(" not in snippet


def test_unknown_base_model_and_mask_id():
    text = make_card(base_model=None, decoding={**DECODING, "mask_token_id": None})
    assert "base_model" not in ModelCard(text).data.to_dict()
    assert "not recorded" in text
    snippet = python_snippet(text)
    assert f"load_model_and_tokenizer({UNKNOWN_BASE_MODEL!r})" in snippet
    assert sampler_keywords(snippet)["mask_token_id"] == "tokenizer.mask_token_id"


def test_settings_and_versions_are_listed():
    text = make_card()
    for key, value in SETTINGS.items():
        assert f"| `{key}` | {value} |" in text
    assert "- trl_spg: 0.1.0" in text and "- torch: 2.9.0" in text
    assert "2510.09541" in text


# --------------------------------------------------------------------------------- the snippet, for real


def run_snippet(snippet: str) -> dict:
    namespace: dict = {"__name__": "__model_card__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(snippet, "<model card>", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """A tiny masked diffusion LM saved as full weights, plus a LoRA adapter over it; all local."""
    from peft import LoraConfig, get_peft_model

    from trl_spg.tiny import build_char_tokenizer, build_tiny_diffusion_lm

    root = tmp_path_factory.mktemp("card_checkpoints")
    tokenizer = build_char_tokenizer()
    model = build_tiny_diffusion_lm(tokenizer, hidden_size=32, num_heads=2)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    adapter = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.save_pretrained(root / "adapter")
    decoding = {**DECODING, "gen_length": 8, "block_length": 4, "steps": 4, "mask_token_id": tokenizer.mask_token_id}
    return root, decoding


@pytest.mark.parametrize("is_adapter", [False, True])
def test_snippet_runs(tiny_checkpoints, is_adapter):
    from peft import PeftModel

    root, decoding = tiny_checkpoints
    text = make_card(
        base_model=str(root / "base") if is_adapter else None,
        hub_model_id=str(root / ("adapter" if is_adapter else "base")),
        is_adapter=is_adapter,
        decoding=decoding,
    )
    namespace = run_snippet(python_snippet(text))
    assert isinstance(namespace["model"], PeftModel) == is_adapter
    assert tuple(namespace["completion_ids"].shape) == (1, 8)
    assert not (namespace["completion_ids"] == decoding["mask_token_id"]).any()
