"""The trainers: TRL's `GRPOTrainer` with diffusion rollouts (`DiffusionGRPOTrainer`), and SPG, d1 and wd1 on it."""

from .d1_config import DiffuGRPOConfig
from .d1_trainer import DiffuGRPOTrainer
from .diffusion_config import DiffusionGRPOConfig
from .diffusion_trainer import DiffusionGRPOTrainer
from .spg_config import SPGConfig
from .spg_trainer import SPGTrainer
from .wd1_config import WD1Config
from .wd1_trainer import WD1Trainer

__all__ = [
    "DiffuGRPOConfig",
    "DiffuGRPOTrainer",
    "DiffusionGRPOConfig",
    "DiffusionGRPOTrainer",
    "SPGConfig",
    "SPGTrainer",
    "WD1Config",
    "WD1Trainer",
]
