"""Evaluation of a masked diffusion LM: batched greedy diffusion decoding and the paper's Sudoku accuracy.

Command line (any task of `trl_spg.tasks`, the paper's protocol; see `trl_spg.task_evaluation`):

    python -m trl_spg.evaluation --task gsm8k --model_name_or_path PATH_OR_ID [--adapter PATH] \
        --gen_lengths 128 256 512 [--output_dir outputs/eval]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .modeling import resolve_eos_token_ids, resolve_mask_token_id
from .sampler import completion_mask_from_ids, diffusion_generate
from .tasks.sudoku import cell_accuracy, parse_answer


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
    *,
    gen_length: int,
    block_length: int,
    steps: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    mask_token_id: int | None = None,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    decoding: str = "fixed",
    threshold: float = 0.9,
    min_tokens_per_step: int | None = None,
    kv_cache: str = "none",
    cache_refresh_every: int | None = None,
) -> list[str]:
    """Decode ``prompts`` in left-padded batches; returns each completion's text up to its first EOS.

    ``decoding``, ``threshold``, ``min_tokens_per_step``, ``kv_cache`` and ``cache_refresh_every`` are
    `diffusion_generate`'s opt-in fast modes; their defaults are the exact sampler.
    """
    mask_id = resolve_mask_token_id(model, tokenizer, mask_token_id)
    eos_ids = resolve_eos_token_ids(model, tokenizer)
    texts = render_prompts(tokenizer, prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
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
                mask_token_id=mask_id,
                gen_length=gen_length,
                block_length=block_length,
                steps=steps,
                temperature=temperature,
                remasking=remasking,
                generator=generator,
                decoding=decoding,
                threshold=threshold,
                min_tokens_per_step=min_tokens_per_step,
                kv_cache=kv_cache,
                cache_refresh_every=cache_refresh_every,
            )
            keep = completion_mask_from_ids(completion_ids, eos_ids).bool()
            for ids, row in zip(completion_ids.cpu(), keep.cpu()):
                outputs.append(tokenizer.decode(ids[row], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return outputs


def ratio_stderr(
    numerators: Sequence[float], denominators: Sequence[float], clusters: Sequence | None = None
) -> float:
    """Standard error of the ratio estimate ``r = sum(numerators) / sum(denominators)`` over independent units.

    Each position is one unit (a puzzle); with ``clusters`` the units sharing a label are summed into one cluster
    first (a solution grid), so correlated units do not count as independent. With ``y_g, x_g`` the sums of cluster
    ``g`` and ``G`` clusters (the linearised ratio-of-means estimate):

        SE = sqrt(G / (G - 1) * sum_g (y_g - r * x_g)^2) / sum_g x_g

    0.0 when the denominators sum to 0; with a single cluster the ``G / (G - 1)`` factor is left out.
    """
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators but {len(denominators)} denominators")
    if clusters is None:
        pairs = list(zip(numerators, denominators))
    else:
        if len(clusters) != len(numerators):
            raise ValueError(f"{len(clusters)} cluster labels for {len(numerators)} units")
        sums: dict = {}
        for y, x, label in zip(numerators, denominators, clusters):
            total_y, total_x = sums.get(label, (0.0, 0.0))
            sums[label] = (total_y + y, total_x + x)
        pairs = list(sums.values())
    total = sum(x for _, x in pairs)
    if not total:
        return 0.0
    ratio = sum(y for y, _ in pairs) / total
    count = len(pairs)
    residual = sum((y - ratio * x) ** 2 for y, x in pairs)
    return math.sqrt(residual * count / max(count - 1, 1)) / total


def _cell_counts(completions: Sequence[str], puzzles: Sequence[str], solutions: Sequence[str]) -> list[tuple]:
    return [
        cell_accuracy(parse_answer(text), puzzle, solution)
        for text, puzzle, solution in zip(completions, puzzles, solutions, strict=True)
    ]


def sudoku_accuracy(completions: Sequence[str], puzzles: Sequence[str], solutions: Sequence[str]) -> dict:
    """The paper's Sudoku accuracy: correct empty cells / empty cells, pooled over all puzzles.

    Two standard errors of that ratio (`ratio_stderr`): ``stderr`` over puzzles (cells of one puzzle are
    correlated, puzzles are taken as independent) and ``stderr_grid`` over solution grids (puzzles made from one
    grid are correlated too; the safer figure when a grid has several puzzles). ``grids`` counts the grids.
    """
    counts = _cell_counts(completions, puzzles, solutions)
    correct = sum(c for c, _ in counts)
    total = sum(n for _, n in counts)
    return {
        "accuracy": correct / total if total else 0.0,
        "stderr": ratio_stderr([c for c, _ in counts], [n for _, n in counts]),
        "stderr_grid": ratio_stderr([c for c, _ in counts], [n for _, n in counts], clusters=solutions),
        "correct": correct,
        "empty_cells": total,
        "puzzles": len(counts),
        "grids": len(set(solutions)),
    }


def paired_stderr(
    before: Sequence[str],
    after: Sequence[str],
    puzzles: Sequence[str],
    solutions: Sequence[str],
    *,
    by_grid: bool = False,
) -> float:
    """Standard error of the accuracy difference ``after - before`` on the same puzzles (paired).

    ``before`` / ``after`` are the two models' completions of the same puzzles. The unit is the per-puzzle
    difference of correct cells (with its empty cells as denominator), or with ``by_grid`` the per-grid sum of those
    differences, through `ratio_stderr`.
    """
    counts_before = _cell_counts(before, puzzles, solutions)
    counts_after = _cell_counts(after, puzzles, solutions)
    diffs = [a - b for (a, _), (b, _) in zip(counts_after, counts_before, strict=True)]
    return ratio_stderr(diffs, [n for _, n in counts_before], clusters=solutions if by_grid else None)


def evaluate_sudoku(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    prompt_style: str = "compact",
    examples: Sequence[dict] = (),
    gen_length: int,
    block_length: int,
    steps: int,
    batch_size: int = 64,
    mask_token_id: int | None = None,
) -> dict:
    """Greedy (temperature 0) Sudoku accuracy of ``model`` on ``rows`` (dicts with ``puzzle`` and ``solution``)."""
    from .tasks.sudoku import compact_prompt, instruct_prompt

    if prompt_style == "compact":
        prompts = [compact_prompt(row["puzzle"]) for row in rows]
    else:
        prompts = [instruct_prompt(row["puzzle"], examples) for row in rows]
    completions = generate_completions(
        model,
        tokenizer,
        prompts,
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        temperature=0.0,
        mask_token_id=mask_token_id,
        batch_size=batch_size,
    )
    result = sudoku_accuracy(completions, [r["puzzle"] for r in rows], [r["solution"] for r in rows])
    result["completions"] = completions
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """The evaluation command line: see `trl_spg.task_evaluation` (any task; Sudoku when ``--task`` is omitted)."""
    from .task_evaluation import main as task_main

    return task_main(argv)


if __name__ == "__main__":
    main()
