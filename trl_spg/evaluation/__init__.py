"""Evaluation: decoding a task's problems, scoring them, statistics, reports and the training callback."""

from .callback import TaskEvaluationCallback
from .decode import generate_completions, render_prompts
from .evaluate import evaluate_task, generate_and_score, markdown_table, process_state, write_reports
from .stats import paired_difference, ratio_stderr, summarize

__all__ = [
    "TaskEvaluationCallback",
    "evaluate_task",
    "generate_and_score",
    "generate_completions",
    "markdown_table",
    "paired_difference",
    "process_state",
    "ratio_stderr",
    "render_prompts",
    "summarize",
    "write_reports",
]
