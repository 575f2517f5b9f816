"""Trackers users expect (TensorBoard, Weights & Biases offline, Trackio) receive SPG's metrics, and
`log_completions` records the decoded diffusion completions in TRL's completions table."""

import glob
import json
import os
import sqlite3
import time

import pandas as pd
import pytest
from tiny_models import char_variety, make_args

from trl_spg import SPGTrainer


def train(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, tracker):
    args = make_args(tmp_path, report_to=[tracker], run_name="spg-logging-test", log_completions=True, max_steps=2)
    trainer = SPGTrainer(
        tiny_model, char_variety, args=args, train_dataset=prompt_dataset, processing_class=tiny_tokenizer
    )
    trainer.train()
    trainer.end()
    return trainer


@pytest.mark.slow
def test_tensorboard(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, "tensorboard")
    (events,) = glob.glob(str(tmp_path / "out" / "runs" / "*"))
    accumulator = EventAccumulator(events)
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/spg/elbo", "train/spg/bound_gap", "train/reward"} <= tags
    assert [event.step for event in accumulator.Scalars("train/spg/elbo")] == [1, 2]


@pytest.mark.slow
def test_wandb_offline(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    train(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, "wandb")
    runs = sorted(glob.glob(os.path.join(os.environ["WANDB_DIR"], "wandb", "offline-run-*")), key=os.path.getmtime)
    (record,) = glob.glob(os.path.join(runs[-1], "run-*.wandb"))
    deadline = time.monotonic() + 60  # wandb's service process may still be flushing the offline record
    while True:
        with open(record, "rb") as handle:
            data = handle.read()
        if (b"spg/elbo" in data and b"spg/negative_bound" in data) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert b"spg/elbo" in data and b"spg/negative_bound" in data
    assert glob.glob(os.path.join(runs[-1], "files", "media", "table", "completions_*.table.json"))


@pytest.mark.slow
def test_trackio_local(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    train(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, "trackio")
    databases = glob.glob(os.path.join(os.environ["TRACKIO_DIR"], "*.db"))
    logged = set()
    for database in databases:
        with sqlite3.connect(database) as connection:
            rows = connection.execute("select metrics from metrics where run_name = 'spg-logging-test'").fetchall()
        for (metrics,) in rows:
            logged |= set(json.loads(metrics))
    assert {"train/spg/elbo", "train/spg/eubo", "train/reward"} <= logged


def test_completions_table_holds_decoded_diffusion_completions(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset):
    trainer = train(tmp_path, tiny_model, tiny_tokenizer, prompt_dataset, "none")
    tables = sorted(glob.glob(str(tmp_path / "out" / "completions" / "*.parquet")))
    assert len(tables) == 2  # one per logged step
    table = pd.read_parquet(tables[0])
    assert {"prompt", "completion", "char_variety", "advantage"} <= set(table.columns)
    assert len(table) == trainer.args.per_device_train_batch_size
    for text, reward in zip(table["completion"], table["char_variety"]):
        assert tiny_tokenizer.mask_token not in text
        assert reward == pytest.approx(char_variety([text])[0])
