"""SPG, d1 and wd1 training under a distributed engine on 2 CPU processes, run by tests/test_engines.py.

    accelerate launch --config_file CONFIG.yaml tests/engine_job.py MODEL_DIR OUTPUT_DIR RUN [RUN ...]

MODEL_DIR holds the tiny policy saved by `save_tiny_policy` (the trainers load it by path, as users' models are:
under ZeRO-3 it is built partitioned, and d1's reference model is loaded from it). CONFIG is one of the shipped `examples/accelerate_configs/` with a CPU override (the test writes it); a RUN is
``<trainer>-<lora|full>[-nogather]`` (``nogather``: ZeRO-3 rollouts with ``ds3_gather_for_generation=False``).
Each run, recorded per rank in ``OUTPUT_DIR/<run>/rank{r}.pt``:

1. 2 steps with a checkpoint after each: the full (gathered) trainable parameters after each step, the rollouts
   and the Monte Carlo masks, then the final model saved with its model card to ``OUTPUT_DIR/<run>/final``;
2. a new trainer resumed from checkpoint-1: its parameters after step 2.

``--fsdp_on_cpu``: accelerate never selects FSDP for CPU processes (it falls back to plain data parallel), so the
job forces the FSDP distributed type before the trainer builds its `Accelerator` (test-only; on GPUs the shipped
config selects FSDP by itself).
"""

import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import char_variety, make_args  # noqa: E402

import trl_spg.objective  # noqa: E402
from trl_spg import DiffuGRPOConfig, DiffuGRPOTrainer, SPGConfig, SPGTrainer, WD1Config, WD1Trainer  # noqa: E402
from trl_spg.modeling import whole_parameters  # noqa: E402
from trl_spg.tiny import SIMPLE_CHAT_TEMPLATE, build_char_tokenizer, build_tiny_diffusion_lm  # noqa: E402

PROMPTS = ["12=", "34=", "ab=", "x=", "5+5=", "hi=", "7=", "qq="]
TRAINERS = {"spg": (SPGTrainer, SPGConfig), "d1": (DiffuGRPOTrainer, DiffuGRPOConfig), "wd1": (WD1Trainer, WD1Config)}


def full_parameters(model) -> dict[str, torch.Tensor]:
    """The trainable parameters as whole tensors on every rank, whatever the engine shards (collective)."""
    named = [(name.removeprefix("module."), p) for name, p in model.named_parameters() if p.requires_grad]
    with whole_parameters(model, modifier_rank=None):  # DeepSpeed ZeRO-3 partitions; FSDP2 has DTensors
        return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for name, p in named}


def local_share(model) -> float:
    """The share of the trainable parameters' elements this rank holds (1.0 unless the engine shards them)."""
    held = total = 0
    for p in model.parameters():
        if p.requires_grad:
            total += p.ds_numel if hasattr(p, "ds_numel") else p.numel()
            held += (
                p.ds_tensor.numel()
                if hasattr(p, "ds_tensor")
                else (p.to_local().numel() if hasattr(p, "to_local") else p.numel())
            )
    return held / total


class Recorder(TrainerCallback):
    def __init__(self):
        self.params = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.params.append(full_parameters(model))


def tiny_tokenizer():
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    return tokenizer


def save_tiny_policy(model_dir: Path) -> None:
    """The job's initial policy, saved where every run loads it from."""
    tokenizer = tiny_tokenizer()
    build_tiny_diffusion_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def build(model_dir: Path, output_dir: Path, run: str):
    trainer_name, tuning, *mode = run.split("-")
    trainer_class, config_class = TRAINERS[trainer_name]
    options = dict(per_device_train_batch_size=2, save_strategy="steps", save_steps=1, learning_rate=1e-2)
    options["ds3_gather_for_generation"] = "nogather" not in mode
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("distributed_type") == "FSDP":  # set by `force_fsdp_on_cpu`
        options["accelerator_config"] = {"use_configured_state": True}
    if trainer_name != "spg":
        options["num_iterations"] = 2  # the old-policy / reference paths of the baselines
    args = make_args(output_dir, config_class, output_dir=str(output_dir), **options)
    peft_config = None
    if tuning == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    recorder = Recorder()
    trainer = trainer_class(
        str(model_dir),
        char_variety,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tiny_tokenizer(),
        callbacks=[recorder],
        peft_config=peft_config,
    )
    return trainer, recorder


def run_one(model_dir: Path, output_dir: Path, run: str) -> None:
    masks, rollouts = [], []
    original_loss = trl_spg.objective.SPGObjective.loss

    def recording_loss(self, *args, **kwargs):
        output = original_loss(self, *args, **kwargs)
        masks.append(output.masks.noised.clone())
        return output

    trl_spg.objective.SPGObjective.loss = recording_loss
    try:
        trainer, recorder = build(model_dir, output_dir, run)
        original_generate = trainer._generate_single_turn

        def recording_generate(*args, **kwargs):
            completions, extra = original_generate(*args, **kwargs)
            rollouts.append(completions)
            return completions, extra

        trainer._generate_single_turn = recording_generate
        initial = full_parameters(trainer.model)
        trainer.train()
        trainer.save_model(str(output_dir / "final"))
        record = {
            "engine": trainer.accelerator.distributed_type.value,
            "wrapped": type(trainer.model_wrapped).__name__,
            "initial": initial,
            "local_share": local_share(trainer.model),
            "params": recorder.params,
            "masks": list(masks),
            "rollouts": rollouts,
        }
        resumed, recorder = build(model_dir, output_dir, run)
        resumed.train(resume_from_checkpoint=str(output_dir / "checkpoint-1"))
        record["resumed_params"] = recorder.params
        torch.save(record, output_dir / f"rank{trainer.accelerator.process_index}.pt")
    finally:
        trl_spg.objective.SPGObjective.loss = original_loss


def force_fsdp_on_cpu() -> None:
    """Build accelerate's state as on GPUs: FSDP with the launcher's plugin settings (FSDP_* variables), on gloo.

    accelerate only considers FSDP for accelerator devices, so the process state is labelled as multi-GPU while
    the shared `AcceleratorState` is built; the trainers then use it (``use_configured_state``).
    """
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    PartialState(cpu=True)  # gloo, one process per launched rank
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    assert Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin()).distributed_type == DistributedType.FSDP


def main() -> None:
    arguments = sys.argv[1:]
    if "--fsdp_on_cpu" in arguments:
        arguments.remove("--fsdp_on_cpu")
        force_fsdp_on_cpu()
    model_dir, output_dir = Path(arguments[0]), Path(arguments[1])
    for run in arguments[2:]:
        run_one(model_dir, output_dir / run, run)


if __name__ == "__main__":
    main()
