"""Masked diffusion LM checkpoints: LLaDA / Dream converted onto native transformers classes, and loading."""

from .checkpoints import (
    SUPPORTED_FORMATS,
    checkpoint_format,
    conversion_cache_dir,
    convert_checkpoint,
    converted_checkpoint,
    dream_to_qwen2_config,
    llada_to_llama_config,
    load_model_and_tokenizer,
    map_parameter_name,
    resolve_checkpoint,
)

__all__ = [
    "SUPPORTED_FORMATS",
    "checkpoint_format",
    "conversion_cache_dir",
    "convert_checkpoint",
    "converted_checkpoint",
    "dream_to_qwen2_config",
    "llada_to_llama_config",
    "load_model_and_tokenizer",
    "map_parameter_name",
    "resolve_checkpoint",
]
