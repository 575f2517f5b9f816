"""A tiny SPG training job run as a subprocess by the crash-safety test.

    python tests/train_job.py OUTPUT_DIR [--hang_after_step N] [--resume]

Trains the tiny bidirectional Llama for 4 steps, saving every 2, with a reward that returns None and NaN for some
completions. ``--hang_after_step N`` writes ``OUTPUT_DIR/reached`` after step N and then hangs (the test kills it);
``--resume`` resumes from the last checkpoint and writes the step it resumed at to ``OUTPUT_DIR/resumed_at``.
The final weights are saved to ``OUTPUT_DIR/final``.
"""

import argparse
import math
import sys
import time
from pathlib import Path

from datasets import Dataset
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import make_args  # noqa: E402

from trl_spg import SPGTrainer  # noqa: E402
from trl_spg.tiny import SIMPLE_CHAT_TEMPLATE, build_char_tokenizer, build_tiny_diffusion_lm  # noqa: E402


def gappy_reward(completions, **kwargs):
    """Distinct characters, but None for every third completion and NaN for every fifth."""
    return [
        None if i % 3 == 0 else math.nan if i % 5 == 0 else float(len(set(text))) for i, text in enumerate(completions)
    ]


class Hang(TrainerCallback):
    def __init__(self, step: int, marker: Path):
        self.step, self.marker = step, marker

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.marker.write_text(str(state.global_step))
            while True:
                time.sleep(1)


class RecordStart(TrainerCallback):
    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        self.path.write_text(str(state.global_step))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--hang_after_step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    options = parser.parse_args()
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    model = build_tiny_diffusion_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    dataset = Dataset.from_dict({"prompt": ["12=", "34=", "ab=", "x="] * 2})
    args = make_args(
        options.output_dir, output_dir=str(options.output_dir), max_steps=4, save_strategy="steps", save_steps=2
    )
    callbacks = []
    if options.hang_after_step is not None:
        callbacks.append(Hang(options.hang_after_step, options.output_dir / "reached"))
    if options.resume:
        callbacks.append(RecordStart(options.output_dir / "resumed_at"))
    trainer = SPGTrainer(
        model, gappy_reward, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    trainer.save_model(str(options.output_dir / "final"))


if __name__ == "__main__":
    main()
