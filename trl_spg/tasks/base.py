"""The shape every task shares: a `Task` record, data loading (Hub, local files, built-in generators) and helpers.

A task bundles what training and evaluation need about one benchmark:

* where its data comes from, per split: a Hub dataset (``datasets.load_dataset`` with the real id), a built-in
  generator, or a local copy the user points at (a JSON / JSONL / CSV / Parquet file, a folder of them, a
  ``data_files`` mapping, or an in-memory ``datasets.Dataset`` / list of dicts);
* ``prepare``: one raw row (in the dataset's own schema) to the task's columns, e.g. GSM8K's ``question`` and the
  gold ``answer``; these columns reach TRL reward functions as keyword arguments;
* prompt formatters by style (the paper's training prompt, its evaluation prompt, a compact prompt for the tiny
  character-level model, ...);
* TRL reward functions (and weights) for RL;
* ``score``: the evaluation rule for one completion, as ``correct`` out of ``total`` (1 per problem; Sudoku counts
  empty cells), so that every task's accuracy and standard error are computed the same way. Two graders:
  ``"strict"`` (the default; the package's own parsing, ``strict_score``) and ``"paper"`` (the SPG paper's
  reference evaluation reproduced item for item, quirks included, ``paper_score``; see
  `trl_spg.tasks.paper_grader`), which reads the text as the reference decodes it: all generated tokens, special
  tokens kept.

Tasks are pure data and functions on top of ``datasets``; they import nothing from the trainer or the sampler.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

__all__ = [
    "GRADERS",
    "DataArg",
    "HubSource",
    "Task",
    "completion_text",
    "load_rows",
]

#: Where a split's rows come from: None (the task's default), ``"hub"``, ``"builtin"`` (alias ``"procedural"``),
#: a path to a file or folder, a ``data_files`` mapping (split -> file(s)), a ``datasets.Dataset`` or a list of dicts.
DataArg = Any

#: The graders of `Task.score`: the package's own rule and the paper's reference evaluation.
GRADERS = ("strict", "paper")

_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_BUILTIN_NAMES = ("builtin", "procedural")
#: The source name of the SPG paper's own data (its test files are shipped in `trl_spg.tasks.data`).
PAPER = "paper"


@dataclass(frozen=True)
class HubSource:
    """A split of a dataset on the Hugging Face Hub: ``load_dataset(path, name, split=split)``."""

    path: str
    name: str | None = None
    split: str = "train"

    def load(self) -> datasets.Dataset:
        return datasets.load_dataset(self.path, self.name, split=self.split)

    def __str__(self) -> str:
        name = f" ({self.name})" if self.name else ""
        return f"{self.path}{name}, split {self.split}"


def _builder(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _BUILDERS:
        raise ValueError(f"Unsupported data file {path}: use one of {sorted(_BUILDERS)}.")
    return _BUILDERS[suffix]


def _load_files(files: str | Sequence[str]) -> datasets.Dataset:
    paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
    builders = {_builder(p) for p in paths}
    if len(builders) != 1:
        raise ValueError(f"Data files of one split must share a format, got {sorted(builders)}.")
    return datasets.load_dataset(builders.pop(), data_files=[str(p) for p in paths], split="train")


def _load_folder(folder: Path, split: str) -> datasets.Dataset:
    """A folder of data files: ``datasets`` infers its splits from the file names (``train.jsonl``, ``test-*``...)."""
    loaded = datasets.load_dataset(str(folder))
    if split in loaded:
        return loaded[split]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise ValueError(f"{folder} has splits {sorted(loaded)}, none named {split!r}.")


def load_rows(data: DataArg, split: str) -> datasets.Dataset:
    """Raw rows of ``split`` from a user-given source other than the task's own (see `DataArg`)."""
    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, datasets.DatasetDict):
        return data[split]
    if isinstance(data, list):
        return datasets.Dataset.from_list(data)
    if isinstance(data, Mapping):
        if split not in data:
            raise ValueError(f"data_files has no entry for split {split!r} (it has {sorted(data)}).")
        return _load_files(data[split])
    path = Path(data)
    if path.is_dir():
        return _load_folder(path, split)
    if path.is_file():
        return _load_files(str(path))
    raise FileNotFoundError(f"No such data file or folder: {data}")


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a plain string, or the contents of a conversational completion's messages."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion or []:
        content = message.get("content", "") if isinstance(message, Mapping) else message
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
        parts.append(content if isinstance(content, str) else str(content))
    return "".join(parts)


Prompt = Any  # a string, or a list of chat messages


@dataclass(frozen=True)
class Task:
    """One benchmark: data, prompts, rewards and the evaluation rule (see the module docstring).

    Attributes:
        name: registry name (``get_task(name)``).
        title: name in result tables (``"GSM8K"``).
        description: one line for listings.
        hub: split -> `HubSource` of the paper's data.
        builtin: split -> list of raw rows, for tasks with built-in data (Sudoku, procedural Countdown).
        paper: split -> raw rows (a list or a ``datasets.Dataset``) of the paper's own data (``data="paper"``).
        default_data: split -> ``"hub"`` or ``"builtin"``: what ``data=None`` means.
        prepare: raw row (any accepted schema) -> the task's columns.
        keep: optional filter on prepared rows (e.g. Countdown's three-number problems).
        prompts: style -> formatter ``fn(example, **options) -> prompt``.
        train_prompt / eval_prompt: the styles the paper uses for RL and for evaluation.
        reward_funcs / reward_weights: what `SPGTrainer` / `GRPOTrainer` take.
        strict_score: the package's evaluation rule, ``fn(completion_text, example) -> {"prediction", "correct",
            "total"}`` (``score(..., grader="strict")``).
        paper_score: the same for the paper's reference evaluation (``score(..., grader="paper")``); None when the
            task has none.
        gen_lengths: generation lengths of the paper's evaluation (Table 1 columns).
        cluster_key: a column whose equal values mark problems with correlated results (Sudoku puzzles made from
            one solution grid, Countdown problems over one set of numbers), for clustered standard errors; None when
            problems are independent.
    """

    name: str
    title: str
    description: str
    prepare: Callable[[dict], dict]
    prompts: Mapping[str, Callable[..., Prompt]]
    train_prompt: str
    eval_prompt: str
    reward_funcs: tuple[Callable, ...]
    strict_score: Callable[[str, dict], dict]
    hub: Mapping[str, HubSource] = field(default_factory=dict)
    builtin: Callable[[str], list[dict]] | None = None
    paper: Callable[[str], Any] | None = None
    default_data: Mapping[str, str] = field(default_factory=dict)
    keep: Callable[[dict], bool] | None = None
    reward_weights: tuple[float, ...] | None = None
    gen_lengths: tuple[int, ...] = (128, 256, 512)
    cluster_key: str | None = None
    paper_score: Callable[[str, dict], dict] | None = None

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation

    def score(self, text: str, example: dict, grader: str = "strict") -> dict:
        """``{"prediction", "correct", "total"}`` of one completion ``text`` for ``example`` (the task's columns).

        ``grader="strict"`` (default) is the package's rule, on the completion as decoded for rewards (cut at the
        first EOS, special tokens dropped); ``grader="paper"`` is the SPG paper's reference evaluation, on the text
        as the reference decodes it (all generated tokens, special tokens kept).
        """
        if grader not in GRADERS:
            raise ValueError(f"grader must be one of {', '.join(map(repr, GRADERS))}, got {grader!r}.")
        if grader == "paper":
            if self.paper_score is None:
                raise ValueError(f"Task {self.name!r} has no paper grader; use grader='strict'.")
            return self.paper_score(text, example)
        return self.strict_score(text, example)

    # ------------------------------------------------------------------------------------------------------------
    # Data

    def raw_rows(self, split: str, data: DataArg = None) -> datasets.Dataset:
        """Rows of ``split`` in the source's own schema (see `DataArg` for ``data``)."""
        if data is None:
            data = self.default_data.get(split, "hub" if split in self.hub else "builtin")
        if isinstance(data, str) and data in ("hub", PAPER, *_BUILTIN_NAMES):
            if data == PAPER:
                if self.paper is None:
                    raise ValueError(f"Task {self.name!r} ships none of the paper's data; use 'hub' or 'builtin'.")
                rows = self.paper(split)
                return rows if isinstance(rows, datasets.Dataset) else datasets.Dataset.from_list(rows)
            if data == "hub":
                if split not in self.hub:
                    raise ValueError(f"Task {self.name!r} has no Hub data for split {split!r}.")
                return self.hub[split].load()
            if self.builtin is None:
                raise ValueError(f"Task {self.name!r} has no built-in data; pass a Hub split or local files.")
            return datasets.Dataset.from_list(self.builtin(split))
        return load_rows(data, split)

    def examples(self, split: str = "test", data: DataArg = None, limit: int | None = None) -> datasets.Dataset:
        """The task's columns for ``split`` (``prepare`` applied, ``keep`` filtered, the first ``limit`` rows)."""
        raw = self.raw_rows(split, data)
        try:
            # In memory: `datasets` fingerprints a module-level function by its name, so a cached result would outlive
            # a change of `prepare` (a new column after an upgrade); preparing takes seconds even on the Hub splits.
            prepared = raw.map(
                self.prepare,
                remove_columns=raw.column_names,
                keep_in_memory=True,
                desc=f"{self.name}: preparing {split}",
            )
        except KeyError as missing:
            raise ValueError(
                f"The {self.name} task's {split} data has columns {raw.column_names}, not {missing} (from {data!r}); "
                "use the dataset's own schema."
            ) from None
        if self.keep is not None:
            prepared = prepared.filter(self.keep, keep_in_memory=True)
        if limit is not None:
            prepared = prepared.select(range(min(limit, len(prepared))))
        return prepared

    def format_prompt(self, example: dict, style: str | None = None, **options) -> Prompt:
        """The prompt of one example in ``style`` (default: the paper's evaluation prompt)."""
        style = style or self.eval_prompt
        if style not in self.prompts:
            raise ValueError(f"Task {self.name!r} has prompt styles {sorted(self.prompts)}, not {style!r}.")
        return self.prompts[style](example, **options)

    def dataset(
        self,
        split: str = "train",
        *,
        prompt_style: str | None = None,
        data: DataArg = None,
        limit: int | None = None,
        **prompt_options,
    ) -> datasets.Dataset:
        """A dataset for `SPGTrainer` / evaluation: a ``prompt`` column plus the columns the rewards read.

        ``prompt_style`` defaults to the paper's training prompt for the train split and to its evaluation prompt
        otherwise; ``prompt_options`` go to the formatter (e.g. Sudoku's ``few_shot``).
        """
        style = prompt_style or (self.train_prompt if split == "train" else self.eval_prompt)
        examples = self.examples(split, data, limit)
        prompts = [self.format_prompt(example, style, **prompt_options) for example in examples]
        return examples.add_column("prompt", prompts) if prompts else examples

    def __repr__(self) -> str:
        return f"Task({self.name!r})"
