"""`TaskEvaluationCallback`: a task's held-out accuracy during training (periodic, before and after)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace

import torch
from transformers import Trainer, TrainerCallback
from trl.models.utils import unwrap_model_for_generation

from ..decoding import DecodingConfig
from ..tasks import Task, get_task
from .evaluate import generate_and_score, summarize_graders

logger = logging.getLogger(__name__)


class TaskEvaluationCallback(TrainerCallback):
    """Evaluate a task during training and log ``eval_task/<task>/accuracy`` and ``.../stderr`` (the strict grader),
    and ``.../paper_accuracy`` and ``.../paper_stderr`` (the paper's reference evaluation, for tasks with one).

    Takes the trainer, like TRL's own completion-logging callback:

        trainer.add_callback(TaskEvaluationCallback(trainer, "gsm8k", every=100, limit=256))

    Evaluates every ``every`` optimizer steps (0: never), and at the start (``eval_on_start``) and the end
    (``eval_on_end``; reusing an evaluation of the last step) of training. ``decoding`` defaults to the trainer's
    rollout settings, greedy: the run's own length, block, steps and fast modes. The evaluation set (``split`` of
    the task; ``prompt_style`` default: the paper's evaluation prompt) is built once. The metrics go through
    `transformers.Trainer.log`, so they reach the log history and every reporting integration without flushing the
    trainer's running training metrics. Each evaluation's summary is kept in ``history`` (with its ``step``) and its
    per-problem records in ``records[step]``; both also go to ``<output_dir>/<task>_evaluations.json`` (per problem
    only what the statistics read), so a run resumed from a checkpoint keeps the evaluations made before it,
    including the one at the start.
    """

    def __init__(
        self,
        trainer,
        task: str | Task,
        *,
        every: int = 0,
        eval_on_start: bool = False,
        eval_on_end: bool = False,
        decoding: DecodingConfig | None = None,
        split: str = "test",
        data=None,
        prompt_style: str | None = None,
        prompt_options: dict | None = None,
        limit: int | None = None,
        batch_size: int = 16,
    ):
        if every < 0:
            raise ValueError(f"every must be a number of steps >= 0 (0: never), got {every}")
        self.trainer = trainer
        self.task = get_task(task)
        self.every, self.eval_on_start, self.eval_on_end = every, eval_on_start, eval_on_end
        # The exact sampler unless told otherwise: held-out accuracy must not depend on the rollouts' fast modes.
        self.decoding = decoding or replace(trainer.args.rollout_config().exact(), temperature=0.0)
        self.batch_size = batch_size
        self.dataset = self.task.dataset(
            split, prompt_style=prompt_style or self.task.eval_prompt, data=data, limit=limit, **(prompt_options or {})
        )
        self.history: list[dict] = []
        self.records: dict[int, list[dict]] = {}

    def evaluate(self, step: int) -> dict:
        trainer = self.trainer
        unwrapped = unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator)
        with unwrapped as model, torch.no_grad(), trainer.accelerator.autocast():
            records = generate_and_score(
                self.task,
                model,
                trainer.processing_class,
                self.dataset,
                self.decoding,
                batch_size=self.batch_size,
                mask_token_id=getattr(trainer, "mask_token_id", None),
                progress=True,
            )
        result = {"step": step, **summarize_graders(records, self.task.cluster_key)}
        self.history.append(result)
        self.records[step] = records
        self._save()
        paper = f", paper grader {result['paper_accuracy']:.4f}" if "paper_accuracy" in result else ""
        logger.info(
            "%s held-out accuracy at step %d: %.4f +- %.4f (%d problems)%s",
            self.task.title, step, result["accuracy"], result["stderr"], result["problems"], paper,
        )  # fmt: skip
        prefix = f"eval_task/{self.task.name}"
        # `on_log` clears `should_log`; keep it so the trainer still logs its own metrics at this step.
        should_log = trainer.control.should_log
        keys = ("accuracy", "stderr", "paper_accuracy", "paper_stderr")
        Trainer.log(trainer, {f"{prefix}/{key}": result[key] for key in keys if key in result})
        trainer.control.should_log = should_log
        return result

    def _path(self) -> str:
        return os.path.join(self.trainer.args.output_dir, f"{self.task.name}_evaluations.json")

    def _save(self) -> None:
        if not self.trainer.is_world_process_zero():
            return
        keys = ("correct", "total", "paper_correct", "paper_total", self.task.cluster_key)
        records = {step: [{k: r[k] for k in keys if k in r} for r in rows] for step, rows in self.records.items()}
        os.makedirs(self.trainer.args.output_dir, exist_ok=True)
        with open(self._path(), "w") as handle:
            json.dump({"history": self.history, "records": records}, handle)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0 and os.path.isfile(self._path()):  # resumed: the evaluations up to the checkpoint
            with open(self._path()) as handle:
                saved = json.load(handle)
            self.history = [entry for entry in saved["history"] if entry["step"] <= state.global_step]
            self.records = {int(k): v for k, v in saved["records"].items() if int(k) <= state.global_step}
            logger.info("Resumed with %d earlier evaluations of %s", len(self.history), self.task.title)
        elif self.eval_on_start:
            self.evaluate(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self.evaluate(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.eval_on_end and not (self.history and self.history[-1]["step"] == state.global_step):
            self.evaluate(state.global_step)
