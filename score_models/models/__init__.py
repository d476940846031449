"""Equinox score networks. Each takes ONE example: `model(x)` or `model(x, sigma)`."""

from .config import from_config, model_config
from .ensemble import ScoreEnsemble
from .mlp import MLP, NoiseConditionalMLP

__all__ = ["MLP", "NoiseConditionalMLP", "ScoreEnsemble", "from_config", "model_config"]
