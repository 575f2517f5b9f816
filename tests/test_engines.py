"""The shipped engine configs (DeepSpeed ZeRO-2, ZeRO-3, FSDP2) on 2 CPU processes do not change the algorithm.

Each config of `examples/accelerate_configs/` is launched as shipped except for a CPU override (``use_cpu``,
2 processes, no mixed precision, so the comparison with plain data parallel is exact up to float summation order).
`tests/engine_job.py` trains SPG, d1 and wd1 runs under it and records every rank; the tests compare the runs with
the plain data-parallel (DDP) launch of the same seeds: same rollouts, same masks, same parameters after each step,
an exact resume, and a saved model or adapter that loads back.

DeepSpeed on a machine without CUDA picks its CPU accelerator and gloo by itself; its first use compiles a small
op (about 35 s, cached under ``~/.cache/torch_extensions``). accelerate never selects FSDP for CPU processes, so the
job forces it (`engine_job.force_fsdp_on_cpu`, test-only).
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from engine_job import save_tiny_policy  # noqa: E402

pytestmark = pytest.mark.slow
JOB = Path(__file__).parent / "engine_job.py"
CONFIGS = Path(__file__).parents[1] / "examples" / "accelerate_configs"
# Parameters may differ from DDP's by float summation order only (measured: at most 6e-6 after 2 steps at lr 1e-2).
ATOL = 2e-5
ENGINES = {
    # engine: (shipped config, runs, distributed type, wrapper class, share of the weights each rank holds)
    "zero2": ("deepspeed_zero2", ["spg-lora", "spg-full"], "DEEPSPEED", "DeepSpeedEngine", 1.0),
    "zero3": (
        "deepspeed_zero3",
        ["spg-lora", "spg-full", "spg-lora-nogather", "spg-full-nogather", "d1-full"],
        "DEEPSPEED",
        "DeepSpeedEngine",
        0.5,
    ),
    "fsdp2": ("fsdp2", ["spg-lora", "spg-full", "wd1-full"], "FSDP", "FSDP", 0.5),
}
CASES = [(engine, run) for engine, (_, runs, *_) in ENGINES.items() for run in runs]


def cpu_config(name: str, folder: Path) -> Path:
    """The shipped launch config with the CPU override."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    config.update(use_cpu=True, num_processes=2, mixed_precision="no")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    save_tiny_policy(folder / "policy")
    return folder


_launched: dict[str, Path] = {}


def launch(workspace: Path, name: str, config: str, runs: list[str]) -> Path:
    """Run the job once per module under ``config``; the folder of its runs."""
    if name not in _launched:
        output = workspace / name
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
        command += [str(cpu_config(config, workspace)), str(JOB)]
        command += ["--fsdp_on_cpu"] if config.startswith("fsdp") else []
        command += [str(workspace / "policy"), str(output), *runs]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        _launched[name] = output
    return _launched[name]


def records(folder: Path) -> list[dict]:
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


@pytest.fixture(scope="module")
def ddp(workspace):
    runs = sorted({run.removesuffix("-nogather") for _, run in CASES})
    return launch(workspace, "ddp", "multi_gpu", runs)


@pytest.fixture(scope="module", params=list(ENGINES))
def engine(request, workspace):
    config, runs, *_ = ENGINES[request.param]
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason='DeepSpeed is an extra: pip install -e ".[deepspeed]"')
    return request.param, launch(workspace, request.param, config, runs)


def engine_runs(engine):
    name, folder = engine
    return [(run, folder / run) for run in ENGINES[name][1]]


def test_the_engine_really_runs_and_shards(engine):
    name, _ = engine
    _, _, distributed_type, wrapper, share = ENGINES[name]
    for run, folder in engine_runs(engine):
        for record in records(folder):
            assert record["engine"] == distributed_type, run
            assert wrapper in record["wrapped"], (run, record["wrapped"])
            assert record["local_share"] == pytest.approx(share), run


def test_replicas_stay_identical_and_move(engine):
    for run, folder in engine_runs(engine):
        first, second = records(folder)
        assert len(first["params"]) == 2, run
        for step_a, step_b in zip(first["params"], second["params"]):
            assert step_a.keys() == step_b.keys()
            for key in step_a:
                assert torch.equal(step_a[key], step_b[key]), (run, key)
        moved = [not torch.equal(first["params"][-1][key], first["initial"][key]) for key in first["initial"]]
        assert all(moved), run  # every trainable tensor (adapters only, with LoRA) was updated


def test_same_rollouts_masks_and_parameters_as_ddp(engine, ddp):
    for run, folder in engine_runs(engine):
        reference = records(ddp / run.removesuffix("-nogather"))
        for rank, (record, expected) in enumerate(zip(records(folder), reference)):
            # Rollouts under ZeRO-3 (gathered or not) and FSDP2 see the full weights: the same completions.
            assert record["rollouts"] == expected["rollouts"], (run, rank)
            assert len(record["masks"]) == len(expected["masks"])
            for masks, expected_masks in zip(record["masks"], expected["masks"]):
                assert torch.equal(masks, expected_masks), (run, rank)
            for key, value in expected["initial"].items():
                assert torch.equal(record["initial"][key], value), (run, key)
            for step, expected_step in zip(record["params"], expected["params"]):
                assert step.keys() == expected_step.keys()
                for key, value in expected_step.items():
                    torch.testing.assert_close(step[key], value, rtol=0, atol=ATOL, msg=f"{run} {key}")


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(engine):
    for run, folder in engine_runs(engine):
        for record in records(folder):
            assert len(record["resumed_params"]) == 1  # only step 2 is trained again
            for key, value in record["params"][-1].items():
                assert torch.equal(record["resumed_params"][-1][key], value), (run, key)


def test_saved_model_or_adapter_loads_back_with_its_card(engine, workspace):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for run, folder in engine_runs(engine):
        trained = records(folder)[0]["params"][-1]
        if "-lora" in run:
            base = AutoModelForCausalLM.from_pretrained(workspace / "policy")
            model = PeftModel.from_pretrained(base, folder / "final")
            loaded = {name: p for name, p in model.named_parameters() if "lora_" in name}
        else:
            loaded = dict(AutoModelForCausalLM.from_pretrained(folder / "final").named_parameters())
        assert loaded.keys() == trained.keys(), run
        for key, value in trained.items():
            assert torch.equal(loaded[key].detach(), value), (run, key)
        card = (folder / "README.md").read_text()
        assert "trl_spg" in card and f"- {run.split('-')[0]}\n" in card, run
