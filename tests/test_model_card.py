"""Model card rendering: front matter, usage snippet (checked statically and run on a tiny model), tables."""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import re

import pytest

from trl_spg.model_card import spg_model_card, write_model_card

BASE = "GSAI-ML/LLaDA-8B-Instruct"
ADAPTER_REPO = "someone/llada-spg-gsm8k-lora"
FULL_REPO = "someone/llada-spg-gsm8k"

SPG_SETTINGS = {
    "negative_bound": "mix",
    "eubo_beta": 1.5,
    "mix_weight": 0.5,
    "masking_strategy": "block_random",
    "num_mc_masks": 2,
    "min_mask_ratio": 0.0,
    "max_mask_ratio": 1.0,
    "p_mask_prompt": 0.15,
    "num_generations": 6,
    "num_iterations": 4,
    "learning_rate": 3e-6,
    "scale_rewards": "none",
}
DECODING = {
    "gen_length": 256,
    "block_length": 32,
    "steps": 128,
    "temperature": 0.9,
    "remasking": "low_confidence",
    "mask_token_id": 126336,
}
VERSIONS = {"trl_spg": "0.1.0", "trl": "1.16.0", "transformers": "5.24.0", "peft": "0.21.0", "torch": "2.9.0"}


def make_card(**overrides) -> str:
    kwargs = {
        "model_name": "llada-spg-gsm8k-lora",
        "base_model": BASE,
        "hub_model_id": ADAPTER_REPO,
        "is_adapter": True,
        "spg_settings": dict(SPG_SETTINGS),
        "decoding": dict(DECODING),
        "dataset_name": "openai/gsm8k",
        "tags": ["gsm8k"],
        "versions": dict(VERSIONS),
    }
    kwargs.update(overrides)
    return spg_model_card(**kwargs)


def full_card(**overrides) -> str:
    return make_card(**{"model_name": "llada-spg-gsm8k", "hub_model_id": FULL_REPO, "is_adapter": False, **overrides})


def front_matter(text: str) -> dict:
    """The card's YAML metadata, parsed with PyYAML when available, else through huggingface_hub."""
    assert text.startswith("---\n")
    try:
        import yaml
    except ImportError:
        from huggingface_hub import ModelCard

        return ModelCard(text).data.to_dict()
    block = text.split("---\n", 2)[1]
    return yaml.safe_load(block)


def code_blocks(text: str, language: str | None = None) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    return [body for lang, body in blocks if language is None or lang == language]


def python_snippet(text: str) -> str:
    (snippet,) = code_blocks(text, "python")
    return snippet


def sampler_call(snippet: str) -> ast.Call:
    calls = [
        node
        for node in ast.walk(ast.parse(snippet))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "diffusion_generate"
    ]
    assert len(calls) == 1
    return calls[0]


# --------------------------------------------------------------------------------------------- front matter


def test_front_matter_of_adapter():
    meta = front_matter(make_card())
    assert meta["base_model"] == BASE
    assert meta["library_name"] == "peft"
    assert meta["tags"][:5] == ["trl", "spg", "diffusion-lm", "lora", "peft"]
    assert "gsm8k" in meta["tags"]
    assert meta["datasets"] == ["openai/gsm8k"]
    assert "pipeline_tag" not in meta


def test_front_matter_of_full_model():
    meta = front_matter(full_card(tags=["trl", "math"], dataset_name=None))
    assert meta["base_model"] == BASE
    assert meta["library_name"] == "transformers"
    assert meta["tags"] == ["trl", "spg", "diffusion-lm", "math"]  # no duplicates, no adapter tags
    assert "datasets" not in meta
    assert "pipeline_tag" not in meta


def test_front_matter_parses_through_huggingface_hub():
    from huggingface_hub import ModelCard

    data = ModelCard(make_card()).data.to_dict()
    assert data["base_model"] == BASE
    assert data["library_name"] == "peft"
    assert "spg" in data["tags"]


def test_unknown_base_model():
    for text in (make_card(base_model=None), full_card(base_model=None)):
        assert "base_model" not in front_matter(text)
        assert "base_model:" not in text
        assert "not recorded" in text
        for block in code_blocks(text, "python"):
            compile(block, "<model card>", "exec")


# ------------------------------------------------------------------------------------------------ snippets


def test_adapter_card_loads_base_then_adapter():
    snippet = python_snippet(make_card())
    assert f'load_model_and_tokenizer("{BASE}"' in snippet
    assert f'PeftModel.from_pretrained(base_model, "{ADAPTER_REPO}")' in snippet
    assert snippet.index("load_model_and_tokenizer(") < snippet.index("PeftModel.from_pretrained")


def test_full_model_card_has_no_peft_loading():
    text = full_card()
    assert "PeftModel" not in text
    assert f'load_model_and_tokenizer("{FULL_REPO}"' in python_snippet(text)


def test_hub_model_id_falls_back_to_model_name():
    adapter = python_snippet(make_card(model_name="my-adapter", hub_model_id=None))
    assert 'PeftModel.from_pretrained(base_model, "my-adapter")' in adapter
    full = python_snippet(full_card(model_name="my-model", hub_model_id=None))
    assert 'load_model_and_tokenizer("my-model"' in full


@pytest.mark.parametrize("card", [make_card, full_card])
def test_snippet_passes_the_decoding_settings(card):
    call = sampler_call(python_snippet(card()))
    keywords = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    assert keywords == DECODING


def test_snippet_matches_the_sampler_signature():
    from trl_spg.sampler import diffusion_generate

    parameters = inspect.signature(diffusion_generate).parameters
    required = {
        name
        for name, p in parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    }
    positional = [name for name, p in parameters.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    for decoding in (DECODING, {"gen_length": 64}):
        call = sampler_call(python_snippet(make_card(decoding=decoding)))
        names = {kw.arg for kw in call.keywords}
        assert required <= names <= set(parameters)
        assert len(call.args) == len(positional)


def test_unset_decoding_values_still_give_valid_python():
    text = make_card(decoding={"gen_length": 64, "block_length": None, "temperature": None})
    snippet = python_snippet(text)
    compile(snippet, "<model card>", "exec")
    assert "mask_token_id=tokenizer.mask_token_id" in snippet
    assert "temperature=" not in snippet  # the sampler's default applies
    assert "not set" in text


@pytest.mark.parametrize("card", [make_card, full_card])
def test_code_blocks_compile_and_avoid_generate_and_pipeline(card):
    text = card()
    blocks = code_blocks(text)
    assert len(blocks) == 3  # the Python snippet and two BibTeX entries
    for block in code_blocks(text):
        assert "pipeline(" not in block
        assert ".generate(" not in block
    for block in code_blocks(text, "python"):
        compile(block, "<model card>", "exec")
    # The prose explains why neither applies.
    assert "model.generate" in text and 'pipeline("text-generation")' in text


# -------------------------------------------------------------------------------------------------- tables


def table_rows(text: str, heading: str) -> dict[str, tuple[str, str]]:
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\| `([^`]+)` \| (.*?) \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def test_spg_settings_table_holds_every_key():
    settings = {**SPG_SETTINGS, "beta": None, "custom_knob": "a|b"}
    rows = table_rows(make_card(spg_settings=settings), "### SPG")
    assert list(rows) == list(settings)
    assert rows["eubo_beta"][0] == "1.5"
    assert rows["negative_bound"][0] == "mix"
    assert rows["learning_rate"][0] == "3e-06"
    assert rows["beta"][0] == "not set"
    assert rows["custom_knob"][0] == "a\\|b"  # pipes cannot break the table
    assert all(rows[key][1] for key in SPG_SETTINGS)  # every known setting is explained


def test_decoding_table():
    rows = table_rows(make_card(decoding={**DECODING, "temperature": None}), "### Decoding")
    assert list(rows) == list(DECODING)
    assert rows["gen_length"][0] == "256"
    assert rows["mask_token_id"][0] == "126336"
    assert rows["temperature"][0] == "not set"


def test_framework_versions():
    text = make_card(versions={"trl": "1.16.0", "peft": None})
    assert "- trl: 1.16.0" in text
    assert "- peft: not set" in text

    from importlib.metadata import version

    text = make_card(versions=None)
    for name in ("trl", "transformers", "peft", "torch"):
        assert f"- {name}: {version(name)}" in text
    assert "- trl_spg: " in text


def test_citations():
    text = make_card()
    bibtex = "\n".join(code_blocks(text, "bibtex"))
    assert "2510.09541" in bibtex
    assert "Sandwiched Policy Gradient for Masked Diffusion Language Models" in bibtex
    assert "@software{vonwerra2020trl" in bibtex
    assert "{{TRL: Transformers Reinforcement Learning}}" in bibtex
    assert "Gallou{\\'e}dec, Quentin" in bibtex


def test_write_model_card(tmp_path):
    folder = tmp_path / "runs" / "adapter"
    text = make_card()
    write_model_card(folder, text)
    assert (folder / "README.md").read_text(encoding="utf-8") == text
    write_model_card(str(folder), "again")  # existing folder, str path
    assert (folder / "README.md").read_text(encoding="utf-8") == "again"


# --------------------------------------------------------------------------------- the snippet, for real


def run_snippet(snippet: str) -> dict:
    namespace: dict = {"__name__": "__model_card__"}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(snippet, "<model card>", "exec"), namespace)
    namespace["_stdout"] = out.getvalue()
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
    decoding = {
        "gen_length": 8,
        "block_length": 4,
        "steps": 4,
        "temperature": 0.0,
        "remasking": "low_confidence",
        "mask_token_id": tokenizer.mask_token_id,
    }
    return root, decoding


def test_full_model_snippet_runs(tiny_checkpoints):
    root, decoding = tiny_checkpoints
    text = spg_model_card(
        model_name="tiny",
        base_model=None,
        hub_model_id=str(root / "base"),
        is_adapter=False,
        spg_settings=SPG_SETTINGS,
        decoding=decoding,
        versions={},
    )
    namespace = run_snippet(python_snippet(text))
    assert tuple(namespace["completion_ids"].shape) == (1, 8)
    assert not (namespace["completion_ids"] == decoding["mask_token_id"]).any()


def test_adapter_snippet_runs(tiny_checkpoints):
    root, decoding = tiny_checkpoints
    text = spg_model_card(
        model_name="tiny-lora",
        base_model=str(root / "base"),
        hub_model_id=str(root / "adapter"),
        is_adapter=True,
        spg_settings=SPG_SETTINGS,
        decoding=decoding,
        versions={},
    )
    namespace = run_snippet(python_snippet(text))
    from peft import PeftModel

    assert isinstance(namespace["model"], PeftModel)
    assert tuple(namespace["completion_ids"].shape) == (1, 8)
