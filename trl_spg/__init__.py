"""SPG (Sandwiched Policy Gradient) for masked diffusion language models, on top of TRL; d1 and wd1 as baselines."""

from .checkpoints import load_model_and_tokenizer
from .config import SPGConfig
from .d1 import DiffuGRPOConfig, DiffuGRPOTrainer
from .diffusion_config import DiffusionGRPOConfig
from .diffusion_trainer import DiffusionGRPOTrainer
from .sampler import completion_mask_from_ids, diffusion_generate
from .trainer import SPGTrainer
from .wd1 import WD1Config, WD1Trainer

__version__ = "0.1.0"
__all__ = [
    "DiffuGRPOConfig",
    "DiffuGRPOTrainer",
    "DiffusionGRPOConfig",
    "DiffusionGRPOTrainer",
    "SPGConfig",
    "SPGTrainer",
    "WD1Config",
    "WD1Trainer",
    "completion_mask_from_ids",
    "diffusion_generate",
    "load_model_and_tokenizer",
]
