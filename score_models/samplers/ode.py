"""The probability-flow ODE of the VE SDE: deterministic sampling and exact log-likelihoods.

With `p_sigma` the data convolved with `N(0, sigma^2 I)`, the ODE

    dx / dsigma = -sigma grad log p_sigma(x) ~= -sigma score_fn(x, sigma)

transports `p_sigma_max` to `p_sigma_min` (and back): every marginal along the way is exactly
`p_sigma`. Integrating it from `sigma_max` down to `sigma_min` with diffrax is a deterministic
sampler (`probability_flow_ode`); integrating it upwards jointly with the divergence of its
vector field gives the log-density by the instantaneous change of variables (`log_likelihood`).

**One solve for the whole batch.** Both functions integrate ONE `diffrax.diffeqsolve` whose
state is the whole `(n, *shape)` batch, the vector field being `score_fn` vmapped over
particles, rather than `vmap(diffeqsolve)`:

- a single step-size sequence: one while-loop with no per-particle masking, a common set of
  saved noise levels for trajectories, and one well-defined number of score evaluations;
- the step-size controller measures the error with `max over particles of the per-particle
  RMS` (not diffrax's default RMS over the whole batch, which would dilute one particle's
  error by `sqrt(n)`), so every particle meets `rtol`/`atol`;
- measured on the 2D mixture (1,000 particles, Tsit5, exact score, against a float64
  reference): at the same `rtol = atol` it costs about 1.25x `vmap(diffeqsolve)` (whose loop
  also runs until its slowest particle, computing every particle at every iteration) but its
  worst particle is 10-50x more accurate; at equal accuracy it is the cheaper of the two
  (1e-4 here: 42 ms CPU, worst error 8e-4; `vmap` at 1e-5: 53 ms, 5e-3).

The price: a particle's result depends, within the solver tolerance, on the rest of its batch
(the same batch always gives bitwise the same result).

`probability_flow_ode` returns a `SamplerResult` like every sampler; `log_likelihood` a
`LikelihoodResult`. A failed solve is always an error that says why (a score that turned NaN or
inf, or `max_steps`), never a silently truncated result.
"""

from __future__ import annotations

from typing import Callable, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import (
    as_float_array,
    check_bool,
    check_callable,
    check_key,
    check_particles,
    check_positive_int,
    check_score_fn,
    check_sigma_range,
    is_concrete,
)
from ..sde import SDE, VESDE, sampling_times
from ._scan import tweedie_step
from ._solver import check_save_sigmas, check_solve, score_evals, setup_solver
from .result import SamplerResult, finish

__all__ = ["LikelihoodResult", "log_likelihood", "probability_flow_ode"]


def _sigma_scalar(name, value, dtype):
    return as_float_array(name, value, ndim=0).astype(dtype)


def _scaled_field(sde: SDE, score_fn):
    """The probability-flow ODE in sigma of the state `y = s(sigma) x` of a scaled SDE,
    `dy/dsigma = (s'/s) y - s sigma score_fn(y / s, sigma)`, for ONE example."""

    def field(y, sigma):
        a, da = jax.jvp(sde.scale_at, (sigma,), (jnp.ones_like(sigma),))
        return (da / a) * y - a * sigma * score_fn(y / a, sigma)

    return field


def _check_sde(sde, sigma_max, sigma_min) -> SDE | None:
    """None for the VE SDE (whose ODE in sigma is the default one), else the checked SDE."""
    if sde is None:
        return None
    sampling_times(sde, sigma_max, sigma_min)  # checks the type and the range
    return None if isinstance(sde, VESDE) else sde


@eqx.filter_jit
def _pf_ode_kernel(score_fn, x_init, sigma_max, sigma_min, save_sigmas, solver, controller, dt0,
                   max_steps, denoise, sde=None):
    batched_score = jax.vmap(score_fn, in_axes=(0, None))
    if sde is None:
        def drift(sigma, x, args):
            return -sigma * batched_score(x, sigma)
    else:
        batched_field = jax.vmap(_scaled_field(sde, score_fn), in_axes=(0, None))

        def drift(sigma, x, args):
            return batched_field(x, sigma)

    subs = [diffrax.SubSaveAt(t1=True)]
    if save_sigmas is not None:
        subs.append(diffrax.SubSaveAt(ts=save_sigmas))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(drift), solver, sigma_max, sigma_min, None if dt0 is None else -dt0, x_init,
        saveat=diffrax.SaveAt(subs=subs), stepsize_controller=controller, max_steps=max_steps,
        throw=False,
    )
    x = sol.ys[0][-1]
    trajectory = sol.ys[1] if save_sigmas is not None else None
    before = x
    if denoise:
        if sde is not None:  # Tweedie's step in the data's coordinates
            x = x / sde.scale_at(sigma_min)
        x, trajectory = tweedie_step(batched_score, x, sigma_min, trajectory)
    return x, trajectory, before, sol.stats, sol.result, sol.ts[0][-1]


def probability_flow_ode(
    score_fn: Callable,
    x_init: Float[Array, "n *shape"],
    *,
    sigma_max: float,
    sigma_min: float,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    save_sigmas: Float[Array, " k"] | None = None,
    dt0: float | None = None,
    max_steps: int = 4096,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    sde: SDE | None = None,
    denoise: bool = False,
    throw: bool = True,
) -> SamplerResult:
    """Samples by solving the probability-flow ODE `dx/dsigma = -sigma score_fn(x, sigma)` from
    `sigma_max` down to `sigma_min` with diffrax.

    With a scaled SDE (`sde=sm.VPSDE()`) the state is `y = s(sigma) x` and the ODE becomes
    `dy/dsigma = (s'/s) y - s sigma score_fn(y / s, sigma)`: the same paths, scaled (Karras et
    al. 2022), but a different error for a given step. In sigma the ODE depends on the SDE's
    scale `s(sigma)` only, not on its clock (for the VP SDE `s = 1 / sqrt(1 + sigma^2)` whatever
    `beta`); the VE SDE's is the default ODE.

    All particles are integrated in ONE jitted `diffeqsolve` over the `(n, *shape)` state (see
    the module docstring for why, and for the error norm). A given `score_fn` compiles once per
    shape and option set; `sigma_max`, `sigma_min` and `save_sigmas` are traced, so changing
    their values does not recompile. Deterministic: the same `x_init` gives the same output.

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score` for ONE example `x` of shape `(*shape)`.
    - `x_init`: `(n, *shape)` particles at `sigma_max` (in the SDE's coordinates), typically
      `sigma_max * N(0, I)`; `sde.prior_sample(key, shape, sigma_max)` for a scaled SDE.
    - `sigma_max`, `sigma_min`: the noise levels at the start and the end (`sigma_min < sigma_max`).
    - `solver`: a diffrax ODE solver; default (None) the adaptive `diffrax.Tsit5()`.
    - `rtol`, `atol`: tolerances of the adaptive step-size controller (per particle); default
      1e-5 each. Refused when they have no use (a `stepsize_controller`, or a solver without an
      error estimate).
    - `save_sigmas`: strictly decreasing noise levels in `[sigma_min, sigma_max]` at which to
      also keep the particles (`diffrax.SaveAt`, by dense interpolation): the trajectory.
    - `dt0`: the first step in sigma (positive) for adaptive solvers (default 1% of
      `sigma_max - sigma_min`); the constant step for solvers without an error estimate
      (e.g. `diffrax.Euler()`), where it is required.
    - `max_steps`: the most steps before the solve fails with an error.
    - `stepsize_controller`: overrides the controller, e.g.
      `diffrax.StepTo(ts=sm.geometric_sigmas(sigma_max, sigma_min, k))` for a fixed
      geometric grid (with `dt0=None`; its first and last times, which must be within 1e-5
      relative of `sigma_max` and `sigma_min`, are set to exactly those).
    - `denoise`: finish with Tweedie's step `x + sigma_min^2 s(x, sigma_min)` (one more score
      evaluation), as the stochastic samplers do.
    - `throw`: raise a `FloatingPointError` when particles end NaN or inf; with False the result
      reports them in `n_diverged`. A solve that fails (`max_steps` reached, or a score that
      turns NaN under an adaptive solver, which then rejects every step) always raises.

    **Returns:** a `SamplerResult`: `samples` `(n, *shape)` at `sigma_min` (denoised with
    `denoise`); `trajectory` of shape `(len(save_sigmas) [+ 1 if denoise], n, *shape)` and
    `trajectory_sigmas` (`save_sigmas` [, 0]) with `save_sigmas`; `score_evals` (None for
    solvers whose count is not known, e.g. implicit ones); `stats` with `num_steps`,
    `num_accepted_steps` and `num_rejected_steps`.
    """
    x_init = check_particles("x_init", x_init)
    dtype = x_init.dtype
    check_sigma_range(sigma_max, sigma_min, dtype)
    solver = diffrax.Tsit5() if solver is None else solver
    controller, dt0, max_steps = setup_solver(solver, stepsize_controller, rtol, atol, dt0,
                                              sigma_max, sigma_min, max_steps, dtype)
    save = None if save_sigmas is None else check_save_sigmas(save_sigmas, sigma_max, sigma_min, dtype)
    denoise = check_bool("denoise", denoise)
    throw = check_bool("throw", throw)
    sde = _check_sde(sde, sigma_max, sigma_min)
    check_score_fn(score_fn, x_init, conditional=True)
    smin = _sigma_scalar("sigma_min", sigma_min, dtype)
    x, trajectory, before, stats, result, reached = _pf_ode_kernel(
        score_fn, x_init, _sigma_scalar("sigma_max", sigma_max, dtype), smin, save, solver,
        controller, None if dt0 is None else jnp.asarray(dt0, dtype), max_steps, denoise,
        *(() if sde is None else (sde,)),
    )
    check_solve("probability_flow_ode", result, reached, before, score_fn, sigma_min, max_steps)
    evals = score_evals(solver, stats["num_steps"])
    traj_sigmas = None
    if save is not None:
        traj_sigmas = jnp.concatenate([save, jnp.zeros((1,), dtype)]) if denoise else save
    return finish("probability_flow_ode", x, trajectory=trajectory, trajectory_sigmas=traj_sigmas,
                  before=before if denoise else None,
                  score_evals=None if evals is None else evals + int(denoise),
                  stats=_stats(stats), throw=throw, hint="a score model that is finite on the whole noise range")


def _stats(stats) -> dict:
    keys = ("num_steps", "num_accepted_steps", "num_rejected_steps")
    if not is_concrete(stats["num_steps"]):  # under jit
        return {k: stats[k] for k in keys}
    return {k: int(stats[k]) for k in keys}


# ------------------------------------------------------------------------------------------
# Log-likelihood


class LikelihoodResult(eqx.Module):
    """What `log_likelihood` returns.

    **Fields:**

    - `log_prob`: `(n,)` the log-density of each example at `sigma_min`.
    - `score_evals`: evaluations of the vector field per example (each one score evaluation
      plus its Jacobian-vector products); None for solvers whose count is unknown.
    - `stats`: `num_steps`, `num_accepted_steps`, `num_rejected_steps` of the solve.
    """

    log_prob: Float[Array, " n"]
    score_evals: int | None
    stats: dict[str, int]


def _gaussian_prior(sigma_max):
    def prior_logp(x):
        d = x.size
        return -0.5 * jnp.sum(x**2) / sigma_max**2 - 0.5 * d * jnp.log(2 * jnp.pi * sigma_max**2)

    return prior_logp


@eqx.filter_jit
def _log_likelihood_kernel(score_fn, x, sigma_min, sigma_max, prior_logp, probes, probe_scale,
                           solver, controller, dt0, max_steps, sde=None):
    """Integrates `(x, delta)` from `sigma_min` to `sigma_max` with `dx/dsigma = f(x, sigma) =
    -sigma s(x, sigma)` (or the scaled field of `sde`) and `d delta/dsigma = div f`, the
    divergence written as `probe_scale * sum_j p_j^T (df/dx) p_j` over the probes `p_j` (the
    basis vectors for the exact trace, random vectors for Hutchinson's estimator), each a
    forward-mode JVP."""
    per_example_probes = probes.ndim == x.ndim + 1  # (n, m, *shape) vs (m, *shape)
    if prior_logp is None:
        prior_logp = _gaussian_prior(sigma_max if sde is None else sde.scale_at(sigma_max) * sigma_max)
    field = None if sde is None else _scaled_field(sde, score_fn)

    def f_and_div(x1, sigma, p):
        if field is None:
            fx, jvp = jax.linearize(lambda y: -sigma * score_fn(y, sigma), x1)
        else:
            fx, jvp = jax.linearize(lambda y: field(y, sigma), x1)
        jp = jax.vmap(jvp)(p)
        return fx, probe_scale * jnp.sum(p * jp)

    batched = jax.vmap(f_and_div, in_axes=(0, None, 0 if per_example_probes else None))

    def vector_field(sigma, state, args):
        xs, _ = state
        return batched(xs, sigma, probes)

    y0 = (x, jnp.zeros(x.shape[:1], x.dtype))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), solver, sigma_min, sigma_max, dt0, y0,
        saveat=diffrax.SaveAt(t1=True), stepsize_controller=controller, max_steps=max_steps,
        throw=False,
    )
    x_end, delta = sol.ys[0][-1], sol.ys[1][-1]
    return jax.vmap(prior_logp)(x_end) + delta, sol.stats, sol.result, sol.ts[-1], x_end


def _check_prior_logp(prior_logp, shape, dtype) -> None:
    check_callable("prior_logp", prior_logp)
    try:
        out = jax.eval_shape(lambda y: prior_logp(y), jax.ShapeDtypeStruct(shape, dtype))
    except Exception as e:
        raise ValueError(f"`prior_logp` failed on ONE example of shape {shape}: {e}") from e
    if getattr(out, "shape", None) != ():
        raise ValueError(
            f"`prior_logp` must return a scalar for ONE example, got shape "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )


def _probes(x, exact_divergence, key, n_probes, probe):
    """The probe vectors and their weight: the basis (exact trace) or random probes."""
    shape, dtype = x.shape[1:], x.dtype
    d = int(np.prod(shape))
    if exact_divergence:
        for name, value in (("key", key), ("n_probes", n_probes), ("probe", probe)):
            if value is not None:
                raise ValueError(
                    f"`{name}` is used by Hutchinson's estimator only; the divergence is exact here "
                    f"(exact_divergence=True{', the default for d <= 16' if d <= 16 else ''})."
                )
        return jnp.eye(d, dtype=dtype).reshape(d, *shape), 1.0
    n_probes = check_positive_int("n_probes", 1 if n_probes is None else n_probes)
    probe = "rademacher" if probe is None else probe
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"`probe` must be 'rademacher' or 'gaussian', got {probe!r}.")
    if key is None:
        raise ValueError(
            "`key` is required for Hutchinson's divergence estimator (exact_divergence=False"
            + (", the default for d = {} > 16).".format(d) if d > 16 else ").")
        )
    check_key("key", key)
    probe_shape = (x.shape[0], n_probes, *shape)
    if probe == "rademacher":
        probes = jax.random.rademacher(key, probe_shape, dtype=dtype)
    else:
        probes = jax.random.normal(key, probe_shape, dtype=dtype)
    return probes, 1.0 / n_probes


def log_likelihood(
    score_fn: Callable,
    x: Float[Array, "n *shape"],
    *,
    sigma_min: float,
    sigma_max: float,
    prior_logp: Callable | None = None,
    key: PRNGKeyArray | None = None,
    exact_divergence: bool | None = None,
    n_probes: int | None = None,
    probe: Literal["rademacher", "gaussian"] | None = None,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    dt0: float | None = None,
    max_steps: int = 4096,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    sde: SDE | None = None,
) -> LikelihoodResult:
    """The log-density at noise level `sigma_min` of each example, by the instantaneous change of
    variables along the probability-flow ODE.

    With `f(x, sigma) = -sigma score_fn(x, sigma)`, integrate `dx/dsigma = f` from `x` at
    `sigma_min` up to `sigma_max` jointly with `div f`; then

        log p_sigma_min(x) = prior_logp(x(sigma_max)) + integral_{sigma_min}^{sigma_max} div f dsigma.

    With the exact score (`gm.perturbed_score` for a `GaussianMixture` `gm`) and the exact
    prior (`gm.perturbed(sigma_max).log_prob`), this is `gm.perturbed(sigma_min).log_prob(x)` up
    to the solver tolerance. All examples are integrated in ONE jitted `diffeqsolve` (see the
    module docstring).

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score` for ONE example `x` of shape `(*shape)`.
    - `x`: `(n, *shape)` examples.
    - `sigma_min`, `sigma_max`: the noise levels at the start (the density evaluated) and the
      end (the prior) of the integration.
    - `prior_logp`: the log-density at `sigma_max` of ONE example, `(*shape) -> scalar`; default
      `N(0, sigma_max^2 I)` (`N(0, (s sigma_max)^2 I)` for a scaled SDE, `s = s(sigma_max)`). (For
      the VE process the exact prior is the data convolved with `N(0, sigma_max^2 I)`; the
      Gaussian is its approximation for large `sigma_max`.)
    - `exact_divergence`: the exact trace of the Jacobian (`d` forward-mode JVPs per
      evaluation, `d = prod(shape)`) or Hutchinson's unbiased estimator `p^T (df/dx) p` with
      `n_probes` random probes per example, fixed along the trajectory (one JVP each). Default:
      exact when `d <= 16`.
    - `key`: PRNG key of the probes; required for Hutchinson's estimator (and refused with the
      exact divergence, like `n_probes` and `probe`).
    - `n_probes`: Hutchinson probes per example (averaged); default 1.
    - `probe`: `"rademacher"` (entries +-1; lower variance, exact when `d = 1`; the default) or
      `"gaussian"`.
    - `solver`, `rtol`, `atol`, `dt0`, `max_steps`, `stepsize_controller`: as in
      `probability_flow_ode` (the error of the log-density term is controlled too); a `StepTo`
      grid runs upwards, from `sigma_min` to `sigma_max`.
    - `sde`: as in `probability_flow_ode`: with a scaled SDE (`sm.VPSDE()`), `x` is in its
      coordinates at `sigma_min` (`s(sigma_min) (x_data + sigma_min z)`) and the log-density is
      that of the SDE's marginal there (`gm.vp_perturbed(sigma_min).log_prob` for the exact
      score of a mixture `gm`).

    **Returns:** a `LikelihoodResult`: `log_prob` `(n,)`, `score_evals` and `stats`. A solve
    that fails, or a non-finite log-density, raises.
    """
    x = check_particles("x", x)
    dtype = x.dtype
    check_sigma_range(sigma_max, sigma_min, dtype)
    solver = diffrax.Tsit5() if solver is None else solver
    controller, dt0, max_steps = setup_solver(solver, stepsize_controller, rtol, atol, dt0,
                                              sigma_min, sigma_max, max_steps, dtype)
    d = int(np.prod(x.shape[1:]))
    exact_divergence = d <= 16 if exact_divergence is None else check_bool("exact_divergence", exact_divergence)
    probes, probe_scale = _probes(x, exact_divergence, key, n_probes, probe)
    sde = _check_sde(sde, sigma_max, sigma_min)
    check_score_fn(score_fn, x, conditional=True)
    if prior_logp is not None:
        _check_prior_logp(prior_logp, x.shape[1:], dtype)
    logp, stats, result, reached, x_reached = _log_likelihood_kernel(
        score_fn, x, _sigma_scalar("sigma_min", sigma_min, dtype),
        _sigma_scalar("sigma_max", sigma_max, dtype), prior_logp, probes,
        jnp.asarray(probe_scale, dtype), solver, controller,
        None if dt0 is None else jnp.asarray(dt0, dtype), max_steps,
        *(() if sde is None else (sde,)),
    )
    check_solve("log_likelihood", result, reached, x_reached, score_fn, sigma_max, max_steps)
    bad = jnp.sum(~jnp.isfinite(logp))
    if is_concrete(bad) and int(bad):
        raise FloatingPointError(
            f"`log_likelihood`: {bad} of {logp.shape[0]} log-densities are NaN or inf (check "
            "`prior_logp` and the score model)."
        )
    return LikelihoodResult(log_prob=logp, score_evals=score_evals(solver, stats["num_steps"]),
                            stats=_stats(stats))
