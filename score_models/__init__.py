"""score_models: the companion library of the book *Score-Based Generative Models from First
Principles*. A thin layer over JAX, equinox, optax and diffrax whose hot loops are single jitted
kernels."""

__version__ = "0.1.0"

from . import artifacts, data, losses, metrics, models, plotting, zoo
from .distributions import GaussianMixture
from .noise import geometric_sigmas
from .sampling import annealed_langevin, langevin
from .training import fit

__all__ = [
    "GaussianMixture",
    "annealed_langevin",
    "artifacts",
    "data",
    "fit",
    "geometric_sigmas",
    "langevin",
    "losses",
    "metrics",
    "models",
    "plotting",
    "zoo",
]
