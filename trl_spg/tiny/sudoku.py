"""The built-in tiny Sudoku policy: a small bidirectional Llama, warm-started by masked-diffusion SFT and cached.

It lets the Sudoku example run end to end on a laptop CPU: the warm start teaches the answer format and part of
the rules (leaving held-out accuracy well below 100% so that RL has room), and is saved under a cache folder keyed
by every setting that shapes it, so later runs skip it. The run's training settings are plain dicts
(`TRAINING_DEFAULTS` for any trainer, `SPG_DEFAULTS` for SPG only); the command line picks those that apply.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_spg.tasks.sudoku import compact_completion, compact_prompt, sudoku_split

from .model import SIMPLE_CHAT_TEMPLATE, build_char_tokenizer, build_tiny_diffusion_lm
from .warm_start import diffusion_sft

logger = logging.getLogger(__name__)

#: Completion positions of the compact format: ``<answer>`` + 16 digits + ``</answer>`` + EOS, plus one spare.
TINY_COMPLETION_LENGTH = 20

#: ``--model_name_or_path`` value of the command lines (`trl-spg`, the evaluation CLIs) for the built-in tiny policy.
TINY_MODEL = "tiny"

#: Training settings of the built-in tiny Sudoku run, for any trainer's config (flags and YAML override them).
TRAINING_DEFAULTS = dict(
    max_completion_length=TINY_COMPLETION_LENGTH,
    block_length=TINY_COMPLETION_LENGTH,
    diffusion_steps=TINY_COMPLETION_LENGTH // 2,
    per_device_train_batch_size=128,
    num_generations=8,
    num_iterations=2,
    temperature=1.0,
    learning_rate=1e-4,
    # Decaying to 0 keeps the gain of the early steps: at a constant 1e-4 held-out accuracy drifts by about +-0.01
    # after 100 steps, and at 2e-4 it falls (docs/sudoku.md).
    lr_scheduler_type="linear",
    max_grad_norm=0.2,
    adam_beta2=0.99,
    weight_decay=0.0,
    max_steps=160,
    logging_steps=5,
    save_strategy="no",
    report_to="none",
    bf16=False,
    gradient_checkpointing=False,
)

#: SPG-only settings of that run (`SPGConfig` fields); the baselines keep their own defaults.
SPG_DEFAULTS = dict(
    num_mc_masks=4,
    min_mask_ratio=0.3,
    # The paper's 0.15 made the RL gain depend on the warm start here (one warm start lost accuracy with it and gained
    # without); see docs/sudoku.md and benchmarks/sudoku_update_direction.py.
    p_mask_prompt=0.0,
    eubo_beta=1.0,
)


@dataclass(frozen=True)
class TinySudokuSpec:
    """Everything that determines the warm-started tiny model (and therefore its cache key)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    sft_steps: int = 600
    sft_batch_size: int = 32
    sft_learning_rate: float = 1e-3
    seed: int = 0


def default_cache_dir() -> Path:
    """``$TRL_SPG_CACHE`` if set, else ``~/.cache/trl_spg``."""
    return Path(os.environ.get("TRL_SPG_CACHE", Path.home() / ".cache" / "trl_spg"))


def _cache_key(spec: TinySudokuSpec, train_rows: list[dict]) -> str:
    payload = json.dumps({"spec": asdict(spec), "rows": train_rows, "format": 1}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def tiny_sudoku_model(
    train_rows: list[dict], spec: TinySudokuSpec = TinySudokuSpec(), cache_dir: str | os.PathLike | None = None
):
    """The warm-started tiny model and its tokenizer: loaded from the cache, or trained on ``train_rows`` and cached.

    ``train_rows`` are ``{"puzzle", "solution"}`` dicts (the training split only: the held-out puzzles must stay
    unseen).
    """
    folder = Path(cache_dir or default_cache_dir()) / f"tiny-sudoku-{_cache_key(spec, train_rows)}"
    if (folder / "config.json").exists():
        logger.info("Loading the warm-started tiny Sudoku model from %s", folder)
        return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)

    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    model = build_tiny_diffusion_lm(
        tokenizer, hidden_size=spec.hidden_size, num_layers=spec.num_layers, num_heads=spec.num_heads, seed=spec.seed
    )
    logger.info(
        "Warm-starting the tiny Sudoku policy: %d SFT steps (about a minute per 600 steps on 2 CPU cores), cached in %s",
        spec.sft_steps,
        folder,
    )
    start = time.perf_counter()
    diffusion_sft(
        model,
        tokenizer,
        [compact_prompt(row["puzzle"]) for row in train_rows],
        [compact_completion(row["solution"]) for row in train_rows],
        completion_length=TINY_COMPLETION_LENGTH,
        num_steps=spec.sft_steps,
        batch_size=spec.sft_batch_size,
        learning_rate=spec.sft_learning_rate,
        generator=torch.Generator().manual_seed(spec.seed),
        log_every=50,
    )
    logger.info("Warm start done in %.0f s", time.perf_counter() - start)
    model.eval()
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(folder) if not folder.exists() else None  # another process may have finished first
    return model, tokenizer


def load_tiny_policy(seed: int = 42, sft_steps: int | None = None, cache_dir: str | os.PathLike | None = None):
    """The tiny policy warm-started on the built-in training split: what ``--model_name_or_path tiny`` loads.

    The default seed is `TrainingArguments`' default, so `trl-spg` and the evaluation CLI share one cached warm
    start; ``sft_steps`` None keeps the spec's default.
    """
    spec = TinySudokuSpec(seed=seed) if sft_steps is None else TinySudokuSpec(seed=seed, sft_steps=sft_steps)
    return tiny_sudoku_model(sudoku_split()[0], spec, cache_dir)
