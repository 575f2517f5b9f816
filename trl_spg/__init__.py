"""SPG (Sandwiched Policy Gradient) for masked diffusion language models, on top of TRL."""

from .config import SPGConfig
from .trainer import SPGTrainer

__version__ = "0.1.0"
__all__ = ["SPGConfig", "SPGTrainer"]
