"""Batched diffusion decoding of prompts to completion texts (left padding, cut at the first EOS).

With ``raw=True`` `generate_completions` also returns each generation as the SPG paper's evaluation decodes it,
for its grader: all ``gen_length`` tokens, special tokens kept (EOS, padding, any mask left).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..decoding import DecodingConfig
from ..modeling import resolve_eos_token_ids, resolve_mask_token_id
from ..sampler import completion_mask_from_ids, diffusion_generate


def render_prompts(tokenizer, prompts: Sequence) -> list[str]:
    """Prompt texts: plain strings as they are, conversations through the chat template (as TRL does).

    A conversation ending with an assistant message is continued (``continue_final_message``): the reply starts
    with that message's text, as in the paper's evaluation prompts that open the reply with ``<reasoning>``.
    """
    texts = []
    for p in prompts:
        if isinstance(p, str):
            texts.append(p)
            continue
        prefilled = bool(p) and p[-1].get("role") == "assistant"
        texts.append(
            tokenizer.apply_chat_template(
                p, tokenize=False, add_generation_prompt=not prefilled, continue_final_message=prefilled
            )
        )
    return texts


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: Sequence,
    decoding: DecodingConfig,
    *,
    mask_token_id: int | None = None,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    progress=None,
    raw: bool = False,
) -> list[str] | tuple[list[str], list[str]]:
    """Decode ``prompts`` in left-padded batches of ``batch_size``; each completion's text up to its first EOS.

    With ``raw`` the result is ``(completions, raw_texts)``, ``raw_texts`` the whole generations decoded with their
    special tokens (what the paper's grader reads). ``progress`` (a tqdm bar, optional) advances by the prompts of
    each batch.
    """
    mask_id = resolve_mask_token_id(model, tokenizer, mask_token_id)
    eos_ids = resolve_eos_token_ids(model, tokenizer)
    texts = render_prompts(tokenizer, prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs, raw_texts = [], []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                padding_side="left",
                add_special_tokens=False,
            )
            completion_ids = diffusion_generate(
                model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                decoding,
                mask_token_id=mask_id,
                # Batch compaction (`DecodingConfig.compact_batch`) changes the tokens after the first EOS, which
                # the raw texts keep: it is on for the cut completions only.
                eos_token_id=None if raw else eos_ids,
                generator=generator,
            )
            keep = completion_mask_from_ids(completion_ids, eos_ids).bool()
            for ids, row in zip(completion_ids.cpu(), keep.cpu()):
                outputs.append(tokenizer.decode(ids[row], skip_special_tokens=True))
                if raw:
                    raw_texts.append(tokenizer.decode(ids, skip_special_tokens=False))
            if progress is not None:
                progress.update(len(keep))
    finally:
        model.train(was_training)
    return (outputs, raw_texts) if raw else outputs
