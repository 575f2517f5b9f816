"""Two training processes on CPU (`accelerate launch --multi_gpu --num_processes 2`, gloo): replicas stay identical,
randomness differs per rank, metrics are gathered, checkpoints resume, and 2 processes equal 1 with accumulation."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from multiprocess_job import FixedRolloutTrainer, build

JOB = Path(__file__).parent / "multiprocess_job.py"
pytestmark = pytest.mark.slow  # one 2-process launch for the module


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multiprocess")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(JOB), str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


def test_replicas_stay_identical_and_move(ranks):
    _, (first, second) = ranks
    assert len(first["params"]) == len(second["params"]) == 2
    for step_a, step_b in zip(first["params"], second["params"]):
        for name, value in step_a.items():
            assert torch.equal(value, step_b[name]), name
    assert any(not torch.equal(first["params"][0][n], first["params"][1][n]) for n in first["params"][0])


def test_rollouts_and_masks_differ_across_ranks(ranks):
    _, (first, second) = ranks
    assert first["rollouts"][0] != second["rollouts"][0]
    assert not torch.equal(first["masks"][0], second["masks"][0])


def test_logged_bounds_average_both_ranks(ranks):
    _, (first, second) = ranks
    for step in range(2):
        both = torch.cat([first["elbos"][step], second["elbos"][step]])
        logged = [entry for entry in first["log_history"] if entry.get("step") == step + 1 and "loss" in entry]
        assert logged[0]["spg/elbo"] == pytest.approx(both.mean().item(), abs=1e-5)
        assert not torch.allclose(first["elbos"][step].mean(), second["elbos"][step].mean())


def test_checkpoint_of_two_processes_resumes_to_the_same_parameters(ranks):
    _, records = ranks
    for record in records:
        assert len(record["resumed_params"]) == 1  # only step 2 is trained again
        for name, value in record["params"][-1].items():
            assert torch.equal(record["resumed_params"][-1][name], value), name
        assert torch.equal(record["resumed_masks"][0], record["masks"][1])


def test_two_processes_equal_one_process_with_accumulation(ranks, tmp_path):
    _, (first, _) = ranks
    trainer, recorder = build(
        tmp_path,
        FixedRolloutTrainer,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=1,
        masking_strategy="all",
        num_mc_masks=1,
        p_mask_prompt=0.0,
        max_grad_norm=1e9,
    )
    trainer.train()
    reference = recorder.gradient
    assert any(grad.abs().max() > 0 for grad in reference.values())
    for name, grad in reference.items():
        torch.testing.assert_close(first["gradient"][name], grad, rtol=1e-5, atol=1e-7)
