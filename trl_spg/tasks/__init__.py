"""Benchmark tasks (GSM8K, MATH500, Countdown, 4x4 Sudoku) behind one `Task` shape, and their registry.

    >>> from trl_spg.tasks import get_task, task_names
    >>> task_names()
    ['countdown', 'gsm8k', 'math500', 'sudoku']
    >>> task = get_task("gsm8k")
    >>> dataset = task.dataset("train")  # a "prompt" column plus the columns the rewards read
    >>> trainer = SPGTrainer(model, reward_funcs=list(task.reward_funcs), train_dataset=dataset, ...)

Task modules are imported on first use, so importing this package stays cheap.
"""

from __future__ import annotations

from importlib import import_module

from .base import HubSource, Task

__all__ = ["HubSource", "Task", "get_task", "register_task", "task_names"]

_BUILTIN_TASKS = {
    "countdown": "trl_spg.tasks.countdown",
    "gsm8k": "trl_spg.tasks.gsm8k",
    "math500": "trl_spg.tasks.math500",
    "sudoku": "trl_spg.tasks.sudoku",
}
_ALIASES = {"gsm": "gsm8k", "math": "math500"}
_REGISTERED: dict[str, Task] = {}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Make ``task`` available as ``get_task(task.name)`` (e.g. a new benchmark defined outside the package)."""
    if not overwrite and (task.name in _REGISTERED or task.name in _BUILTIN_TASKS):
        raise ValueError(f"A task named {task.name!r} exists; pass overwrite=True to replace it.")
    _REGISTERED[task.name] = task
    return task


def task_names() -> list[str]:
    """Names accepted by `get_task`, sorted."""
    return sorted({*_BUILTIN_TASKS, *_REGISTERED})


def get_task(name: str | Task) -> Task:
    """The `Task` registered under ``name`` (``gsm8k``, ``math500``, ``countdown``, ``sudoku``, or a registered one)."""
    if isinstance(name, Task):
        return name
    key = _ALIASES.get(name.lower(), name.lower())
    if key in _REGISTERED:
        return _REGISTERED[key]
    if key not in _BUILTIN_TASKS:
        raise ValueError(f"Unknown task {name!r}; available: {', '.join(task_names())}.")
    return import_module(_BUILTIN_TASKS[key]).TASK
