"""Equinox score networks. Each takes ONE example: `model(x)` or `model(x, sigma)`."""

from .config import from_config, model_config
from .ensemble import ScoreEnsemble
from .mlp import MLP, NoiseConditionalMLP
from .unet import UNet
from .classifier import Classifier
from .conditional import ClassConditionalMLP, NoiseConditionalClassifier
from .conditional_images import ClassConditionalUNet, NoiseConditionalCNN

__all__ = ["ClassConditionalMLP", "ClassConditionalUNet", "Classifier", "NoiseConditionalCNN",
           "NoiseConditionalClassifier", "MLP", "NoiseConditionalMLP", "ScoreEnsemble", "UNet", "from_config", "model_config"]
