"""The one place where the sampler and the estimator call a masked diffusion model.

A model is anything that maps ``(input_ids, attention_mask)`` to logits over the vocabulary (a tensor, or an
output object with ``.logits``). When the model's ``forward`` also takes ``position_ids`` and ``logits_to_keep``
(every transformers causal-LM class does), positions are counted from the first real token so left padding changes
nothing, and logits are computed only where they are needed.

What differs between model families is resolved here and nowhere else:

* the logit shift (`logits_shift`): LLaDA predicts token ``i`` at position ``i``; Dream predicts it at position
  ``i - 1`` (and a row's first token at its own position). `forward_logits` always returns logits aligned with
  the tokens they predict, so the sampler and the SPG estimator never see the shift;
* which positions a block-wise KV cache must recompute (`BlockKVCache`: the block, and for Dream the position
  before it);
* the mask token id (`resolve_mask_token_id`) and the EOS ids (`resolve_eos_token_ids`).
"""

from __future__ import annotations

import contextlib
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


def whole_parameters(module: nn.Module, modifier_rank: int | None = 0):
    """A context in which the DeepSpeed ZeRO-3-partitioned parameters of ``module`` are whole on every rank.

    Changes made in it on ``modifier_rank`` are kept (None: changes are discarded). Without ZeRO-3 partitioning
    (a module built while a ZeRO-3 config is active is partitioned from birth) it does nothing.
    """
    partitioned = [param for param in module.parameters() if hasattr(param, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank)


@lru_cache(maxsize=64)
def _forward_parameters(forward_type: type) -> frozenset[str]:
    return frozenset(inspect.signature(forward_type.forward).parameters)


def accepts_argument(model, name: str) -> bool:
    """Whether the model's ``forward`` takes ``name`` (looked up once per model class)."""
    inner = unwrap_model(model) if isinstance(model, nn.Module) else model
    if not isinstance(inner, nn.Module):
        return False
    return name in _forward_parameters(type(inner))


def logits_shift(model) -> int:
    """How many positions a model's logits lag behind the token they predict (0 for LLaDA, 1 for Dream).

    Read from ``config.logits_shift`` (written by `trl_spg.models` when it converts a Dream checkpoint and saved
    with the model); a config without it counts as ``1`` when its ``model_type`` is Dream's remote-code ``"Dream"``
    and ``0`` otherwise.
    """
    inner = unwrap_model(model) if isinstance(model, nn.Module) else model
    config = getattr(inner, "config", None)
    shift = getattr(config, "logits_shift", None)
    if shift is None:
        shift = 1 if str(getattr(config, "model_type", "")).lower() == "dream" else 0
    return int(shift)


def shifted_source_positions(targets: torch.Tensor, position_ids: torch.Tensor, shift: int) -> torch.Tensor:
    """Where the logits predicting the tokens at ``targets`` (1-D) are produced, per row: (B, len(targets)).

    Token ``i`` is predicted at ``i - shift``, except that a position never reaches back past its row's first real
    token: ``i - min(shift, position_ids[:, i])``. With ``shift = 1`` a row's first token (position id 0) reuses its
    own logit, as Dream does for position 0, and left padding does not change which logit a token gets.
    """
    return targets - position_ids[:, targets].clamp(max=shift)


def _logit_request(
    keep: torch.Tensor | None, position_ids: torch.Tensor, shift: int, width: int, offset: int = 0
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Which positions to ask the model for, and how to gather them into ``keep``'s order.

    Returns ``(request, index)``: ``request`` (1-D, relative to ``offset``, the first position fed to the model;
    None: all of them) and ``index`` (B, len(keep), or None when the model's output is already in order), for a
    canvas of ``width`` positions whose position ids are ``position_ids``.
    """
    if not shift:
        return (keep - offset if keep is not None else None), None
    targets = keep if keep is not None else torch.arange(width, device=position_ids.device)
    sources = shifted_source_positions(targets.to(position_ids.device), position_ids, shift)
    request, index = torch.unique(sources, return_inverse=True)
    identity = torch.arange(len(targets), device=index.device).expand_as(index)
    if len(request) == len(targets) and torch.equal(index, identity):
        index = None  # the usual case: every row reads the same, increasing sources
    return request - offset, index


def _call_for_logits(model, kwargs: dict, request: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor:
    """Call the model with ``kwargs`` and return the logits at ``request``, gathered by ``index``."""
    sliced_by_model = request is not None and accepts_argument(model, "logits_to_keep")
    if sliced_by_model:
        kwargs["logits_to_keep"] = request
    output = model(**kwargs)
    logits = output.logits if hasattr(output, "logits") else output
    if request is not None and not sliced_by_model:
        logits = logits[:, request]
    if index is not None:
        logits = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    return logits


def forward_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits predicting the tokens of ``input_ids``; with ``keep`` (1-D positions), only those: (B, len(keep), V).

    Row ``b``, column ``j`` of the result predicts the token at position ``keep[j]`` whatever the model's
    `logits_shift`: for shifted models (Dream) the logits are read at the source positions given by
    `shifted_source_positions`, and only those positions are projected onto the vocabulary.
    """
    position_ids = position_ids_from_mask(attention_mask)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if accepts_argument(model, "position_ids"):
        kwargs["position_ids"] = position_ids
    if accepts_argument(model, "use_cache"):
        kwargs["use_cache"] = False  # every call sees a new canvas: a KV cache would only cost memory
    request, index = _logit_request(keep, position_ids, logits_shift(model), input_ids.shape[1])
    return _call_for_logits(model, kwargs, request, index)


#: Block-wise KV cache modes of `BlockKVCache` (Fast-dLLM's prefix and dual caches).
KV_CACHE_MODES = ("prefix", "dual")


class BlockKVCache:
    """Block-wise approximate KV cache of a diffusion canvas (Fast-dLLM's prefix and dual caches).

    With bidirectional attention the keys and values of every position depend on the whole canvas, masked positions
    included, so no cache is exact: `refresh` runs the full forward (exact logits, as `forward_logits`) and keeps the
    keys and values of every layer; until the next refresh, `logits` feeds the model only a query window and reads
    the keys and values of all other positions from the refresh, however much the canvas has changed since:

    * ``"prefix"``: the window is the current block and everything after it; the positions before it are cached;
    * ``"dual"``: the window is the current block only; the positions before and after it are cached (the later
      blocks' keys and values are those of their masks at the refresh).

    Model families: the window starts at the lowest position whose hidden state produces a logit of the block, so for
    a shifted model (Dream, `logits_shift` 1) it includes the position before the block. Left padding: position ids
    come from the full canvas's padding mask, and the 2-D attention mask given to the model covers the cached
    positions (pads, and the stale copies of the window's positions, masked out) followed by the window. The model
    must take ``position_ids`` and ``cache`` (or ``past_key_values``) and fill a transformers `DynamicCache` with
    full-attention layers only, as transformers' Llama (LLaDA) and Qwen2 (Dream) classes do.
    """

    def __init__(self, model, mode: str):
        if mode not in KV_CACHE_MODES:
            raise ValueError(f"Unknown KV cache mode {mode!r}; choose one of {KV_CACHE_MODES}.")
        self.cache_argument = next((n for n in ("cache", "past_key_values") if accepts_argument(model, n)), None)
        if self.cache_argument is None or not accepts_argument(model, "position_ids"):
            raise ValueError(
                f"kv_cache={mode!r} needs a transformers model whose forward takes `position_ids` and a KV cache "
                f"(`cache` / `past_key_values`); {type(unwrap_model(model)).__name__} does not."
            )
        config = unwrap_model(model).config
        layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(f"kv_cache={mode!r} supports full-attention layers only, not {sorted(layer_types)}.")
        self.model, self.mode, self.config = model, mode, config
        self.shift = logits_shift(model)
        self.cache = None

    def _window(self, keep: torch.Tensor, position_ids: torch.Tensor, width: int) -> tuple[int, int]:
        sources = shifted_source_positions(keep.to(position_ids.device), position_ids, self.shift)
        low = int(sources.min())
        return low, (int(keep.max()) + 1 if self.mode == "dual" else width)

    def refresh(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        keep: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The full forward's logits at ``keep`` (as `forward_logits`); keeps the keys and values for `logits`.

        ``rows`` (1-D batch indices, increasing) restricts the forward, and the cache, to those rows of the canvas.
        """
        from transformers import DynamicCache

        if rows is not None:
            input_ids, attention_mask = input_ids[rows], attention_mask[rows]
        width = input_ids.shape[1]
        position_ids = position_ids_from_mask(attention_mask)
        cache = DynamicCache(config=self.config)
        kwargs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": True,
            self.cache_argument: cache,
        }
        request, index = _logit_request(keep, position_ids, self.shift, width)
        logits = _call_for_logits(self.model, kwargs, request, index)
        if cache.get_seq_length() != width:
            raise RuntimeError(
                "The model did not fill the KV cache (gradient checkpointing in training mode with gradients enabled "
                "drops it); decode under torch.no_grad() or without a cache."
            )
        low, high = self._window(keep, position_ids, width)
        self.cached = low if self.mode == "prefix" else width  # positions [0, cached) stay in the cache
        if self.cached < width:
            cache.crop(self.cached - width)
        past_mask = attention_mask[:, : self.cached].clone()
        past_mask[:, low:high] = 0  # stale keys/values of the window's positions (dual): the fresh ones are appended
        self.cache, self.window, self.keep = cache, (low, high), keep
        self.rows = rows if rows is not None else torch.arange(input_ids.shape[0], device=input_ids.device)
        self.mask = torch.cat([past_mask, attention_mask[:, low:high]], dim=1)
        self.position_ids = position_ids[:, low:high]
        self.request, self.index = _logit_request(keep, position_ids, self.shift, width, offset=low)
        return logits

    def _select_rows(self, rows: torch.Tensor) -> None:
        """Drop the cached rows not in ``rows`` (a subset of the cached rows: rows only leave between refreshes)."""
        if len(rows) == len(self.rows):
            return
        within = torch.searchsorted(self.rows, rows)
        if not torch.equal(self.rows[within.clamp(max=len(self.rows) - 1)], rows):
            raise RuntimeError("BlockKVCache rows can only shrink between refreshes.")
        self.cache.batch_select_indices(within)
        self.mask, self.position_ids, self.rows = self.mask[within], self.position_ids[within], rows
        if self.index is not None:
            self.index = self.index[within]

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        keep: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits at ``keep`` from a forward of the query window only; every other position comes from the cache.

        ``keep`` and the canvas layout must be those of the last `refresh` (same block; the refresh's padding mask is
        used). ``rows`` (1-D batch indices, increasing; None: the rows of the last refresh) computes only those rows;
        rows left out are dropped from the cache until the next refresh.
        """
        if self.cache is None or not torch.equal(keep, self.keep):
            raise RuntimeError("BlockKVCache.logits needs a refresh for these positions first.")
        if rows is not None:
            self._select_rows(rows)
        low, high = self.window
        kwargs = {
            "input_ids": input_ids[:, low:high]
            if len(self.rows) == len(input_ids)
            else input_ids[self.rows, low:high],
            "attention_mask": self.mask,
            "position_ids": self.position_ids,
            "use_cache": True,
            self.cache_argument: self.cache,
        }
        logits = _call_for_logits(self.model, kwargs, self.request, self.index)
        added = self.cache.get_seq_length() - self.cached
        if added != high - low:
            raise RuntimeError(f"The KV cache grew by {added} positions instead of {high - low}.")
        self.cache.crop(-added)
        return logits


def attends_bidirectionally(model) -> bool:
    """Whether a model's attention is bidirectional, as a masked diffusion LM's must be.

    Read from the (text) config's ``is_causal`` where it says so; transformers' own classes are causal when the field
    is absent. For other models (remote code) a cheap probe decides: changing the last of three tokens must change
    the logits at the first position.
    """
    inner = unwrap_model(model) if isinstance(model, nn.Module) else model
    config = getattr(inner, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    is_causal = getattr(text_config, "is_causal", None)
    if is_causal is not None:
        return not is_causal
    if type(inner).__module__.startswith("transformers."):
        return False
    device = next(inner.parameters()).device
    vocab = getattr(text_config, "vocab_size", None) or 3
    ids = torch.tensor([[0, 1 % vocab, 1 % vocab], [0, 1 % vocab, 2 % vocab]], device=device)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            logits = forward_logits(inner, ids, torch.ones_like(ids), keep=torch.tensor([0], device=device))
    finally:
        inner.train(was_training)
    return not torch.allclose(logits[0].float(), logits[1].float())


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


def resolve_eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS, then the model's generation config's and config's.

    Chat models often end a turn with a token (``<|eot_id|>``, ``<|im_end|>``) other than the one they pad with;
    all of them count. Order is kept and duplicates dropped; the list is empty when nobody defines an EOS.
    """
    inner = unwrap_model(model) if isinstance(model, nn.Module) else model
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    for source in (getattr(inner, "generation_config", None), getattr(inner, "config", None)):
        ids = getattr(source, "eos_token_id", None)
        candidates.extend(ids if isinstance(ids, (list, tuple)) else [ids])
    resolved: list[int] = []
    for token_id in candidates:
        if token_id is not None and int(token_id) not in resolved:
            resolved.append(int(token_id))
    return resolved


def mask_token_problems(model, tokenizer, mask_token_id: int, setting: str = "mask_token_id") -> list[str]:
    """What makes ``mask_token_id`` unusable as the model's [MASK] (empty when it is fine), each with its fix.

    It must lie in the vocabulary, differ from the pad and EOS tokens (else masked positions and real tokens are
    indistinguishable), and equal the mask token the tokenizer or model config declares, if any (another id decodes
    a real token where the model expects masks: silently wrong). ``setting`` names the option in the messages.
    """
    inner = unwrap_model(model)
    vocab_size = inner.config.get_text_config().vocab_size
    fix = f"set {setting} to the model's [MASK] id (126336 for LLaDA, 151666 for Dream) or leave it unset"
    if not 0 <= mask_token_id < vocab_size:
        return [f"{setting}={mask_token_id} is outside the model's vocabulary (ids 0 to {vocab_size - 1}); {fix}."]
    if mask_token_id == getattr(tokenizer, "pad_token_id", None) or mask_token_id in resolve_eos_token_ids(
        inner, tokenizer
    ):
        role = "the pad token" if mask_token_id == getattr(tokenizer, "pad_token_id", None) else "an EOS token"
        return [
            f"{setting}={mask_token_id} is also {role}: masked positions and real tokens would be indistinguishable; "
            f"{fix}."
        ]
    declared = getattr(tokenizer, "mask_token_id", None)
    if declared is None:
        declared = getattr(inner.config, "mask_token_id", None)
    if declared is not None and mask_token_id != declared:
        return [f"{setting}={mask_token_id} is not the model's mask token ({declared}); {fix}."]
    return []
