"""SPG training under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo), run by tests/test_multiprocess.py.

    accelerate launch --multi_gpu --num_processes 2 tests/multiprocess_job.py OUTPUT_DIR

Three runs in the same processes, recorded per rank in ``OUTPUT_DIR/rank{r}.pt``:

1. 2 steps of real diffusion rollouts with a checkpoint after each: parameters after each step, the rollouts,
   Monte Carlo masks and local ELBOs, and the logged history;
2. a new trainer resumed from that run's checkpoint-1: its parameters and masks;
3. one step on fixed completions (`FixedRolloutTrainer`) with whole-completion masks: the accumulated gradient,
   which the test compares with 1 process x 2 accumulation steps.
"""

import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import char_variety, make_args  # noqa: E402

import trl_spg.objective  # noqa: E402
from trl_spg import SPGTrainer  # noqa: E402
from trl_spg.tiny import SIMPLE_CHAT_TEMPLATE, build_char_tokenizer, build_tiny_diffusion_lm  # noqa: E402

PROMPTS = ["12=", "34=", "ab=", "x=", "5+5=", "hi=", "7=", "qq="]


class FixedRolloutTrainer(SPGTrainer):
    """Completions that depend only on the prompt and the row's global index in the generation batch, so 1 process
    x 2 accumulation steps and 2 processes x 1 see the same rollouts."""

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        start = self.accelerator.process_index * len(prompt_ids)
        rows = [start + row for row in range(len(prompt_ids))]  # row r repeats a pattern of r + 2 tokens
        return [[4 + sum(ids) % 9 + (r * k) % (r + 2) for k in range(8)] for r, ids in zip(rows, prompt_ids)], None


class Recorder(TrainerCallback):
    def __init__(self):
        self.params, self.gradient = [], None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.gradient is None:
            self.gradient = {name: p.grad.detach().clone() for name, p in model.named_parameters()}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.params.append({name: p.detach().clone() for name, p in model.named_parameters()})


def build(output_dir: Path, trainer_class=SPGTrainer, **overrides):
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    model = build_tiny_diffusion_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    args = make_args(output_dir, output_dir=str(output_dir / "run"), **overrides)
    recorder = Recorder()
    trainer = trainer_class(
        model,
        char_variety,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
        callbacks=[recorder],
    )
    return trainer, recorder


def main() -> None:
    output_dir = Path(sys.argv[1])
    masks, elbos, rollouts = [], [], []
    original_loss = trl_spg.objective.SPGObjective.loss

    def recording_loss(self, *args, **kwargs):
        output = original_loss(self, *args, **kwargs)
        masks.append(output.masks.noised.clone())
        elbos.append(output.bounds["elbo"].detach().clone())
        return output

    trl_spg.objective.SPGObjective.loss = recording_loss
    overrides = dict(per_device_train_batch_size=2, save_strategy="steps", save_steps=1)
    trainer, recorder = build(output_dir, **overrides)
    original_generate = trainer._generate_single_turn

    def recording_generate(*args, **kwargs):
        completions, extra = original_generate(*args, **kwargs)
        rollouts.append(completions)
        return completions, extra

    trainer._generate_single_turn = recording_generate
    rank = trainer.accelerator.process_index
    trainer.train()
    record = {
        "params": recorder.params,
        "masks": list(masks),
        "elbos": list(elbos),
        "rollouts": rollouts,
        "log_history": trainer.state.log_history,
    }

    # A new trainer resumes the 2-process checkpoint of step 1.
    masks.clear()
    resumed, recorder = build(output_dir, **overrides)
    resumed.train(resume_from_checkpoint=str(output_dir / "run" / "checkpoint-1"))
    record["resumed_params"] = recorder.params
    record["resumed_masks"] = list(masks)

    # One step on fixed rollouts with whole-completion masks: the gradient 2 processes x 1 micro-batch accumulate.
    fixed, recorder = build(
        output_dir / "fixed",
        FixedRolloutTrainer,
        per_device_train_batch_size=2,
        max_steps=1,
        masking_strategy="all",
        num_mc_masks=1,
        p_mask_prompt=0.0,
        max_grad_norm=1e9,
    )
    fixed.train()
    record["gradient"] = recorder.gradient
    torch.save(record, output_dir / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
