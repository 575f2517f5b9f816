"""SPG (Sandwiched Policy Gradient) for masked diffusion language models, on top of TRL."""

from .checkpoints import load_model_and_tokenizer
from .config import SPGConfig
from .sampler import completion_mask_from_ids, diffusion_generate
from .trainer import SPGTrainer

__version__ = "0.1.0"
__all__ = ["SPGConfig", "SPGTrainer", "completion_mask_from_ids", "diffusion_generate", "load_model_and_tokenizer"]
