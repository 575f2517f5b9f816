"""LLaDA / Dream checkpoints loaded through transformers' native classes, and the logit shift of `forward_logits`.

The checkpoints are tiny random ones written in the published formats: the real config field names, model_type,
architectures and auto_map, the real parameter names, scaled-down shapes and (for LLaDA) sharded safetensors with
an index. LLaDA's logits are checked against an independent plain-torch forward following LLaDA's modeling code;
Dream's against a Qwen2 with bidirectional attention plus the one-position shift.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import char_variety, make_args
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from trl_spg import SPGTrainer
from trl_spg.masking import MonteCarloMasks
from trl_spg.modeling import (
    forward_logits,
    logits_shift,
    position_ids_from_mask,
    resolve_eos_token_ids,
    unwrap_model,
)
from trl_spg.models.checkpoints import (
    CONVERSION_MARKER,
    convert_checkpoint,
    converted_checkpoint,
    load_model_and_tokenizer,
    map_parameter_name,
)
from trl_spg.sampler import diffusion_generate
from trl_spg.scoring import masked_token_logprobs
from trl_spg.tiny import build_char_tokenizer

HIDDEN, HEADS, KV_HEADS, LAYERS, MLP = 32, 4, 2, 2, 48


@pytest.fixture(autouse=True)
def conversion_cache(tmp_path, monkeypatch):
    """Conversions go to the test's folder, never to the user's cache."""
    folder = tmp_path / "conversions"
    monkeypatch.setenv("TRL_SPG_CONVERSION_CACHE", str(folder))
    return folder


def random_tensor(shape, generator, kind):
    if kind == "norm":
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if kind == "bias":
        return 0.1 * torch.randn(shape, generator=generator)
    return 0.3 * torch.randn(shape, generator=generator)


# ----------------------------------------------------------------------------------------------------------------
# LLaDA-format checkpoint and an independent reference forward


def llada_config(tokenizer) -> dict:
    """LLaDA-8B-Instruct's config.json fields, scaled down (GQA on to exercise the head layout)."""
    vocab = len(tokenizer)
    return {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": HIDDEN,
        "embedding_dropout": 0.0,
        "embedding_size": vocab,
        "eos_token_id": tokenizer.eos_token_id,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": tokenizer.mask_token_id,
        "max_sequence_length": 64,
        "mlp_hidden_size": MLP,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": HEADS,
        "n_kv_heads": KV_HEADS,
        "n_layers": LAYERS,
        "pad_token_id": tokenizer.eos_token_id,  # LLaDA pads with its EOS
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 500000.0,
        "scale_logits": False,
        "torch_dtype": "float32",
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": vocab,
        "weight_tying": False,
    }


def llada_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    d, vocab, mlp = config["d_model"], config["embedding_size"], config["mlp_hidden_size"]
    kv = config["n_kv_heads"] * (d // config["n_heads"])
    shapes = {"model.transformer.wte.weight": ((vocab, d), "matrix")}
    for i in range(config["n_layers"]):
        block = f"model.transformer.blocks.{i}."
        for name, shape, kind in (
            ("attn_norm", (d,), "norm"),
            ("q_proj", (d, d), "matrix"),
            ("k_proj", (kv, d), "matrix"),
            ("v_proj", (kv, d), "matrix"),
            ("attn_out", (d, d), "matrix"),
            ("ff_norm", (d,), "norm"),
            ("ff_proj", (mlp, d), "matrix"),
            ("up_proj", (mlp, d), "matrix"),
            ("ff_out", (d, mlp), "matrix"),
        ):
            shapes[f"{block}{name}.weight"] = (shape, kind)
    shapes["model.transformer.ln_f.weight"] = ((d,), "norm")
    shapes["model.transformer.ff_out.weight"] = ((vocab, d), "matrix")
    return {name: random_tensor(shape, generator, kind) for name, (shape, kind) in shapes.items()}


def write_llada_checkpoint(folder, tokenizer, seed=0):
    """Two shards with an index, as LLaDA-8B ships; remote code files that must not be needed."""
    folder.mkdir(parents=True)
    config = llada_config(tokenizer)
    weights = llada_weights(config, seed)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    first = {
        k: v for k, v in weights.items() if k.startswith(("model.transformer.wte", "model.transformer.blocks.0."))
    }
    second = {k: v for k, v in weights.items() if k not in first}
    weight_map = {}
    for i, shard in enumerate((first, second)):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in weights.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "modeling_llada.py").write_text("raise ImportError('remote code must not run')\n")
    (folder / "configuration_llada.py").write_text("raise ImportError('remote code must not run')\n")
    tokenizer.save_pretrained(folder)
    return folder, config, weights


def llada_reference_logits(weights, config, input_ids, attention_mask=None):
    """LLaDA's forward in plain torch: RMSNorm, RoPE (rotate-half, checkpoint theta), GQA, SwiGLU, no causal mask."""
    d, heads, kv_heads = config["d_model"], config["n_heads"], config["n_kv_heads"]
    head_dim, eps = d // heads, config["rms_norm_eps"]
    batch, length = input_ids.shape

    def rms_norm(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0).double()  # counted from the first real token
    inv_freq = 1.0 / config["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = positions[..., None] * inv_freq
    cos = torch.cat([angles, angles], -1).cos().float()[:, None]
    sin = torch.cat([angles, angles], -1).sin().float()[:, None]

    def rope(x):
        first, second = x[..., : head_dim // 2], x[..., head_dim // 2 :]
        return x * cos + torch.cat([-second, first], -1) * sin

    key_bias = torch.zeros(batch, 1, 1, length).masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
    x = weights["model.transformer.wte.weight"][input_ids]
    for i in range(config["n_layers"]):
        w = {k.split(f"blocks.{i}.")[1]: v for k, v in weights.items() if f"blocks.{i}." in k}
        h = rms_norm(x, w["attn_norm.weight"])
        q = (h @ w["q_proj.weight"].T).view(batch, length, heads, head_dim).transpose(1, 2)
        k = (h @ w["k_proj.weight"].T).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        v = (h @ w["v_proj.weight"].T).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + key_bias
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, d)
        x = x + attended @ w["attn_out.weight"].T
        h = rms_norm(x, w["ff_norm.weight"])
        x = (
            x
            + (torch.nn.functional.silu(h @ w["ff_proj.weight"].T) * (h @ w["up_proj.weight"].T))
            @ w["ff_out.weight"].T
        )
    x = rms_norm(x, weights["model.transformer.ln_f.weight"])
    return x @ weights["model.transformer.ff_out.weight"].T


# ----------------------------------------------------------------------------------------------------------------
# Dream-format checkpoint and its Qwen2 reference


def dream_config(tokenizer) -> dict:
    """Dream-v0-Instruct-7B's config.json fields, scaled down."""
    eos = tokenizer.eos_token_id
    return {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": eos,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": MLP,
        "mask_token_id": tokenizer.mask_token_id,
        "max_position_embeddings": 64,
        "max_window_layers": LAYERS,
        "model_type": "Dream",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "pad_token_id": eos,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.46.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": len(tokenizer),
    }


def qwen2_reference(config: dict, seed: int = 0) -> Qwen2ForCausalLM:
    """A bidirectional Qwen2 with Dream's shapes and random weights (biases included)."""
    fields = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "model_type", "torch_dtype")}
    with torch.random.fork_rng(devices=[]):
        model = Qwen2ForCausalLM(Qwen2Config(**fields, is_causal=False))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            kind = "bias" if name.endswith("bias") else "norm" if param.dim() == 1 else "matrix"
            param.copy_(random_tensor(param.shape, generator, kind))
    return model.eval()


def write_dream_checkpoint(folder, tokenizer, seed=0):
    folder.mkdir(parents=True)
    config = dream_config(tokenizer)
    reference = qwen2_reference(config, seed)
    weights = {name: tensor.contiguous() for name, tensor in reference.state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"alg": "origin", "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    (folder / "generation_config.json").write_text(json.dumps({**generation, "steps": 512, "mask_token_id": None}))
    (folder / "modeling_dream.py").write_text("raise ImportError('remote code must not run')\n")
    tokenizer.save_pretrained(folder)
    # Dream's tokenizer is remote code too: the converter must make it load without it.
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.update(
        tokenizer_class="DreamTokenizer", auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder, config, reference


def shift_right(logits):
    """Dream's convention: the logit for token i is produced at position i - 1; position 0 keeps its own."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def llada(tmp_path, tokenizer):
    folder, config, weights = write_llada_checkpoint(tmp_path / "LLaDA-tiny", tokenizer)
    model, _ = load_model_and_tokenizer(str(folder))
    return {"folder": folder, "config": config, "weights": weights, "model": model.eval()}


@pytest.fixture
def dream(tmp_path, tokenizer):
    folder, config, reference = write_dream_checkpoint(tmp_path / "Dream-tiny", tokenizer)
    model, _ = load_model_and_tokenizer(str(folder))
    return {"folder": folder, "config": config, "reference": reference, "model": model.eval()}


def token_batch(tokenizer, *texts):
    return tokenizer(list(texts), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)


# ----------------------------------------------------------------------------------------------------------------
# Mapping and outputs


def test_llada_loads_as_bidirectional_llama_matching_llada_math(llada, tokenizer):
    model, config, weights = llada["model"], llada["config"], llada["weights"]
    assert type(model) is LlamaForCausalLM
    assert model.config.is_causal is False
    assert model.config.mask_token_id == tokenizer.mask_token_id
    assert model.config.eos_token_id == model.generation_config.pad_token_id == tokenizer.eos_token_id
    assert model.config.num_key_value_heads == KV_HEADS and model.config.rope_parameters["rope_theta"] == 500000.0
    assert logits_shift(model) == 0
    # LLaDA's embedding has no padding row: its pad id is its EOS, which must keep its gradient.
    assert model.config.pad_token_id is None and model.get_input_embeddings().padding_idx is None

    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == sum(t.numel() for t in weights.values())
    assert (
        map_parameter_name("model.transformer.blocks.1.ff_proj.weight", "llada")
        == "model.layers.1.mlp.gate_proj.weight"
    )
    for name, tensor in weights.items():
        assert torch.equal(params[map_parameter_name(name, "llada")], tensor), name

    batch = token_batch(tokenizer, "12+34=46 and more")
    with torch.no_grad():
        logits = forward_logits(model, batch["input_ids"], batch["attention_mask"])
        native = model(input_ids=batch["input_ids"]).logits
    expected = llada_reference_logits(weights, config, batch["input_ids"])
    assert expected.std() > 1.0  # far from uniform: the comparison is not trivially met
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(native, expected, atol=1e-5, rtol=1e-5)


def test_llada_reference_agrees_with_padding_masks(llada, tokenizer):
    """LLaDA's remote code ignores padding; the native model honours it and equals the masked reference."""
    batch = token_batch(tokenizer, "12+34=", "1+2=3, 4+5=9")
    with torch.no_grad():
        logits = forward_logits(llada["model"], batch["input_ids"], batch["attention_mask"])
    expected = llada_reference_logits(llada["weights"], llada["config"], batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=1e-5)


def test_dream_loads_as_bidirectional_qwen2_with_one_shift(dream, tokenizer):
    model, reference = dream["model"], dream["reference"]
    assert type(model) is Qwen2ForCausalLM
    assert model.config.is_causal is False and model.config.logits_shift == 1 and logits_shift(model) == 1
    assert model.config.mask_token_id == tokenizer.mask_token_id
    assert resolve_eos_token_ids(model, tokenizer) == [tokenizer.eos_token_id]
    params = dict(model.named_parameters())
    ref_params = dict(reference.named_parameters())
    assert params.keys() == ref_params.keys()
    assert any(name.endswith("q_proj.bias") for name in params)
    for name, tensor in ref_params.items():
        assert torch.equal(params[name], tensor), name

    batch = token_batch(tokenizer, "12+34=46 and more")
    with torch.no_grad():
        logits = forward_logits(model, batch["input_ids"], batch["attention_mask"])
        unshifted = reference(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(logits, shift_right(unshifted), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, unshifted, atol=1e-3)


def test_dream_sliding_window_setting_is_dropped_as_dream_does(tmp_path, tokenizer):
    """Dream's code never applies a window; a converted model that did would give other logits."""
    folder, config, reference = write_dream_checkpoint(tmp_path / "Dream-window", tokenizer)
    windowed = {**config, "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0}
    (folder / "config.json").write_text(json.dumps(windowed))
    with pytest.warns(UserWarning, match="use_sliding_window"):
        model, _ = load_model_and_tokenizer(str(folder))
    assert model.config.use_sliding_window is False and set(model.config.layer_types) == {"full_attention"}
    batch = token_batch(tokenizer, "12+34=46 and more")  # longer than the window
    with torch.no_grad():
        logits = forward_logits(model, batch["input_ids"], batch["attention_mask"])
        unshifted = reference(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(logits, shift_right(unshifted), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["llada", "dream"])
def test_attention_is_bidirectional(fmt, request, tokenizer):
    model = request.getfixturevalue(fmt)["model"]
    ids = token_batch(tokenizer, "12+34=46")["input_ids"]
    changed = ids.clone()
    changed[0, -1] = tokenizer.convert_tokens_to_ids("9")
    mask = torch.ones_like(ids)
    with torch.no_grad():
        first = forward_logits(model, ids, mask, keep=torch.tensor([0, 1]))
        second = forward_logits(model, changed, mask, keep=torch.tensor([0, 1]))
    assert (first - second).abs().max() > 1e-3  # a later token changes earlier logits


@pytest.mark.parametrize("fmt", ["llada", "dream"])
def test_left_padded_batch_equals_unpadded_singles(fmt, request, tokenizer):
    model = request.getfixturevalue(fmt)["model"]
    texts = ["1+2=", "12+34=46", "7*8=56, 9"]
    batch = token_batch(tokenizer, *texts)
    width = batch["input_ids"].shape[1]
    with torch.no_grad():
        batched = forward_logits(model, batch["input_ids"], batch["attention_mask"], keep=torch.arange(width))
        for row, text in enumerate(texts):
            single = token_batch(tokenizer, text)
            alone = forward_logits(model, single["input_ids"], single["attention_mask"])
            torch.testing.assert_close(batched[row, width - alone.shape[1] :], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["llada", "dream"])
def test_gradient_checkpointing_gives_the_same_gradients(fmt, request, tokenizer):
    model = request.getfixturevalue(fmt)["model"].train()
    batch = token_batch(tokenizer, "1+2=3", "12+34=46")
    targets = batch["input_ids"].roll(1, dims=1)

    def gradients():
        model.zero_grad(set_to_none=True)
        logits = forward_logits(model, batch["input_ids"], batch["attention_mask"], keep=torch.arange(2, 8))
        logits.log_softmax(-1).gather(-1, targets[:, 2:8, None]).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_activation_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The shift is applied once, in forward_logits, for the sampler and the estimator alike


def test_dream_shift_is_applied_once_for_sampler_and_estimator(dream, tokenizer):
    model, mask_id = dream["model"], tokenizer.mask_token_id
    prompt = token_batch(tokenizer, "12+34=", "1+2=")
    completion = token_batch(tokenizer, "46.x", "3abc")["input_ids"]
    ids = torch.cat([prompt["input_ids"], completion], 1)
    mask = torch.cat([prompt["attention_mask"], torch.ones_like(completion)], 1)
    width = prompt["input_ids"].shape[1]
    keep = torch.arange(width, ids.shape[1])
    with torch.no_grad():
        shifted = shift_right(model(input_ids=ids, attention_mask=mask).logits)  # Dream's own convention
        # Pads come first in row 1; its first real token keeps its own logit (position 0 of the unpadded row).
        torch.testing.assert_close(forward_logits(model, ids, mask, keep=keep), shifted[:, keep], atol=1e-5, rtol=0)

        # Estimator: log-probs of the completion tokens read from the same shifted logits.
        noised = torch.zeros(2, 1, ids.shape[1], dtype=torch.bool)
        noised[:, 0, width + 1 :] = True
        masks = MonteCarloMasks(noised=noised, scored=noised[..., width:].clone())
        logps = masked_token_logprobs(model, prompt["input_ids"], prompt["attention_mask"], completion, masks, mask_id)
        noisy = torch.where(noised[:, 0], torch.full_like(ids, mask_id), ids)
        manual = shift_right(model(input_ids=noisy, attention_mask=mask).logits)[:, keep].log_softmax(-1)
        expected = manual.gather(-1, completion[..., None])[..., 0]
        torch.testing.assert_close(logps[:, 0], expected, atol=1e-5, rtol=0)

        # Sampler: one step reveals the whole block, each token the argmax of its shifted logit.
        generated = diffusion_generate(
            model,
            prompt["input_ids"],
            prompt["attention_mask"],
            mask_token_id=mask_id,
            gen_length=4,
            block_length=4,
            steps=1,
            temperature=0.0,
        )
        canvas = torch.cat([prompt["input_ids"], torch.full((2, 4), mask_id)], 1)
        canvas_mask = torch.cat([prompt["attention_mask"], torch.ones(2, 4, dtype=torch.long)], 1)
        raw = model(input_ids=canvas, attention_mask=canvas_mask).logits
        raw[..., mask_id] = float("-inf")
    assert torch.equal(generated, shift_right(raw)[:, width:].argmax(-1))
    assert not torch.equal(generated, raw[:, width:].argmax(-1))  # the test tells shifted from unshifted


def test_llada_has_no_shift(llada, tokenizer):
    model = llada["model"]
    batch = token_batch(tokenizer, "12+34=46", "1+2=3")
    keep = torch.tensor([0, 3, 5])
    with torch.no_grad():
        full = model(**batch, position_ids=position_ids_from_mask(batch["attention_mask"])).logits
        torch.testing.assert_close(
            forward_logits(model, batch["input_ids"], batch["attention_mask"], keep), full[:, keep]
        )


# ----------------------------------------------------------------------------------------------------------------
# Conversion, caching, errors


def test_conversion_is_cached_native_and_free_of_remote_code(tmp_path, tokenizer, conversion_cache):
    source, _, reference = write_dream_checkpoint(tmp_path / "Dream-tiny", tokenizer)
    first = converted_checkpoint(source)
    marker_time = (first / CONVERSION_MARKER).stat().st_mtime_ns
    assert converted_checkpoint(source) == first and first.parent == conversion_cache
    assert (first / CONVERSION_MARKER).stat().st_mtime_ns == marker_time  # converted once
    assert not list(first.glob("*.py"))
    saved = json.loads((first / "config.json").read_text())
    assert saved["architectures"] == ["Qwen2ForCausalLM"] and saved["converted_from"] == str(source)
    assert "auto_map" not in json.loads((first / "tokenizer_config.json").read_text())
    # Plain transformers loads it: model, tokenizer and the pad/EOS ids of the generation config.
    model = AutoModelForCausalLM.from_pretrained(first)
    loaded = AutoTokenizer.from_pretrained(first)
    assert type(model) is Qwen2ForCausalLM and model.config.logits_shift == 1
    assert (
        loaded.mask_token_id == tokenizer.mask_token_id and loaded("12=")["input_ids"] == tokenizer("12=")["input_ids"]
    )
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    explicit = convert_checkpoint(source, tmp_path / "native")
    assert explicit == tmp_path / "native" and (explicit / "model.safetensors").is_file()
    with pytest.raises(FileExistsError):
        convert_checkpoint(source, tmp_path / "native")


def test_sharded_llada_conversion_keeps_shards(llada):
    converted = converted_checkpoint(llada["folder"])
    index = json.loads((converted / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert "lm_head.weight" in index["weight_map"] and "model.layers.1.mlp.down_proj.weight" in index["weight_map"]


def test_hub_ids_resolve_through_a_snapshot_without_remote_code(tmp_path, tokenizer, monkeypatch):
    """A hub id: config.json decides, then a snapshot of configs, tokenizer and safetensors only is converted."""
    import huggingface_hub

    source = write_llada_checkpoint(tmp_path / "snapshot", tokenizer)[0]
    calls = []

    def fake_file(repo_id, filename, **kwargs):
        calls.append(("file", repo_id, filename, kwargs))
        return str(source / filename)

    def fake_snapshot(repo_id, **kwargs):
        calls.append(("snapshot", repo_id, kwargs))
        return str(source)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    model, loaded = load_model_and_tokenizer("GSAI-ML/LLaDA-8B-Instruct", revision="main")
    assert type(model) is LlamaForCausalLM and loaded.padding_side == "left"
    assert model.config.converted_from == "GSAI-ML/LLaDA-8B-Instruct"
    assert model.name_or_path.split("/")[-1].startswith("LLaDA-8B-Instruct-")
    snapshot = next(call for call in calls if call[0] == "snapshot")
    assert snapshot[2]["revision"] == "main" and "*.py" not in snapshot[2]["allow_patterns"]


def test_unsupported_checkpoints_raise_clear_errors(tmp_path, tokenizer):
    folder = tmp_path / "moe"
    folder.mkdir()
    config = {"model_type": "lladamoe", "architectures": ["LLaDAMoEModelLM"], "auto_map": {"AutoModel": "x.Y"}}
    (folder / "config.json").write_text(json.dumps(config))
    loaders = (
        load_model_and_tokenizer,
        lambda path: SPGTrainer(path, char_variety, args=make_args(tmp_path)),
        lambda path: convert_checkpoint(path, tmp_path / "o"),
    )
    for load in loaders:
        with pytest.raises(ValueError, match=r"LLaDA.*LLaDAModelLM.*Dream.*DreamModel"):
            load(str(folder))

    layer_norm, _, _ = write_llada_checkpoint(tmp_path / "llada-layernorm", tokenizer)
    config = json.loads((layer_norm / "config.json").read_text())
    (layer_norm / "config.json").write_text(json.dumps({**config, "layer_norm_type": "default"}))
    with pytest.raises(ValueError, match="layer_norm_type"):
        load_model_and_tokenizer(str(layer_norm))

    wrong, _, weights = write_llada_checkpoint(tmp_path / "llada-missing", tokenizer)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "n_layers": 3}))
    with pytest.raises(ValueError, match="missing"):
        load_model_and_tokenizer(str(wrong))


# ----------------------------------------------------------------------------------------------------------------
# SPGTrainer from a path string


@pytest.mark.parametrize("fmt", ["llada", "dream"])
def test_spg_trainer_trains_from_a_checkpoint_path(fmt, tmp_path, tokenizer, prompt_dataset):
    writer = write_llada_checkpoint if fmt == "llada" else write_dream_checkpoint
    folder = writer(tmp_path / f"{fmt}-tiny", tokenizer)[0]
    args = make_args(tmp_path, model_init_kwargs={"dtype": "float32", "attn_implementation": "eager"})
    trainer = SPGTrainer(str(folder), char_variety, args=args, train_dataset=prompt_dataset)
    inner = unwrap_model(trainer.model)
    assert type(inner) is (LlamaForCausalLM if fmt == "llada" else Qwen2ForCausalLM)
    assert inner.config._attn_implementation == "eager"  # model_init_kwargs are honoured
    assert trainer.mask_token_id == tokenizer.mask_token_id
    assert tokenizer.eos_token_id in trainer.eos_token_ids
    if fmt == "llada":  # LLaDA pads with its EOS, whose embedding row must keep learning
        assert inner.get_input_embeddings().padding_idx is None
    before = {name: p.detach().clone() for name, p in inner.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(p, before[name]) for name, p in inner.named_parameters())


def test_trainer_hands_string_models_to_trl_loading(tmp_path, tokenizer, monkeypatch):
    """A LLaDA/Dream path becomes its converted folder; TRL's loader gets quantization and remote-code settings."""
    import trl.trainer.grpo_trainer

    folder = write_dream_checkpoint(tmp_path / "Dream-tiny", tokenizer)[0]
    received = []

    class Loaded(Exception):
        pass

    def fake_create(path, **kwargs):
        received.append((path, kwargs))
        raise Loaded

    monkeypatch.setattr(trl.trainer.grpo_trainer, "create_model_from_path", fake_create)
    args = make_args(tmp_path, model_init_kwargs={"dtype": "bfloat16"}, trust_remote_code=True)
    with pytest.raises(Loaded):
        SPGTrainer(str(folder), char_variety, args=args, quantization_config="nf4-config")
    ((path, kwargs),) = received
    assert (Path(path) / CONVERSION_MARKER).is_file()
    assert kwargs == {"dtype": "bfloat16", "quantization_config": "nf4-config", "trust_remote_code": True}
