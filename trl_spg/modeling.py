"""The one place where the sampler and the estimator call a masked diffusion model.

A model is anything that maps ``(input_ids, attention_mask)`` to logits over the vocabulary (a tensor, or an
output object with ``.logits``), with the logits at position ``i`` predicting the token at position ``i``. When
the model's ``forward`` also takes ``position_ids`` and ``logits_to_keep`` (every transformers causal-LM class
does), positions are counted from the first real token so left padding changes nothing, and logits are computed
only where they are needed.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
from torch import nn


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token: ``clamp(cumsum(mask) - 1, min=0)``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The innermost model under PEFT and distributed wrappers (whose ``forward`` defines the accepted kwargs)."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


@lru_cache(maxsize=64)
def _forward_parameters(forward_type: type) -> frozenset[str]:
    return frozenset(inspect.signature(forward_type.forward).parameters)


def accepts_argument(model, name: str) -> bool:
    """Whether the model's ``forward`` takes ``name`` (looked up once per model class)."""
    inner = unwrap_model(model) if isinstance(model, nn.Module) else model
    if not isinstance(inner, nn.Module):
        return False
    return name in _forward_parameters(type(inner))


def forward_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits of ``model`` on ``input_ids``; with ``keep`` (1-D positions), only those positions: (B, len(keep), V)."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if accepts_argument(model, "position_ids"):
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    if accepts_argument(model, "use_cache"):
        kwargs["use_cache"] = False  # every call sees a new canvas: a KV cache would only cost memory
    sliced_by_model = keep is not None and accepts_argument(model, "logits_to_keep")
    if sliced_by_model:
        kwargs["logits_to_keep"] = keep
    output = model(**kwargs)
    logits = output.logits if hasattr(output, "logits") else output
    if keep is not None and not sliced_by_model:
        logits = logits[:, keep]
    return logits


def resolve_mask_token_id(model: torch.nn.Module, tokenizer, mask_token_id: int | None = None) -> int:
    """Return the id of the mask token: explicit argument, else `tokenizer.mask_token_id`, else the model config's.

    Raises:
        ValueError: if none of them defines it, or if tokenizer and model config disagree (an explicit
            `mask_token_id` is then required, since silently picking one would train on the wrong token).
    """
    if mask_token_id is not None:
        return int(mask_token_id)
    from_tokenizer = getattr(tokenizer, "mask_token_id", None)
    from_config = getattr(getattr(model, "config", None), "mask_token_id", None)
    if from_tokenizer is not None and from_config is not None and from_tokenizer != from_config:
        raise ValueError(
            f"tokenizer.mask_token_id ({from_tokenizer}) and model.config.mask_token_id ({from_config}) differ; "
            "pass `mask_token_id` explicitly."
        )
    resolved = from_tokenizer if from_tokenizer is not None else from_config
    if resolved is None:
        raise ValueError(
            "No mask token id found: the tokenizer has no `mask_token` and `model.config` has no `mask_token_id`. "
            "Pass `mask_token_id=` explicitly (e.g. 126336 for LLaDA-8B)."
        )
    return int(resolved)
