"""SPG (Sandwiched Policy Gradient) for masked diffusion language models, on top of TRL."""

__version__ = "0.1.0"
