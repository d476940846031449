"""score_models: the companion library of the book *Score-Based Generative Models from First
Principles*. A thin layer over JAX, equinox, optax and diffrax whose hot loops are single jitted
kernels."""

__version__ = "0.1.0"

from . import artifacts, conversions, data, losses, metrics, models, plotting, samplers, zoo
from .distributions import GaussianMixture
from .noise import geometric_sigmas
from .samplers import (
    LikelihoodResult,
    SamplerResult,
    annealed_langevin,
    classifier_free_score,
    edm_sampler,
    edm_sigmas,
    guided_score,
    inpaint,
    langevin,
    log_likelihood,
    predictor_corrector,
    probability_flow_ode,
    reverse_sde,
    tweedie_denoise,
)
from .sde import SDE, VESDE, VPSDE
from .training import fit

__all__ = [
    "GaussianMixture",
    "LikelihoodResult",
    "SamplerResult",
    "SDE",
    "VESDE",
    "VPSDE",
    "annealed_langevin",
    "artifacts",
    "conversions",
    "data",
    "classifier_free_score",
    "edm_sampler",
    "edm_sigmas",
    "fit",
    "geometric_sigmas",
    "guided_score",
    "inpaint",
    "langevin",
    "log_likelihood",
    "losses",
    "metrics",
    "models",
    "plotting",
    "predictor_corrector",
    "probability_flow_ode",
    "reverse_sde",
    "samplers",
    "tweedie_denoise",
    "zoo",
]
