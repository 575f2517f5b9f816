"""Masked diffusion LM checkpoints: LLaDA / Dream converted onto native transformers classes, and loading."""

from .checkpoints import *  # noqa: F403
from .checkpoints import __all__  # noqa: F401
