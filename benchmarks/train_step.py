"""Where the time of an SPG training step goes: rollout, scoring, backward, optimizer.

Runs `SPGTrainer` for a few optimizer steps on a random bidirectional Llama with a word-level tokenizer of the
requested vocabulary (one prompt per step, ``--batch`` completions of it, one generation per optimizer step) and
times, from outside the trainer:

* rollout:   ``SPGTrainer._generate_single_turn`` (the diffusion sampler, prompt padding included);
* scoring:   ``SPGTrainer._compute_loss`` (Monte Carlo masks, the model forward on the masked copies, the bounds);
* backward:  ``accelerator.backward`` of that loss;
* optimizer: between TRL's ``on_pre_optimizer_step`` and ``on_optimizer_step`` callbacks (``optimizer.step()``),
  plus gradient clipping (``Trainer._clip_grad_norm``);
* other:     the rest of the step (reward function, advantages, batching, logging).

The first step is a warm-up and is not counted. ``--compare-old`` repeats the run with the pre-optimisation
sampler and estimator (`_reference`) swapped into the trainer.

    python benchmarks/train_step.py               # CPU setup
    python benchmarks/train_step.py --preset gpu  # hidden 1024, 16 layers, vocab 126464, bf16 on cuda
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
import warnings
from collections import defaultdict

import torch
from _common import build_model, describe, parser, resolve, synchronize
from _reference import reference_generate, reference_token_logprobs
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, TrainerCallback
from transformers.trainer_callback import PrinterCallback

import trl_spg.scoring
import trl_spg.trainers.diffusion_trainer
from trl_spg import SPGConfig, SPGTrainer

PARTS = ("rollout", "scoring", "backward", "optimizer", "other")


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Whitespace-separated words ``w2 .. w{V-2}``, with pad 0, EOS 1 and mask V-1 (the model's ids)."""
    vocab = {"<pad>": 0, "<eos>": 1} | {f"w{i}": i for i in range(2, vocab_size - 1)} | {"<mask>": vocab_size - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", mask_token="<mask>")


def even_words(completions, **kwargs):
    """Reward: share of words with an even id (varies within a group, so advantages are not all zero)."""
    words = [text.split() for text in completions]
    return [sum(word[1:].isdigit() and int(word[1:]) % 2 == 0 for word in w) / max(1, len(w)) for w in words]


class StepTimer(TrainerCallback):
    """Times whole steps and the optimizer step through TRL's callbacks, and wraps the trainer's hot methods."""

    def __init__(self, device: str):
        self.device = device
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)
        self.started = {}

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def wrap(self, owner, name: str, part: str) -> None:
        method = getattr(owner, name)

        @functools.wraps(method)
        def timed(*args, **kwargs):
            start = self._now()
            try:
                return method(*args, **kwargs)
            finally:
                self.current[part] += self._now() - start

        setattr(owner, name, timed)

    def on_step_begin(self, args, state, control, **kwargs):
        self.current = defaultdict(float)
        self.started["step"] = self._now()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.started["optimizer"] = self._now()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.current["optimizer"] += self._now() - self.started["optimizer"]

    def on_step_end(self, args, state, control, **kwargs):
        total = self._now() - self.started["step"]
        step = dict(self.current)
        step["other"] = total - sum(step.values())
        step["total"] = total
        self.steps.append(step)


def run(args, implementation: str) -> list[dict[str, float]]:
    model = build_model(args, train=True)
    tokenizer = word_tokenizer(args.vocab)
    gen = torch.Generator().manual_seed(args.seed)
    prompts = [
        " ".join(f"w{i}" for i in torch.randint(2, args.vocab - 1, (args.prompt,), generator=gen).tolist())
        for _ in range(args.train_steps)
    ]
    config = SPGConfig(
        output_dir=tempfile.mkdtemp(prefix="spg-bench-"),
        report_to="none",
        use_cpu=args.device == "cpu",
        bf16=args.torch_dtype == torch.bfloat16,
        per_device_train_batch_size=args.batch,
        num_generations=args.batch,
        max_completion_length=args.gen,
        block_length=args.block,
        diffusion_steps=args.steps,
        temperature=args.temperature,
        num_mc_masks=2,
        max_steps=args.train_steps,
        learning_rate=1e-5,
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = SPGTrainer(
        model,
        even_words,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    timer = StepTimer(args.device)
    timer.wrap(trainer, "_generate_single_turn", "rollout")
    timer.wrap(trainer, "_compute_loss", "scoring")
    timer.wrap(trainer.accelerator, "backward", "backward")
    timer.wrap(trainer, "_clip_grad_norm", "optimizer")
    trainer.add_callback(timer)

    patched = []
    if implementation == "old":
        patched = [
            (trl_spg.trainers.diffusion_trainer, "diffusion_generate", reference_generate),
            (
                trl_spg.scoring,
                "token_logprobs",
                lambda logits, targets, **_: reference_token_logprobs(logits, targets),
            ),
        ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patched]
    for module, name, replacement in patched:
        setattr(module, name, replacement)
    try:
        trainer.train()
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
    return timer.steps[1:]  # the first step warms up


def report(steps: list[dict[str, float]], label: str) -> None:
    means = {part: statistics.mean(step.get(part, 0.0) for step in steps) for part in (*PARTS, "total")}
    print(f"{label}: {len(steps)} steps, mean step {means['total']:.3f} s")
    for part in PARTS:
        print(f"  {part:<10} {means[part]:>9.3f} s  {100 * means[part] / means['total']:>5.1f} %")


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--train-steps", type=int, default=4, help="optimizer steps (the first is a warm-up)")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--compare-old", action="store_true", help="also run with the pre-optimisation hot paths")
    args = resolve(p.parse_args())
    if args.train_steps < 2:
        raise SystemExit("--train-steps must be at least 2 (the first is a warm-up).")
    extra = {"temperature": args.temperature, "mc_masks": 2, "optimizer": "AdamW"}
    describe(args, extra, timing=f"mean of {args.train_steps - 1} steps after a warm-up step")
    warnings.filterwarnings("ignore")
    report(run(args, "new"), "trl_spg")
    if args.compare_old:
        report(run(args, "old"), "old sampler and estimator")


if __name__ == "__main__":
    main()
