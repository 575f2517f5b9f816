"""SPG (Sandwiched Policy Gradient) for masked diffusion language models, on top of TRL; d1 and wd1 as baselines.

Names are imported on first use (as TRL does), so `import trl_spg` stays cheap and loads TRL only when a trainer
or config is asked for.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "DecodingConfig": "trl_spg.decoding",
    "DiffuGRPOConfig": "trl_spg.trainers",
    "DiffuGRPOTrainer": "trl_spg.trainers",
    "DiffusionGRPOConfig": "trl_spg.trainers",
    "DiffusionGRPOTrainer": "trl_spg.trainers",
    "SPGConfig": "trl_spg.trainers",
    "SPGTrainer": "trl_spg.trainers",
    "WD1Config": "trl_spg.trainers",
    "WD1Trainer": "trl_spg.trainers",
    "completion_mask_from_ids": "trl_spg.sampler",
    "diffusion_generate": "trl_spg.sampler",
    "load_model_and_tokenizer": "trl_spg.models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trl_spg' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
