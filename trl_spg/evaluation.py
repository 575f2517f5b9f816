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
) -> list[str]:
    """Decode ``prompts`` in left-padded batches; returns each completion's text up to its first EOS."""
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
            )
            keep = completion_mask_from_ids(completion_ids, eos_ids).bool()
            for ids, row in zip(completion_ids.cpu(), keep.cpu()):
                outputs.append(tokenizer.decode(ids[row], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return outputs


def sudoku_accuracy(completions: Sequence[str], puzzles: Sequence[str], solutions: Sequence[str]) -> dict:
    """The paper's Sudoku accuracy: correct empty cells / empty cells, pooled over all puzzles.

    ``stderr`` is the standard error of that ratio estimate over puzzles (a ratio of means:
    ``sqrt(sum_p (c_p - acc * n_p)^2) / sum_p n_p``), which accounts for cells of one puzzle being correlated.
    """
    counts = [
        cell_accuracy(parse_answer(text), puzzle, solution)
        for text, puzzle, solution in zip(completions, puzzles, solutions, strict=True)
    ]
    correct = sum(c for c, _ in counts)
    total = sum(n for _, n in counts)
    accuracy = correct / total if total else 0.0
    n = len(counts)
    residual = sum((c - accuracy * m) ** 2 for c, m in counts)
    stderr = math.sqrt(residual * n / max(n - 1, 1)) / total if total else 0.0
    return {"accuracy": accuracy, "stderr": stderr, "correct": correct, "empty_cells": total, "puzzles": n}


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
