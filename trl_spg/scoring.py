"""Token log-probabilities of completions under Monte Carlo masks: the model forward behind SPG's bounds.

`token_logprobs` is the log-softmax kernel (chunked forward, a backward that rebuilds the softmax from the logits);
`masked_token_logprobs` runs the masked copies of a batch through the model and applies it.
"""

from __future__ import annotations

import math

import torch
from trl.trainer.utils import entropy_from_logits

from .masking import MonteCarloMasks, apply_masks
from .modeling import forward_logits

# Rows of a logits tensor processed together by `token_logprobs`: on CPU about 2**21 elements (8 MiB in float32,
# so temporaries stay in cache and large allocations never page-fault), elsewhere a sixteenth of the rows.
_CPU_CHUNK_ELEMENTS = 2**21
_ACCELERATOR_CHUNKS = 16


def default_chunk_rows(num_rows: int, vocab_size: int, device: torch.device | str) -> int:
    """Rows of a (rows, V) logits tensor that `token_logprobs` normalises at once when no ``chunk_size`` is given.

    On CPU a chunk holds about 2**21 elements; on accelerators it is a sixteenth of the rows (at least one), so the
    float32 temporaries stay a small fraction of the logits while the number of kernel launches stays bounded.
    """
    if torch.device(device).type == "cpu":
        return max(1, _CPU_CHUNK_ELEMENTS // max(vocab_size, 1))
    return max(1, -(-num_rows // _ACCELERATOR_CHUNKS))


def _row_chunks(num_rows: int, chunk_rows: int):
    """Slices covering ``range(num_rows)`` in the fewest chunks of at most ``chunk_rows`` rows, of balanced sizes."""
    num_chunks = max(1, -(-num_rows // chunk_rows))
    bounds = [num_rows * i // num_chunks for i in range(num_chunks + 1)]
    return [slice(low, high) for low, high in zip(bounds[:-1], bounds[1:])]


class _TokenLogprobs(torch.autograd.Function):
    """``log softmax(logits)[targets]`` that keeps only the logits and one float per row for the backward.

    Forward: ``logit[target] - logsumexp(logits)`` row chunk by row chunk, so the only vocabulary-sized temporary is
    one chunk. Backward: ``grad * (onehot(target) - softmax)``, rebuilt chunk by chunk from the saved logits and
    log-normalisers; with ``inplace`` it is written over the saved logits (which nobody needs afterwards), so the
    backward adds no vocabulary-sized tensor either.
    """

    @staticmethod
    def forward(ctx, logits, targets, chunk_rows, inplace):
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        index = targets.reshape(-1, 1)
        lse = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
        for rows in _row_chunks(flat.shape[0], chunk_rows):
            torch.logsumexp(flat[rows].float(), -1, out=lse[rows])
        logps = flat.gather(-1, index).squeeze(-1).float() - lse
        # A reshape that had to copy gives a private buffer, which the backward may always overwrite.
        copied = flat.data_ptr() != logits.data_ptr()
        ctx.overwrite = copied or (inplace and not logits.is_leaf and logits._base is None)
        ctx.chunk_rows = chunk_rows
        ctx.logits_shape = logits.shape
        ctx.save_for_backward(flat, index, lse)
        return logps.reshape(targets.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        flat, index, lse = ctx.saved_tensors
        grad = grad_output.reshape(-1, 1).float()
        out = flat if ctx.overwrite else torch.empty_like(flat)
        in_float32 = flat.dtype == torch.float32
        for rows in _row_chunks(flat.shape[0], ctx.chunk_rows):
            if in_float32:
                chunk = torch.sub(flat[rows], lse[rows, None], out=out[rows])
            else:  # float32 arithmetic on a chunk-sized copy, rounded once into the logits' dtype
                chunk = flat[rows].float().sub_(lse[rows, None])
            chunk.exp_().mul_(grad[rows].neg())  # -grad * softmax
            chunk.scatter_add_(-1, index[rows], grad[rows])  # + grad at the target
            if not in_float32:
                out[rows].copy_(chunk)
        return out.reshape(ctx.logits_shape), None, None, None


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int | None = None,
    inplace_backward: bool = False,
) -> torch.Tensor:
    """``log softmax(logits)[targets]`` in float32, as ``logit[target] - logsumexp(logits)``.

    Gathers before normalising, and normalises ``chunk_size`` rows (positions) at a time (default:
    `default_chunk_rows`), so no second vocabulary-sized tensor is materialised in the forward; the backward keeps
    only the logits and one log-normaliser per row and rebuilds the softmax chunk by chunk. Values and gradients do
    not depend on ``chunk_size``.

    ``inplace_backward=True`` lets the backward write the gradient over ``logits`` itself instead of allocating a
    second logits-sized tensor. Pass it only for an intermediate tensor that nothing reads after the backward (such
    as a model's output consumed here alone); leaves and views are never overwritten, and autograd raises if another
    operation saved ``logits`` for its own backward.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    num_rows = math.prod(logits.shape[:-1])
    chunk_rows = chunk_size or default_chunk_rows(num_rows, logits.shape[-1], logits.device)
    return _TokenLogprobs.apply(logits, targets, int(chunk_rows), inplace_backward)


def masked_token_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    masks: MonteCarloMasks,
    mask_token_id: int,
    *,
    chunk_size: int | None = None,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``l_{i,tau} = log pi(x_i | z^tau, c)`` for every completion position: (B, m, C), float32.

    The ``m`` masked copies of each sequence go through the model as one batch of ``B * m`` rows; logits are only
    requested for the completion positions. Values at unscored positions are computed but carry no meaning. With
    ``with_entropy``, also the entropy of every predicted distribution (TRL's `entropy_from_logits`, no gradient): a
    pair.

    Memory: the logits are the only vocabulary-sized tensor. `token_logprobs` normalises them
    ``chunk_size`` positions at a time and, since nothing else reads them, writes their gradient over them in the
    backward.
    """
    batch, num_masks, _ = masks.noised.shape
    prompt_width, completion_width = prompt_ids.shape[1], completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    noisy = apply_masks(input_ids, masks.noised, mask_token_id).reshape(batch * num_masks, -1)
    attention_mask = torch.cat([prompt_mask.long(), torch.ones_like(completion_ids)], dim=1)
    attention_mask = attention_mask.repeat_interleave(num_masks, dim=0)
    keep = torch.arange(prompt_width, prompt_width + completion_width, device=input_ids.device)
    logits = forward_logits(model, noisy, attention_mask, keep=keep)
    entropies = None
    if with_entropy:  # before the backward, which overwrites the logits
        with torch.no_grad():
            entropies = entropy_from_logits(logits, chunk_size=chunk_size or 128).float()
    targets = completion_ids.repeat_interleave(num_masks, dim=0)
    token_logps = token_logprobs(logits, targets, chunk_size=chunk_size, inplace_backward=True)
    token_logps = token_logps.reshape(batch, num_masks, completion_width)
    if with_entropy:
        return token_logps, entropies.reshape(batch, num_masks, completion_width)
    return token_logps


def one_step_token_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    noised: torch.Tensor,
    mask_token_id: int,
    *,
    chunk_size: int | None = None,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """d1's one-step mean-field estimate ``log pi(o_k | q')`` of every completion token: (B, C), float32.

    One forward of the sequence with the whole completion masked and the prompt perturbed by ``noised`` (B, P + C),
    a draw of `trl_spg.masking.one_step_masks`; each completion token's log-probability is read off the logits at its
    position (Zhao et al., 2025, "d1: Scaling Reasoning in Diffusion Large Language Models via Reinforcement
    Learning", arXiv 2504.12216, Sec. 3). Their sum over the completion is d1's mean-field sequence log-likelihood,
    also wd1's (Tang et al., 2025, arXiv 2507.08838). With ``with_entropy``, the entropies too (no gradient).
    """
    completion_width = completion_ids.shape[1]
    content = torch.ones(noised.shape[0], 1, completion_width, dtype=torch.bool, device=noised.device)
    masks = MonteCarloMasks(noised=noised[:, None], scored=content)
    result = masked_token_logprobs(
        model,
        prompt_ids,
        prompt_mask,
        completion_ids,
        masks,
        mask_token_id,
        chunk_size=chunk_size,
        with_entropy=with_entropy,
    )
    if with_entropy:
        return result[0][:, 0], result[1][:, 0]
    return result[:, 0]
