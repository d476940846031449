"""Equinox score networks. Each takes ONE example: `model(x)` or `model(x, sigma)`."""

from .config import from_config, model_config
from .ensemble import ScoreEnsemble
from .mlp import MLP, NoiseConditionalMLP
from .unet import UNet
from .classifier import Classifier

__all__ = ["Classifier", "MLP", "NoiseConditionalMLP", "ScoreEnsemble", "UNet", "from_config", "model_config"]
