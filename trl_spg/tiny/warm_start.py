"""Masked-diffusion supervised fine-tuning (the LLaDA SFT objective) as a small warm start before RL.

RL on a masked diffusion LM only works once the policy already produces well-formed completions some of the time.
`diffusion_sft` gets it there: it fine-tunes any model that maps `(input_ids, attention_mask[, position_ids])` to
`.logits` on prompt -> completion pairs, masking only completion tokens, exactly as in LLaDA's SFT stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import get_scheduler
from trl.trainer.utils import pad

from ..modeling import forward_logits, resolve_mask_token_id
from ..scoring import token_logprobs

__all__ = ["LR_SCHEDULES", "diffusion_sft"]

logger = logging.getLogger(__name__)

#: Lower bound of the masking ratio t ~ U(eps, 1]: keeps the 1/t loss weight finite.
MASK_EPS = 1e-3

#: Accepted ``lr_schedule`` values: `transformers.get_scheduler` names, used without warm-up. At optimizer step
#: ``step`` (1-based) of ``total`` the learning rate is multiplied by 1 (constant), ``1 - (step - 1) / total``
#: (linear) or ``0.5 * (1 + cos(pi * (step - 1) / total))`` (cosine).
LR_SCHEDULES = ("constant", "linear", "cosine")


def _encode_completions(
    tokenizer, completions: Sequence[str], completion_length: int, eos_token_id: int
) -> torch.Tensor:
    """Tokenize completions, append EOS and right-pad with EOS to exactly `completion_length` tokens.

    The EOS tail is trained like any other target (as in LLaDA SFT), which is how the model learns to stop: at
    sampling time everything after the first EOS is dropped.

    Raises:
        ValueError: if a completion plus its EOS does not fit in `completion_length`.
    """
    rows = []
    for index, text in enumerate(completions):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + 1 > completion_length:
            raise ValueError(
                f"Completion {index} has {len(ids)} tokens; with its EOS it needs {len(ids) + 1} > "
                f"completion_length={completion_length}. Increase `completion_length` or shorten the completion."
            )
        rows.append(ids + [eos_token_id] * (completion_length - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def _encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Tokenize prompts as given (no special tokens added: format them, e.g. with the chat template, beforehand)."""
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]


def _left_pad(sequences: Sequence[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to a common length with TRL's `pad`; returns `(input_ids, attention_mask)`.

    Left padding puts every completion at the same (right-aligned) columns, so the completion block is simply the
    last `completion_length` columns of the batch.
    """
    rows = [torch.tensor(seq, dtype=torch.long) for seq in sequences]
    input_ids = pad(rows, padding_value=pad_token_id, padding_side="left")
    attention_mask = pad([torch.ones_like(row) for row in rows], padding_value=0, padding_side="left")
    return input_ids, attention_mask


def _index_stream(num_examples: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Yield batches of example indices: shuffled epochs concatenated, so every example is seen equally often."""
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while buffer.numel() < batch_size:
            buffer = torch.cat(
                [buffer, torch.randperm(num_examples, generator=generator, device=generator.device).cpu()]
            )
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


def _masked_diffusion_loss(
    logits: torch.Tensor, targets: torch.Tensor, is_masked: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """LLaDA SFT loss for one batch.

    loss = 1 / (B * L) * sum_i sum_{j : completion token j of sample i is masked} CE(logits_ij, target_ij) / t_i

    with B the batch size and L = completion_length (EOS padding included). Dividing by t_i makes this an unbiased
    estimate of the negative ELBO of the completion given the prompt.

    Args:
        logits: `(B, L, V)` logits at the completion positions.
        targets: `(B, L)` clean completion tokens.
        is_masked: `(B, L)` bool, which completion tokens were replaced by the mask token.
        t: `(B,)` masking ratios the masks were drawn with.
    """
    token_ce = -token_logprobs(logits, targets)
    weighted = token_ce * is_masked.to(token_ce.dtype) / t[:, None]
    return weighted.sum() / targets.numel()


def diffusion_sft(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    completions: list[str],
    *,
    completion_length: int,
    mask_token_id: int | None = None,
    num_steps: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    lr_schedule: str = "constant",
    generator: torch.Generator,
    log_every: int | None = 10,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Fine-tune a masked diffusion LM on prompt -> completion pairs with the LLaDA SFT objective.

    Each step draws `batch_size` pairs (shuffled epochs), builds `[left-padded prompt | completion + EOS padding]`
    with the completion padded by EOS to exactly `completion_length` tokens, samples t ~ U(eps, 1] per sample
    (eps = 1e-3), replaces each completion token independently with the mask token with probability t (the prompt is
    never masked), and minimises

        loss = sum over masked completion tokens of CE / t, divided by (batch_size * completion_length).

    The forward pass gets `attention_mask` and, when the model accepts them, `position_ids = cumsum(mask) - 1`
    clamped at 0 so left padding does not shift positions. Optimisation is AdamW with gradient-norm clipping at 1.0,
    over parameters with `requires_grad` (so adapters work). The model is in train mode during the call and its
    previous mode is restored afterwards. All randomness (batch order, t, masks) comes from `generator`.

    Args:
        model: Any module mapping `(input_ids, attention_mask[, position_ids])` to an output with `.logits`.
        tokenizer: Callable tokenizer with `eos_token_id` (and `pad_token_id`; EOS is used when it is missing).
            Prompts and completions are encoded without added special tokens, so format prompts beforehand.
        prompts: Prompt texts.
        completions: Target completion texts, aligned with `prompts`.
        completion_length: Number of completion positions (completion + EOS tail).
        mask_token_id: Mask token id; defaults to `tokenizer.mask_token_id`, then `model.config.mask_token_id`.
        num_steps: Optimizer steps.
        batch_size: Pairs per step.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: ``"constant"``, or ``"linear"`` / ``"cosine"`` decay from `learning_rate` at the first step
            towards 0 after the last (`transformers.get_scheduler` with no warm-up).
        generator: Source of all randomness; its device is where random numbers are drawn.
        log_every: Log the mean loss of the last `log_every` steps at INFO level; `None` or 0 disables logging.
        callback: Called as `callback(step, loss)` after every optimizer step (step counts from 1).

    Returns:
        The loss of every step, in order.

    Raises:
        ValueError: on mismatched / empty inputs, a completion that does not fit, or no mask token id.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions.")
    if not prompts:
        raise ValueError("`prompts` is empty.")
    if completion_length < 1 or num_steps < 0 or batch_size < 1:
        raise ValueError("completion_length and batch_size must be >= 1 and num_steps >= 0.")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {lr_schedule!r}.")
    mask_id = resolve_mask_token_id(model, tokenizer, mask_token_id)
    eos_token_id = getattr(tokenizer, "eos_token_id", None)
    if eos_token_id is None:
        raise ValueError("The tokenizer has no `eos_token`; it is needed to terminate and pad completions.")
    pad_token_id = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else eos_token_id

    # Encode everything once up front: also surfaces a too-long completion before any training happens.
    completion_ids = _encode_completions(tokenizer, completions, completion_length, eos_token_id)
    prompt_ids = _encode_prompts(tokenizer, prompts)

    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    # No warm-up; the learning rate of step k (1-based) is set from the schedule at k - 1 of `num_steps`.
    scheduler = get_scheduler(lr_schedule, optimizer, num_warmup_steps=0, num_training_steps=num_steps)
    batches = _index_stream(len(prompts), batch_size, generator)

    losses: list[float] = []
    was_training = model.training
    model.train()
    try:
        for step in range(1, num_steps + 1):
            index = next(batches)
            prompt_block, prompt_mask = _left_pad([prompt_ids[i] for i in index.tolist()], pad_token_id)
            targets = completion_ids[index]

            # Draw on the generator's device (CPU generators cannot feed CUDA sampling), then move.
            t = MASK_EPS + (1.0 - MASK_EPS) * torch.rand(batch_size, generator=generator, device=generator.device)
            u = torch.rand(targets.shape, generator=generator, device=generator.device)
            t, is_masked = t.to(device), (u < t[:, None]).to(device)
            targets = targets.to(device)
            noisy = torch.where(is_masked, torch.full_like(targets, mask_id), targets)

            input_ids = torch.cat([prompt_block.to(device), noisy], dim=1)
            attention_mask = torch.cat([prompt_mask.to(device), torch.ones_like(noisy)], dim=1)
            keep = torch.arange(input_ids.shape[1] - completion_length, input_ids.shape[1], device=device)
            logits = forward_logits(model, input_ids, attention_mask, keep=keep)
            loss = _masked_diffusion_loss(logits, targets, is_masked, t)

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
            optimizer.step()
            scheduler.step()

            losses.append(loss.item())
            if log_every and step % log_every == 0:
                recent = losses[-log_every:]
                logger.info("diffusion_sft step %d/%d loss %.4f", step, num_steps, sum(recent) / len(recent))
            if callback is not None:
                callback(step, losses[-1])
    finally:
        model.train(was_training)
    return losses
