"""Monte Carlo masks for SPG's likelihood bounds.

Every function here is a pure tensor function: it takes the prompt/completion layout of a batch and an explicit
``torch.Generator`` and returns boolean masks, vectorised over the batch and the Monte Carlo samples.

Layout. A batch holds ``B`` left-padded prompts of width ``P`` (``prompt_mask`` is 1 on real tokens, 0 on pads)
followed by completions of width ``C``. ``completion_mask`` is 1 on the completion tokens up to and including the
first EOS; its row sum is the completion length ``L_j``. For each completion we draw ``m`` masks and return

* ``noised``  (B, m, P + C): positions replaced by the mask token in the model input;
* ``scored``  (B, m, C):     masked completion tokens whose log-probability enters the bounds.

Positions after the first EOS are always noised and never scored; prompt pads are never noised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASKING_STRATEGIES = ("all", "random", "block_all", "block_random")
#: How the ``m`` masks of one completion choose their blocks (the ``block_*`` strategies).
BLOCK_SAMPLINGS = ("independent", "stratified")


@dataclass
class MonteCarloMasks:
    """Masks for ``m`` Monte Carlo samples per completion (see the module docstring for shapes)."""

    noised: torch.Tensor
    scored: torch.Tensor


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """U[0, 1) draws on the generator's device, returned on ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).to(device)


def uniform_count(low: torch.Tensor, high: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """An integer drawn uniformly from ``{low, ..., high}`` elementwise, from uniforms ``u`` in [0, 1)."""
    span = (high - low + 1).clamp(min=1)
    return low + torch.minimum((u * span).long(), span - 1)


def count_range(n: torch.Tensor, min_t: float, max_t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of the number of masked tokens among ``n``: ``max(1, floor(n min_t)) .. min(floor(n max_t), n)``.

    The upper bound is raised to the lower one when ``max_t`` is so small that the range would be empty.
    """
    low = torch.floor(n.double() * min_t).long().clamp(min=1)
    high = torch.minimum(torch.floor(n.double() * max_t).long(), n)
    return low, torch.maximum(high, low)


def choose_k_of(candidates: torch.Tensor, k: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Choose ``k`` positions uniformly at random among ``candidates`` along the last dimension.

    ``candidates`` is boolean (..., N), ``k`` has shape (...) and ``u`` holds U[0, 1) keys of shape (..., N).
    Non-candidates get a key above every candidate, so the ``k`` smallest keys are a uniform ``k``-subset of the
    candidates (no per-row loop: rank every key with one double argsort).
    """
    keys = torch.where(candidates, u, torch.full_like(u, 2.0))
    ranks = keys.argsort(dim=-1).argsort(dim=-1)
    return candidates & (ranks < k.unsqueeze(-1))


def stratified_blocks(num_blocks: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Blocks of the ``m`` masks of each row without replacement: (B, m) from ``num_blocks`` (B,) and uniforms (B, m).

    Mask ``j < n`` takes a uniformly chosen block among the ``n - j`` its row's earlier masks left (the ``j``-th entry
    of a uniform random permutation of the ``n`` content blocks); mask ``j >= n`` repeats mask ``j mod n``. Mask 0
    gets the block the independent choice would draw from the same uniform, so a single mask or a single block gives
    the independent choice's masks exactly. Rows without content count one block.
    """
    num_blocks = num_blocks.clamp(min=1)
    batch, num_masks = u.shape
    positions = torch.arange(int(num_blocks.max()) if batch else 1, device=u.device)
    free = positions < num_blocks[:, None]
    blocks = torch.zeros(batch, num_masks, dtype=torch.long, device=u.device)
    for j in range(num_masks):
        fresh = j < num_blocks
        remaining = (num_blocks - j).clamp(min=1)
        rank = uniform_count(torch.zeros_like(remaining), remaining - 1, u[:, j])
        order = free.long().cumsum(-1) - 1  # rank of each free block among the free ones
        pick = (free & (order == rank[:, None])).long().argmax(-1)
        repeat = blocks.gather(1, (j % num_blocks)[:, None])[:, 0]
        blocks[:, j] = torch.where(fresh, pick, repeat)
        free = free & ~((positions == pick[:, None]) & fresh[:, None])
    return blocks


def sample_masks(
    prompt_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    num_masks: int,
    strategy: str = "block_random",
    block_length: int = 32,
    min_t: float = 0.0,
    max_t: float = 1.0,
    p_mask_prompt: float = 0.0,
    block_sampling: str = "stratified",
    tail_visible: bool = False,
    generator: torch.Generator,
) -> MonteCarloMasks:
    """Draw ``num_masks`` Monte Carlo masks per completion with one of SPG's strategies.

    Strategies (``L`` = completion length, blocks of ``block_length`` tile the completion from its first token):

    * ``all``: the whole completion is masked (one-step estimate, ``num_masks`` must be 1).
    * ``random``: ``k ~ U{max(1, floor(L min_t)) .. min(floor(L max_t), L)}`` completion tokens, a uniformly random
      ``k``-subset. With ``min_t=0, max_t=1`` the bound estimators are unbiased for the exact ELBO / EUBO terms.
    * ``block_all``: a block ``b`` drawn uniformly among the blocks holding content; block ``b`` and every later
      position are masked, earlier blocks are clean.
    * ``block_random``: as ``block_all``, but inside block ``b`` only ``k ~ U{count_range(n_b)}`` uniformly chosen
      of its ``n_b`` content tokens are masked; later blocks stay fully masked.

    Block choice (``block_sampling``, block strategies only): with ``"independent"`` each of the ``m`` masks draws its
    block uniformly and independently; with ``"stratified"`` the masks of one completion take the blocks of one
    uniformly random permutation of its ``n`` content blocks in turn (mask ``j`` gets ``perm[j mod n]``, see
    `stratified_blocks`), so they cover ``min(m, n)`` different blocks and no block is used twice before every block
    has been used once. Each mask's block is still uniform over the content blocks, so every per-mask term, and the
    ELBO estimate (their mean), has the same expectation under both choices; only the dependence between the ``m``
    masks changes. Both consume the same random numbers, and with one mask or one content block they coincide.

    Prompt perturbation: every clean token before the chosen block (prompt tokens, and with the block strategies
    the clean earlier completion blocks) is masked independently with probability ``p_mask_prompt``; masked
    completion tokens among them are scored like any other masked token.

    The tail (columns after a completion's ``L`` tokens, e.g. what the rollout generated after its first EOS) is
    never scored; it is masked in the input unless ``tail_visible`` (the SPG reference code's convention).
    """
    if strategy not in MASKING_STRATEGIES:
        raise ValueError(f"Unknown masking strategy {strategy!r}; choose one of {MASKING_STRATEGIES}.")
    if strategy == "all" and num_masks != 1:
        raise ValueError("Masking strategy 'all' masks the whole completion, so use num_masks=1.")
    if num_masks < 1 or block_length < 1:
        raise ValueError("num_masks and block_length must be positive.")
    if not 0.0 <= min_t <= max_t <= 1.0:
        raise ValueError(f"Need 0 <= min_t <= max_t <= 1, got min_t={min_t}, max_t={max_t}.")
    if block_sampling not in BLOCK_SAMPLINGS:
        raise ValueError(f"Unknown block sampling {block_sampling!r}; choose one of {BLOCK_SAMPLINGS}.")

    device = completion_mask.device
    batch, width = completion_mask.shape
    shape = (batch, num_masks, width)
    position = torch.arange(width, device=device).expand(shape)
    length = completion_mask.long().sum(-1)[:, None].expand(batch, num_masks)  # (B, m)
    content = position < length[..., None]

    if strategy == "all":
        masked = content
        before = torch.zeros_like(content)
    elif strategy == "random":
        low, high = count_range(length, min_t, max_t)
        k = uniform_count(low, high, _uniform((batch, num_masks), generator, device))
        masked = choose_k_of(content, k, _uniform(shape, generator, device))
        before = torch.zeros_like(content)
    else:
        num_blocks = (length + block_length - 1) // block_length
        u = _uniform(num_blocks.shape, generator, device)  # one uniform per mask under both block choices
        if block_sampling == "stratified":
            block = stratified_blocks(num_blocks[:, 0], u)
        else:
            block = uniform_count(torch.zeros_like(num_blocks), num_blocks - 1, u)
        start = (block * block_length)[..., None]
        in_block = (position >= start) & (position < start + block_length)
        after = position >= start + block_length
        before = position < start
        if strategy == "block_all":
            masked = content & (in_block | after)
        else:
            block_content = content & in_block
            low, high = count_range(block_content.sum(-1), min_t, max_t)
            k = uniform_count(low, high, _uniform((batch, num_masks), generator, device))
            chosen = choose_k_of(block_content, k, _uniform(shape, generator, device))
            masked = chosen | (content & after)

    prompt_real = prompt_mask.bool()[:, None, :].expand(batch, num_masks, -1)
    if p_mask_prompt > 0:
        flip_prompt = _uniform(prompt_real.shape, generator, device) < p_mask_prompt
        flip_completion = _uniform(shape, generator, device) < p_mask_prompt
        noised_prompt = prompt_real & flip_prompt
        masked = masked | (content & before & flip_completion)
    else:
        noised_prompt = torch.zeros_like(prompt_real)

    noised = torch.cat([noised_prompt, masked if tail_visible else masked | ~content], dim=-1)
    return MonteCarloMasks(noised=noised, scored=masked & content)


def one_step_masks(
    prompt_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    p_mask_prompt: float,
    num_draws: int = 1,
    tail_visible: bool = False,
    generator: torch.Generator,
) -> MonteCarloMasks:
    """d1's one-step masks: the whole completion masked, each real prompt token masked with ``p_mask_prompt``.

    ``num_draws`` independent draws, (B, num_draws, P + C): one per inner iteration of diffu-GRPO, so that each
    iteration scores the completions against a fresh perturbation of the prompt (Zhao et al., 2025, "d1: Scaling
    Reasoning in Diffusion Large Language Models via Reinforcement Learning", arXiv 2504.12216). Each draw is
    `sample_masks` with strategy ``all``.
    """
    draws = [
        sample_masks(
            prompt_mask,
            completion_mask,
            num_masks=1,
            strategy="all",
            p_mask_prompt=p_mask_prompt,
            tail_visible=tail_visible,
            generator=generator,
        )
        for _ in range(num_draws)
    ]
    return MonteCarloMasks(
        noised=torch.cat([draw.noised for draw in draws], dim=1),
        scored=torch.cat([draw.scored for draw in draws], dim=1),
    )


def apply_masks(input_ids: torch.Tensor, noised: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """Replace noised positions by ``mask_token_id``: (B, N) ids and (B, m, N) masks give (B, m, N) ids."""
    ids = input_ids[:, None, :].expand_as(noised)
    return torch.where(noised, torch.full_like(ids, mask_token_id), ids)
