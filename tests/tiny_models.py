"""Tiny models for the math tests: random bidirectional Llamas and hand-written logit functions."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaModel, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from trl_spg import SPGConfig
from trl_spg.tiny import bidirectional_llama


def tiny_bidirectional_llama(vocab_size: int = 8, seed: int = 0, hidden_size: int = 32, layers: int = 2):
    """A random bidirectional Llama in eval mode whose last id is the mask token, with sharpened predictions."""
    model = bidirectional_llama(
        vocab_size,
        hidden_size=hidden_size,
        num_layers=layers,
        num_heads=2,
        intermediate_size=2 * hidden_size,
        seed=seed,
    )
    # Larger output weights make the predictive distributions far from uniform, so bounds are not trivially tight.
    model.lm_head.weight.data.mul_(20.0)
    return model


class BareDiffusionLM(PreTrainedModel):
    """A language model outside transformers' classes that is no GenerationMixin (like LLaDA's remote code).

    ``backbone_is_causal`` overrides the backbone's attention direction without recording it in the model's own
    config, as remote code that says nothing about causality does.
    """

    config_class = LlamaConfig
    _supports_sdpa = True

    def __init__(self, config, backbone_is_causal: bool | None = None):
        super().__init__(config)
        backbone_config = config
        if backbone_is_causal is not None:
            backbone_config = LlamaConfig(**config.to_dict())
            backbone_config.is_causal = backbone_is_causal
        self.backbone = LlamaModel(backbone_config)
        self.head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return CausalLMOutput(logits=self.head(hidden))


class ConstantLogits(torch.nn.Module):
    """A 'model' whose logits are the same vector at every position, whatever the input."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("values", logits)

    def forward(self, input_ids, attention_mask=None):
        return self.values.expand(*input_ids.shape, -1).clone()


def char_variety(completions, **kwargs):
    """Distinct characters in the completion: varies within a group even for an untrained model."""
    return [float(len(set(text))) for text in completions]


def make_args(tmp_path, config_class=SPGConfig, **overrides):
    """A small, fast config of ``config_class`` (SPG's by default) for the trainer tests."""
    options = dict(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        block_length=4,
        diffusion_steps=4,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        save_strategy="no",
        seed=0,
    )
    options.update(overrides)
    return config_class(**options)


def tiny_bidirectional_qwen2(vocab_size: int = 16, seed: int = 0, hidden_size: int = 32, layers: int = 2):
    """A random bidirectional Qwen2 with Dream's logit shift (``logits_shift=1``, as `trl_spg.models` writes it);
    the last id is the mask token, predictions sharpened as in `tiny_bidirectional_llama`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,  # grouped-query attention, as in Dream
        max_position_embeddings=128,
        tie_word_embeddings=False,
        is_causal=False,
        use_cache=False,
    )
    config.logits_shift, config.mask_token_id = 1, vocab_size - 1
    with torch.random.fork_rng(devices=[]):
        model = Qwen2ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.02, generator=generator)  # Qwen2 has q/k/v biases
            else:
                param.fill_(1.0)
        model.lm_head.weight.mul_(20.0)
    return model.eval()
