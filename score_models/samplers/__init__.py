"""Samplers: every one returns a `SamplerResult`.

- `langevin.py`: plain and annealed Langevin dynamics (one `lax.scan`);
- `reverse.py`: the reverse-time SDE (VE or VP), Euler-Maruyama and predictor-corrector;
- `ode.py`: the probability-flow ODE (diffrax) and the exact log-likelihood;
- `edm.py`: Euler (DDIM) and Heun steps of the PF-ODE on a fixed schedule (`edm_sigmas`),
  with optional churn (Karras et al. 2022);
- `tweedie.py`: Tweedie's denoising step, the optional last step of every sampler;
- `guidance.py`: guided score functions (classifier and classifier-free guidance) and
  inpainting by replacement;
- `result.py`: `SamplerResult`.

They share argument names: `score_fn`, `x_init` (the starting particles, `(n, *shape)`), `key`,
`denoise`, `trajectory_every` (the stochastic samplers; the PF-ODE saves at `save_sigmas`) and
`throw`.
"""

from .edm import edm_sampler, edm_sigmas
from .guidance import (
    ClassifierFreeScore,
    ClassLogLikelihood,
    GuidedScore,
    class_log_likelihood,
    classifier_free_score,
    guided_score,
    inpaint,
)
from .langevin import annealed_langevin, langevin
from .ode import LikelihoodResult, log_likelihood, probability_flow_ode
from .result import SamplerResult
from .reverse import predictor_corrector, reverse_sde
from .tweedie import tweedie_denoise

__all__ = [
    "ClassLogLikelihood",
    "ClassifierFreeScore",
    "GuidedScore",
    "LikelihoodResult",
    "SamplerResult",
    "annealed_langevin",
    "class_log_likelihood",
    "classifier_free_score",
    "edm_sampler",
    "edm_sigmas",
    "guided_score",
    "inpaint",
    "langevin",
    "log_likelihood",
    "predictor_corrector",
    "probability_flow_ode",
    "reverse_sde",
    "tweedie_denoise",
]
