"""Loading masked diffusion LMs (LLaDA, Dream, or any transformers checkpoint) and their tokenizers.

LLaDA and Dream publish their weights with remote code that transformers 5 no longer runs (LLaDA's never calls
``post_init``), that ignores padding masks and that has no gradient checkpointing. Architecturally both are models
transformers already implements, with attention made bidirectional:

* LLaDA (``model_type: "llada"``, ``LLaDAModelLM``) is a Llama: RMSNorm, RoPE, SwiGLU (``ff_proj`` is the gate,
  ``up_proj`` the up projection, the block's ``ff_out`` the down projection), grouped-query attention;
* Dream (``model_type: "Dream"``, ``DreamModel``) is a Qwen2 (biases on q/k/v) whose logits are shifted by one
  position: the logit for token ``i`` is produced at position ``i - 1``.

`convert_checkpoint` rewrites such a checkpoint as a native folder: a ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``
config with ``is_causal=False``, ``mask_token_id`` and, for Dream, ``logits_shift=1`` (read by
`trl_spg.modeling.forward_logits`, the only place the shift is applied), the renamed safetensors, the tokenizer
(made loadable without remote code) and a generation config with the EOS/pad ids. The folder then loads with
transformers' own ``from_pretrained``: SDPA / flash attention, padding masks, gradient checkpointing, PEFT target
names (``q_proj`` ... ``down_proj``), FSDP wrapping, ``device_map`` and ``quantization_config`` all come for free.

Memory: the conversion streams the source one safetensors shard at a time (peak host memory is about the largest
shard, ~5 GB for LLaDA-8B) and never builds a model; shapes are checked against a model built on the meta device.
Loading is transformers' lazy, shard-by-shard ``from_pretrained``. Disk: the converted copy costs as much as the
source and is made once: it is cached under ``$TRL_SPG_CONVERSION_CACHE`` (default ``$HF_HOME/trl_spg/converted``)
in a folder keyed by the source (its resolved path, hub commit, config and weight file sizes and times), written to
a temporary folder and renamed into place under a file lock, so concurrent processes convert it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
)

__all__ = [
    "SUPPORTED_FORMATS",
    "checkpoint_format",
    "conversion_cache_dir",
    "convert_checkpoint",
    "converted_checkpoint",
    "llada_to_llama_config",
    "dream_to_qwen2_config",
    "load_model_and_tokenizer",
    "map_parameter_name",
    "resolve_checkpoint",
]

#: Bumped whenever the converted folders change, so that stale cached conversions are not reused.
CONVERSION_VERSION = 2
#: Written into every converted folder; its presence marks a finished conversion.
CONVERSION_MARKER = "trl_spg_conversion.json"

#: Remote-code formats the loader converts: name -> (model_type, architecture, native class).
SUPPORTED_FORMATS = {
    "llada": ("llada", "LLaDAModelLM", LlamaForCausalLM),
    "dream": ("Dream", "DreamModel", Qwen2ForCausalLM),
}
_SUPPORTED_TEXT = (
    "LLaDA (model_type 'llada', architecture LLaDAModelLM: LLaDA-8B-Base/Instruct, LLaDA-1.5) and Dream "
    "(model_type 'Dream', architecture DreamModel: Dream-v0-Base/Instruct-7B), converted to transformers' "
    "LlamaForCausalLM / Qwen2ForCausalLM with bidirectional attention, plus any checkpoint whose architecture "
    "transformers implements natively"
)

# Hub arguments used to find the source; a converted local folder does not take them.
_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only")
# Files of a source folder that are not copied next to the converted weights.
_SKIPPED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".py", ".pyc", ".lock")
_SKIPPED_FILES = {"config.json", "generation_config.json", "model.safetensors.index.json", CONVERSION_MARKER}
# Hub files a conversion needs (no remote code, no pickles).
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]

_LLADA_BLOCK = re.compile(r"model\.transformer\.blocks\.(\d+)\.(\w+)\.(weight|bias)")
_LLADA_BLOCK_MODULES = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_proj": "mlp.gate_proj",  # SiLU is applied to ff_proj: it is the gate
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ff_norm": "post_attention_layernorm",
}
_LLADA_TOP = {
    "model.transformer.wte.weight": "model.embed_tokens.weight",
    "model.transformer.ln_f.weight": "model.norm.weight",
    "model.transformer.ff_out.weight": "lm_head.weight",
}
_LLADA_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "relu": "relu"}


# ----------------------------------------------------------------------------------------------------------------
# Formats and configs


def checkpoint_format(config: dict) -> str | None:
    """``"llada"``, ``"dream"`` or None (not a remote-code format this module converts) for a ``config.json`` dict.

    ``model_type`` decides when present (so LLaDA-MoE's ``lladamoe`` or MMaDA are not mistaken for LLaDA); the
    ``architectures`` entry is the fallback.
    """
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    for name, (expected_type, architecture, _) in SUPPORTED_FORMATS.items():
        if model_type is not None:
            if str(model_type).lower() == expected_type.lower():
                return name
        elif architecture in architectures:
            return name
    return None


def _unsupported(config: dict, what: str) -> ValueError:
    architectures = config.get("architectures") or []
    return ValueError(
        f"{what}: unsupported checkpoint (model_type={config.get('model_type')!r}, architectures={architectures}). "
        f"Supported: {_SUPPORTED_TEXT}."
    )


def _value(config: dict, key: str, default):
    """``config[key]``, or LLaDA's own default when the key is missing or null."""
    value = config.get(key)
    return default if value is None else value


def llada_to_llama_config(config: dict) -> LlamaConfig:
    """The ``LlamaConfig`` (``is_causal=False``) computing what a LLaDA ``config.json`` describes.

    Missing fields take the defaults of LLaDA's ``ModelConfig``. Raises ``ValueError`` for LLaDA options a Llama
    cannot reproduce (non-Llama blocks, LayerNorm, QK-norm, biases, ALiBi, logit scaling, input embedding scaling,
    grouped blocks).
    """
    problems = []
    if _value(config, "block_type", "sequential") != "llama":
        problems.append(f"block_type={config.get('block_type')!r} (only 'llama' blocks)")
    if not _value(config, "rope", False) or _value(config, "alibi", False) or config.get("yarn"):
        problems.append("positions other than plain RoPE (rope=false, alibi or yarn)")
    if _value(config, "layer_norm_type", "default") != "rms":
        problems.append(f"layer_norm_type={config.get('layer_norm_type')!r} (only 'rms')")
    if not _value(config, "layer_norm_with_affine", True):
        problems.append("layer norms without weights")
    if _value(config, "attention_layer_norm", False):
        problems.append("attention_layer_norm (QK-norm)")
    if _value(config, "include_bias", False) or _value(config, "bias_for_layer_norm", False):
        problems.append("include_bias / bias_for_layer_norm")
    if _value(config, "include_qkv_bias", False):
        problems.append("include_qkv_bias")
    if _value(config, "scale_logits", False):
        problems.append("scale_logits")
    if _value(config, "input_emb_norm", False):
        problems.append("input_emb_norm")
    if _value(config, "block_group_size", 1) != 1:
        problems.append(f"block_group_size={config.get('block_group_size')}")
    activation = _value(config, "activation_type", "swiglu")
    if activation not in _LLADA_ACTIVATIONS:
        problems.append(f"activation_type={activation!r} (only {sorted(_LLADA_ACTIVATIONS)} with llama blocks)")
    if problems:
        raise ValueError(
            "This LLaDA checkpoint uses options LlamaForCausalLM cannot reproduce: " + "; ".join(problems)
        )
    for key in ("residual_dropout", "embedding_dropout"):
        if _value(config, key, 0.1):
            warnings.warn(f"LLaDA's {key}={config.get(key)} has no Llama equivalent and is dropped.", stacklevel=3)

    d_model, n_heads = int(config["d_model"]), int(config["n_heads"])
    n_kv_heads = config.get("n_kv_heads") or (1 if config.get("multi_query_attention") else n_heads)
    llama = LlamaConfig(
        vocab_size=int(config.get("embedding_size") or config["vocab_size"]),
        hidden_size=d_model,
        intermediate_size=int(config.get("mlp_hidden_size") or _value(config, "mlp_ratio", 4) * d_model),
        num_hidden_layers=int(config["n_layers"]),
        num_attention_heads=n_heads,
        num_key_value_heads=int(n_kv_heads),
        head_dim=d_model // n_heads,
        hidden_act=_LLADA_ACTIVATIONS[activation],
        max_position_embeddings=int(_value(config, "max_sequence_length", 1024)),
        rms_norm_eps=float(_value(config, "rms_norm_eps", 1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(_value(config, "rope_theta", 10000.0))},
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=float(_value(config, "attention_dropout", 0.1)),
        initializer_range=float(_value(config, "init_std", 0.02)),
        tie_word_embeddings=bool(_value(config, "weight_tying", True)),
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=config.get("eos_token_id"),
        # No pad id on the model: Llama would make it the embedding's `padding_idx`, and LLaDA pads with its EOS,
        # whose embedding must keep learning. The pad id lives in the tokenizer and the generation config.
        pad_token_id=None,
        dtype=config.get("torch_dtype") or config.get("dtype"),
        use_cache=False,
        is_causal=False,
    )
    llama.mask_token_id = config.get("mask_token_id")
    return llama


def dream_to_qwen2_config(config: dict) -> Qwen2Config:
    """The ``Qwen2Config`` (``is_causal=False``, ``logits_shift=1``) for a Dream ``config.json``.

    Dream's config already uses Qwen2's field names; every field is carried over (``mask_token_id`` included).
    """
    fields = {
        key: value
        for key, value in config.items()
        if key
        not in ("architectures", "auto_map", "model_type", "transformers_version", "_name_or_path", "torch_dtype")
    }
    if config.get("torch_dtype") is not None and fields.get("dtype") is None:
        fields["dtype"] = config["torch_dtype"]
    fields.update(is_causal=False, use_cache=False)
    if fields.get("use_sliding_window"):
        # Dream's own attention never applies a window, whatever its config says; Qwen2 would.
        warnings.warn(
            "This Dream config sets use_sliding_window=true, which Dream's own code ignores; the converted model is "
            "written with use_sliding_window=false so that it computes what Dream computes.",
            stacklevel=3,
        )
    fields.update(use_sliding_window=False, sliding_window=None)
    fields.pop("layer_types", None)  # every layer attends to the whole sequence
    qwen2 = Qwen2Config(**fields)
    qwen2.logits_shift = 1  # the logit for token i sits at position i - 1; see trl_spg.modeling.forward_logits
    return qwen2


def _native_config(config: dict, fmt: str) -> PretrainedConfig:
    native = llada_to_llama_config(config) if fmt == "llada" else dream_to_qwen2_config(config)
    native.architectures = [SUPPORTED_FORMATS[fmt][2].__name__]
    native.source_format = fmt
    return native


def map_parameter_name(name: str, fmt: str) -> str | None:
    """The native parameter name for a source checkpoint's ``name`` (None when the format has no such weight)."""
    if fmt == "dream":
        return name  # Dream's names are Qwen2's
    if name in _LLADA_TOP:
        return _LLADA_TOP[name]
    match = _LLADA_BLOCK.fullmatch(name)
    if match is None or match.group(2) not in _LLADA_BLOCK_MODULES:
        return None
    layer, module, kind = match.groups()
    return f"model.layers.{layer}.{_LLADA_BLOCK_MODULES[module]}.{kind}"


# ----------------------------------------------------------------------------------------------------------------
# Sources


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _hub_kwargs(kwargs: dict) -> dict:
    return {key: kwargs[key] for key in _HUB_KWARGS if kwargs.get(key) is not None}


def _read_config(name_or_path: str, **hub_kwargs) -> dict:
    """``config.json`` of a local folder or a hub repo (only that file is downloaded)."""
    if os.path.isdir(name_or_path):
        return _read_json(Path(name_or_path) / "config.json")
    from huggingface_hub import hf_hub_download

    return _read_json(Path(hf_hub_download(name_or_path, "config.json", **hub_kwargs)))


def _source_folder(name_or_path: str | os.PathLike, **hub_kwargs) -> Path:
    """A local folder holding the source checkpoint: the folder itself, or a hub snapshot (no remote code)."""
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path), allow_patterns=_HUB_PATTERNS, **hub_kwargs))


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(_read_json(index)["weight_map"].values()))
        return [folder / name for name in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No safetensors weights in {folder}; conversion reads safetensors checkpoints only.")
    return files


def _fingerprint(folder: Path) -> str:
    """Identity of a source checkpoint: resolved path (a hub snapshot's includes its commit), config, weight files."""
    digest = hashlib.sha256(f"v{CONVERSION_VERSION}\0{folder.resolve()}\0".encode())
    digest.update((folder / "config.json").read_bytes())
    for path in _weight_files(folder):
        stat = path.stat()
        digest.update(f"\0{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Conversion


def _expected_shapes(config: PretrainedConfig, model_class) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the native model, built on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        model = model_class(config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def _conversion_plan(files: list[Path], fmt: str, expected: dict[str, tuple[int, ...]]) -> list[dict[str, str]]:
    """Per source shard, ``{source name: native name}``; raises unless it covers the native model exactly."""
    from safetensors import safe_open

    plan, seen, unexpected, mismatched = [], {}, [], []
    for path in files:
        renames = {}
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                target = map_parameter_name(name, fmt)
                if target == "lm_head.weight" and "lm_head.weight" not in expected and fmt == "dream":
                    continue  # a tied head saved anyway
                if target is None or target not in expected:
                    unexpected.append(name)
                    continue
                shape = tuple(handle.get_slice(name).get_shape())
                if shape != expected[target]:
                    mismatched.append(f"{name} {shape} -> {target} {expected[target]}")
                if target in seen:
                    raise ValueError(f"{name} and {seen[target]} both map to {target}.")
                seen[target] = name
                renames[name] = target
        plan.append(renames)
    missing = sorted(set(expected) - set(seen))
    if unexpected or missing or mismatched:
        details = [
            f"{label}: {items[:8]}{' ...' if len(items) > 8 else ''}"
            for label, items in (("unexpected", unexpected), ("missing", missing), ("wrong shape", mismatched))
            if items
        ]
        raise ValueError(f"The {fmt} checkpoint does not match its native architecture: " + "; ".join(details))
    return plan


def _write_weights(files: list[Path], plan: list[dict[str, str]], folder: Path) -> None:
    """Copy the tensors shard by shard under their native names (one output shard per input shard)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shards = [renames for renames in plan if renames]
    sources = [path for path, renames in zip(files, plan) if renames]
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map, total_size = {}, 0
    for path, renames, name in zip(sources, shards, names):
        with safe_open(str(path), framework="pt") as handle:
            tensors = {target: handle.get_tensor(source) for source, target in renames.items()}
        total_size += sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors  # keep one shard in memory at a time
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _generation_config(source: Path, source_config: dict) -> GenerationConfig:
    """BOS / EOS / pad ids from the source's ``generation_config.json`` (if any), else from its ``config.json``."""
    ids = {key: source_config.get(key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    path = source / "generation_config.json"
    if path.is_file():
        saved = _read_json(path)
        ids.update({key: saved[key] for key in ids if saved.get(key) is not None})
    return GenerationConfig(**ids)


def _copy_tokenizer_and_extras(source: Path, folder: Path, fmt: str) -> None:
    """Copy tokenizer files (and other small files), then make the tokenizer load without remote code."""
    for path in source.iterdir():
        if path.is_file() and path.name not in _SKIPPED_FILES and not path.name.startswith("."):
            if not path.name.endswith((*_SKIPPED_SUFFIXES, ".index.json")):  # no weights, no weight indexes
                shutil.copyfile(path, folder / path.name)
    tokenizer_config = folder / "tokenizer_config.json"
    if not tokenizer_config.is_file():
        return
    data = _read_json(tokenizer_config)
    changed = data.pop("auto_map", None) is not None
    tokenizer_class = data.get("tokenizer_class")
    if tokenizer_class is not None and getattr(transformers, tokenizer_class, None) is None:
        # DreamTokenizer is Qwen2's byte-level BPE; a tokenizer.json, when shipped, describes any tokenizer fully.
        has_json = (folder / "tokenizer.json").is_file()
        data["tokenizer_class"] = "PreTrainedTokenizerFast" if has_json or fmt == "llada" else "Qwen2Tokenizer"
        changed = True
    if changed:
        tokenizer_config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert_checkpoint(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    overwrite: bool = False,
    source_name: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """Write a transformers-native copy of a LLaDA or Dream checkpoint to ``destination``; returns its path.

    ``source`` is a local folder (``config.json`` plus safetensors, possibly sharded with
    ``model.safetensors.index.json``) or a hub id (only configs, tokenizer files and safetensors are downloaded).
    The result loads with ``AutoModelForCausalLM.from_pretrained(destination)`` (or the native class) and
    ``AutoTokenizer.from_pretrained(destination)``; no remote code is needed. Tensors keep their dtype and values.

    ``source_name`` (default: ``source``) is recorded as ``converted_from`` in the config.

    Raises:
        ValueError: if the checkpoint is not LLaDA or Dream, uses options the native class cannot reproduce, or
            its tensors do not match the native model's names and shapes.
        FileExistsError: if ``destination`` exists and ``overwrite`` is False.
    """
    hub = _hub_kwargs(
        {"revision": revision, "token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
    )
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} exists; pass overwrite=True to replace it.")
    source_config = _read_config(str(source), **hub)
    fmt = checkpoint_format(source_config)
    if fmt is None:
        raise _unsupported(source_config, f"Cannot convert {source}")
    config = _native_config(source_config, fmt)  # fails early on unsupported options, before any download
    folder = _source_folder(source, **hub)
    model_class = SUPPORTED_FORMATS[fmt][2]
    files = _weight_files(folder)
    plan = _conversion_plan(files, fmt, _expected_shapes(config, model_class))
    config.converted_from = source_name or str(source)

    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        _write_weights(files, plan, staging)
        config.save_pretrained(staging)
        _generation_config(folder, source_config).save_pretrained(staging)
        _copy_tokenizer_and_extras(folder, staging, fmt)
        marker = {"source": config.converted_from, "format": fmt, "version": CONVERSION_VERSION}
        (staging / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return destination


def conversion_cache_dir() -> Path:
    """Where converted checkpoints are cached: ``$TRL_SPG_CONVERSION_CACHE`` or ``$HF_HOME/trl_spg/converted``."""
    configured = os.environ.get("TRL_SPG_CONVERSION_CACHE")
    if configured:
        return Path(configured)
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "trl_spg" / "converted"


def converted_checkpoint(
    name_or_path: str | os.PathLike, *, conversion_dir: str | os.PathLike | None = None, **hub_kwargs
) -> Path:
    """The cached native copy of a LLaDA / Dream checkpoint, converting it on first use (once across processes)."""
    from filelock import FileLock

    hub = _hub_kwargs(hub_kwargs)
    folder = _source_folder(name_or_path, **hub)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name_or_path).rstrip("/\\").split("/")[-1]) or "model"
    root = Path(conversion_dir) if conversion_dir is not None else conversion_cache_dir()
    destination = root / f"{stem}-{_fingerprint(folder)[:16]}"
    if (destination / CONVERSION_MARKER).is_file():
        return destination
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(destination) + ".lock"):
        if not (destination / CONVERSION_MARKER).is_file():
            convert_checkpoint(folder, destination, overwrite=True, source_name=str(name_or_path))
    return destination


# ----------------------------------------------------------------------------------------------------------------
# Loading


def _is_native(config: dict) -> bool:
    architectures = config.get("architectures") or []
    if architectures:
        return all(getattr(transformers, name, None) is not None for name in architectures)
    from transformers import CONFIG_MAPPING

    return config.get("model_type") in CONFIG_MAPPING


def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    conversion_dir: str | os.PathLike | None = None,
    **hub_kwargs,
) -> str:
    """What transformers should load for ``name_or_path``: the path or id handed on to ``from_pretrained``.

    LLaDA / Dream checkpoints resolve to their cached native copy (`converted_checkpoint`); checkpoints transformers
    implements natively (a saved converted model included) resolve to themselves; others only with
    ``trust_remote_code=True`` (their own code then runs).

    Raises:
        ValueError: naming the supported architectures, for anything else.
    """
    name_or_path = str(name_or_path)
    config = _read_config(name_or_path, **_hub_kwargs(hub_kwargs))
    if checkpoint_format(config) is not None:
        return str(converted_checkpoint(name_or_path, conversion_dir=conversion_dir, **hub_kwargs))
    if _is_native(config) or trust_remote_code:
        return name_or_path
    raise _unsupported(config, f"Cannot load {name_or_path}")


def load_model_and_tokenizer(name_or_path: str | os.PathLike, *, dtype: str | torch.dtype = "auto", **model_kwargs):
    """A model and its (left-padding) tokenizer from a hub id or a local folder, for evaluation and inference.

    The checkpoint is resolved as `SPGTrainer` resolves a string model (`resolve_checkpoint`), then loaded through
    TRL's own ``create_model_from_path`` like any model: ``model_kwargs`` (``device_map``, ``quantization_config``,
    ``attn_implementation``, ``revision``, ``trust_remote_code``, ...) go to ``from_pretrained``;
    ``conversion_dir`` overrides the conversion cache.
    """
    from trl.trainer.utils import create_model_from_path

    conversion_dir = model_kwargs.pop("conversion_dir", None)
    trust_remote_code = bool(model_kwargs.get("trust_remote_code", False))
    hub = _hub_kwargs(model_kwargs)
    path = resolve_checkpoint(name_or_path, trust_remote_code=trust_remote_code, conversion_dir=conversion_dir, **hub)
    if path != str(name_or_path):  # a converted local folder takes no hub arguments
        model_kwargs = {key: value for key, value in model_kwargs.items() if key not in _HUB_KWARGS}
        hub = {}
    model = create_model_from_path(path, dtype=dtype, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", trust_remote_code=trust_remote_code, **hub)
    return model, tokenizer
