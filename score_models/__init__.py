"""score_models: the companion library of the book *Score-Based Generative Models from First
Principles*. A thin layer over JAX, equinox, optax and diffrax whose hot loops are single jitted
kernels."""

__version__ = "0.1.0"

from . import artifacts, data, losses, metrics, models, plotting, zoo
from .distributions import GaussianMixture
from .noise import geometric_sigmas
from .ode import log_likelihood, probability_flow_ode
from .sampling import annealed_langevin, langevin
from .sde import VESDE, predictor_corrector, reverse_sde
from .training import fit

__all__ = [
    "GaussianMixture",
    "VESDE",
    "annealed_langevin",
    "artifacts",
    "data",
    "fit",
    "geometric_sigmas",
    "langevin",
    "log_likelihood",
    "losses",
    "metrics",
    "models",
    "plotting",
    "predictor_corrector",
    "probability_flow_ode",
    "reverse_sde",
    "zoo",
]
