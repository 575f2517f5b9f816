"""What both command lines share: one-line errors and exit statuses, and the checks run before any model loads.

A user error (a bad flag, file, model name or setting; the Hub out of reach) ends the command with one line on
stderr naming the fix and exit status 2; ``--debug`` (or ``TRL_SPG_DEBUG=1``) shows the traceback instead. Other
exceptions are bugs and keep their traceback. Success is status 0; Ctrl-C is 130.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

DEBUG_ENV = "TRL_SPG_DEBUG"
#: Written by `trl-spg` beside a model trained on a task, read by `trl-spg-evaluate` as its defaults: the task, prompts
#: and greedy decoding the run was evaluated with.
EVALUATION_SETTINGS = "evaluation_settings.json"
_HUB_HINT = (
    "Could not reach the Hugging Face Hub: offline? Set HF_HUB_OFFLINE=1 to use only what is cached, or give a local "
    "folder or file."
)


def run(main: Callable[[list[str]], object], prog: str, argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` as a command: the exit status, with user errors reported in one line (see the module)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted. A run that saved checkpoints resumes with --resume_from_checkpoint last.",
              file=sys.stderr)  # fmt: skip
        return 130
    except (ValueError, OSError, ImportError) as error:
        if debug:
            raise
        print(f"{prog}: error: {user_message(error)} [--debug shows the traceback]", file=sys.stderr)
        return 2
    return 0


def user_message(error: BaseException) -> str:
    """The error in one line, with a hint where the cause is common (unknown flags or YAML keys, the Hub offline)."""
    text = " ".join(str(error).split())
    unknown = re.search(r"Unknown arguments from config file: \[(.*)\]", text)
    if unknown:
        keys = [key.strip(" '-") for key in unknown.group(1).split(",")][::2]
        return f"the --config file sets unknown keys: {', '.join(keys)} (no such flag; see --help)."
    unknown = re.search(r"not used by the \w+: \[(.*)\]", text)
    if unknown:
        return f"unknown arguments: {unknown.group(1)} (see --help)."
    if "bf16/gpu" in text:
        return "bf16 needs a GPU: on a CPU pass --bf16 false --use_cpu true."
    if _is_hub_error(error):
        return f"{text} {_HUB_HINT}"
    return text


@contextlib.contextmanager
def naming_hub_errors(flag: str, value: str | None):
    """Hub errors inside name the flag that caused them: ``flag`` (the model), or ``--push_to_hub`` for uploads."""
    try:
        yield
    except (ValueError, OSError, ImportError) as error:
        if not _is_hub_error(error):
            raise
        text = str(error)
        culprit = (
            "--push_to_hub" if any(s in text for s in ("repos/create", "upload", "/preupload/")) else f"{flag} {value}"
        )
        raise ValueError(f"{culprit}: {user_message(error)}") from error


def _is_hub_error(error: BaseException) -> bool:
    module = type(error).__module__
    if (
        module.startswith(("huggingface_hub", "httpx", "requests", "urllib3"))
        and "Validation" not in type(error).__name__
    ):
        return True
    text = str(error)
    return isinstance(error, OSError) and any(s in text for s in ("huggingface.co", "couldn't connect", "offline"))


def flag_or_config_value(argv: list[str], name: str, default=None):
    """The value of ``--name`` in ``argv``, else of ``name`` in the ``--config`` YAML file, else ``default``.

    For the few settings that decide how the rest is parsed (the config class, which defaults apply), read before
    the full parse: building the configs first would already validate them against the wrong defaults.
    """
    import yaml

    pre_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre_parser.add_argument(f"--{name}", default=None)
    pre_parser.add_argument("--config", default=None)
    known = pre_parser.parse_known_args(argv)[0]
    if getattr(known, name) is not None:
        return getattr(known, name)
    if known.config:
        with open(known.config) as handle:
            value = (yaml.safe_load(handle) or {}).get(name)
        if value is not None:
            return value
    return default


# ---------------------------------------------------------------------------------------------------------------------
# Checks before any model loads


def check(condition: bool, message: str) -> None:
    """A user error unless ``condition``: ``message`` names the flag and its fix."""
    if not condition:
        raise ValueError(message)


def check_positive(value: int | None, flag: str) -> None:
    check(value is None or value >= 1, f"{flag} {value}: must be at least 1.")


def check_output_dir(path: str | os.PathLike | None, flag: str = "--output_dir") -> None:
    check(path is None or not Path(path).exists() or Path(path).is_dir(), f"{flag} {path}: a file is in the way.")


def check_model_name(name: str | None, flag: str = "--model_name_or_path") -> None:
    """A local folder that exists, or a well-formed Hub id (whether it exists is the Hub's to say)."""
    if not name:
        return
    path = Path(name).expanduser()
    if path.exists():
        check(path.is_dir(), f"{flag} {name}: a file, not a model folder.")
        return
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    check(not looks_local, f"{flag} {name}: no such folder.")
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except ValueError:
        raise ValueError(f"{flag} {name}: neither a local folder nor a Hub id (owner/name).") from None


def check_prompt_column(dataset, flag: str) -> None:
    columns = getattr(dataset, "column_names", None)
    check(
        columns is None or "prompt" in columns,
        f"{flag}: the data has columns {columns} but no 'prompt' column (a string or a list of chat messages).",
    )


def resolve_checkpoint_flag(value: str | bool | None, output_dir: str | None) -> str | None:
    """``--resume_from_checkpoint``: ``true`` / ``last`` is the latest ``checkpoint-*`` of the output folder (as
    TRL users expect), ``false`` / ``none`` nothing, anything else a checkpoint folder that must exist."""
    from transformers.trainer_utils import get_last_checkpoint

    if value is None or value is False or str(value).lower() in ("false", "none", ""):
        return None
    if value is True or str(value).lower() in ("true", "last"):
        last = get_last_checkpoint(output_dir) if output_dir and os.path.isdir(output_dir) else None
        check(last is not None, f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}.")
        return last
    check(os.path.isdir(value), f"--resume_from_checkpoint {value}: no such checkpoint folder.")
    return str(value)
