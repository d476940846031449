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

Outputs follow the samplers' convention: `x`, `(x, trajectory)` when a trajectory is requested,
and a dict `info` appended last with `return_info=True`; `info["nfe"]` is the number of score
evaluations per particle.
"""

from __future__ import annotations

from typing import Callable, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import as_float_array, check_particles, check_positive, check_positive_int, check_sigmas
from .sampling import check_score_fn
from .sde import check_sigma_range

__all__ = ["log_likelihood", "probability_flow_ode"]


def max_rms_norm(tree) -> Float[Array, ""]:
    """The largest per-example RMS of a pytree whose leaves have a leading batch axis `n`.

    Used as the step-size controller's norm so that EVERY example meets the tolerances.
    """
    leaves = jax.tree.leaves(tree)
    n = leaves[0].shape[0]
    squares = sum(jnp.sum(jnp.reshape(jnp.abs(leaf) ** 2, (n, -1)), axis=1) for leaf in leaves)
    size = sum(int(np.prod(leaf.shape[1:])) for leaf in leaves)
    return jnp.sqrt(jnp.max(squares) / size)


def _evals_per_step(solver) -> tuple[int, int] | None:
    """`(score evaluations per step, extra evaluations at the start)`, or None when unknown.

    Explicit Runge-Kutta solvers evaluate every stage once per step (accepted or rejected);
    first-same-as-last (FSAL) ones reuse their last stage, so one stage is evaluated only on
    the first step. Checked against a counting callback in the tests.
    """
    if isinstance(solver, diffrax.Euler):
        return 1, 0
    if isinstance(solver, diffrax.AbstractERK):
        stages = len(solver.tableau.c) + 1
        fsal = int(bool(solver.tableau.fsal))
        return stages - fsal, fsal
    return None


def _nfe(solver, num_steps):
    per = _evals_per_step(solver)
    if per is None:
        return None
    return per[0] * int(num_steps) + per[1]


def _step_to(controller, start, end, dtype):
    """A `diffrax.StepTo` whose first and last times are exactly `start` and `end` (diffrax
    requires equality; `geometric_sigmas` endpoints can be an ulp off in float32)."""
    ts = np.asarray(controller.ts, np.float64)
    direction = 1.0 if end > start else -1.0
    close = lambda a, b: abs(a - b) <= 1e-5 * abs(b)  # noqa: E731
    if (ts.ndim != 1 or ts.size < 2 or not np.all(np.isfinite(ts)) or np.any(direction * np.diff(ts) <= 0)
            or not close(ts[0], start) or not close(ts[-1], end)):
        raise ValueError(
            f"`stepsize_controller` StepTo times must run monotonically from {start} to {end} "
            f"(the direction of integration), got {ts.size} time(s)"
            + (f" from {ts.flat[0]} to {ts.flat[-1]}." if ts.size else ".")
        )
    ts = jnp.asarray(ts, dtype).at[0].set(start).at[-1].set(end)
    return diffrax.StepTo(ts=ts)


def _setup_solver(solver, stepsize_controller, rtol, atol, dt0, start, end, max_steps, dtype):
    """Validates the solver options for a solve from `start` to `end` (noise levels); returns
    `(controller, dt0, max_steps)` with `dt0` positive or None."""
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(f"`solver` must be a diffrax solver (e.g. diffrax.Tsit5()), got {solver!r}.")
    max_steps = check_positive_int("max_steps", max_steps)
    if dt0 is not None:
        check_positive("dt0", dt0)
    if stepsize_controller is not None:
        if isinstance(stepsize_controller, diffrax.StepTo):
            if dt0 is not None:
                raise ValueError("`dt0` must be None with a StepTo `stepsize_controller`.")
            controller = _step_to(stepsize_controller, float(start), float(end), dtype)
            return controller, None, max(max_steps, controller.ts.shape[0])
        if not isinstance(stepsize_controller, diffrax.AbstractStepSizeController):
            raise ValueError(
                "`stepsize_controller` must be a diffrax step-size controller, got "
                f"{type(stepsize_controller).__name__}."
            )
        return stepsize_controller, dt0, max_steps
    if isinstance(solver, diffrax.AbstractAdaptiveSolver):
        check_positive("rtol", rtol)
        check_positive("atol", atol)
        controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=max_rms_norm)
        if dt0 is None:
            # Our own first step (diffrax's automatic choice is a fixed 0.01 for wrapped terms).
            dt0 = 0.01 * abs(end - start)
        return controller, dt0, max_steps
    if dt0 is None:
        raise ValueError(
            f"`dt0` is required for {type(solver).__name__}, which has no error estimate "
            "(or pass stepsize_controller=diffrax.StepTo(ts=...))."
        )
    return diffrax.ConstantStepSize(), dt0, max_steps


def _check_save_sigmas(save_sigmas, sigma_max, sigma_min, dtype):
    """Strictly decreasing levels within `[sigma_min, sigma_max]` (clipped within 1e-5 relative,
    so `geometric_sigmas(sigma_max, sigma_min, k)` with its float32 round-off is accepted)."""
    save = check_sigmas("save_sigmas", save_sigmas)
    arr = np.asarray(save, np.float64)
    lo, hi = float(sigma_min), float(sigma_max)
    if arr[0] > hi * (1 + 1e-5) or arr[-1] < lo * (1 - 1e-5):
        raise ValueError(
            f"`save_sigmas` must lie within [sigma_min, sigma_max] = [{lo}, {hi}], got "
            f"{arr.tolist()}."
        )
    return jnp.clip(save.astype(dtype), jnp.asarray(lo, dtype), jnp.asarray(hi, dtype))


def _sigma_scalar(name, value, dtype):
    return as_float_array(name, value, ndim=0).astype(dtype)


@eqx.filter_jit
def _pf_ode_kernel(score_fn, x_init, sigma_max, sigma_min, save_sigmas, solver, controller, dt0,
                   max_steps):
    batched_score = jax.vmap(score_fn, in_axes=(0, None))

    def drift(sigma, x, args):
        return -sigma * batched_score(x, sigma)

    subs = [diffrax.SubSaveAt(t1=True)]
    if save_sigmas is not None:
        subs.append(diffrax.SubSaveAt(ts=save_sigmas))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(drift), solver, sigma_max, sigma_min, None if dt0 is None else -dt0, x_init,
        saveat=diffrax.SaveAt(subs=subs), stepsize_controller=controller, max_steps=max_steps,
    )
    x = sol.ys[0][-1]
    trajectory = sol.ys[1] if save_sigmas is not None else None
    return x, trajectory, sol.stats


def probability_flow_ode(
    score_fn: Callable,
    x_init: Float[Array, "n *shape"],
    *,
    sigma_max: float,
    sigma_min: float,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float = 1e-5,
    atol: float = 1e-5,
    save_sigmas=None,
    dt0: float | None = None,
    max_steps: int = 4096,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    return_info: bool = False,
):
    """Samples by solving the probability-flow ODE `dx/dsigma = -sigma score_fn(x, sigma)` from
    `sigma_max` down to `sigma_min` with diffrax.

    All particles are integrated in ONE jitted `diffeqsolve` over the `(n, *shape)` state (see
    the module docstring for why, and for the error norm). A given `score_fn` compiles once per
    shape and option set; `sigma_max`, `sigma_min` and `save_sigmas` are traced, so changing
    their values does not recompile. Deterministic: the same `x_init` gives the same output.

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score` for ONE example `x` of shape `(*shape)`.
    - `x_init`: `(n, *shape)` particles at `sigma_max`, typically `sigma_max * N(0, I)`.
    - `sigma_max`, `sigma_min`: the noise levels at the start and the end (`sigma_min < sigma_max`).
    - `solver`: a diffrax ODE solver; default the adaptive `diffrax.Tsit5()`.
    - `rtol`, `atol`: tolerances of the adaptive step-size controller (per particle).
    - `save_sigmas`: strictly decreasing noise levels in `[sigma_min, sigma_max]` at which to
      also return the particles (`diffrax.SaveAt`, by dense interpolation).
    - `dt0`: the first step in sigma (positive) for adaptive solvers (default 1% of
      `sigma_max - sigma_min`); the constant step for solvers without an error estimate
      (e.g. `diffrax.Euler()`), where it is required.
    - `max_steps`: the most steps before the solve fails with an error.
    - `stepsize_controller`: overrides the controller (then `rtol`/`atol` are unused), e.g.
      `diffrax.StepTo(ts=sm.geometric_sigmas(sigma_max, sigma_min, k))` for a fixed
      geometric grid (with `dt0=None`; its first and last times, which must be within 1e-5
      relative of `sigma_max` and `sigma_min`, are set to exactly those).
    - `return_info`: also return a dict `info` with `"nfe"` (score evaluations per particle,
      `None` for solvers whose count is not known, e.g. implicit ones), `"num_steps"`,
      `"num_accepted_steps"` and `"num_rejected_steps"` (from the solution's stats).

    **Returns:** `x` of shape `(n, *shape)`, the particles at `sigma_min`; `(x, trajectory)`
    with `save_sigmas`, `trajectory` of shape `(len(save_sigmas), n, *shape)`; `info` appended
    last with `return_info=True`.
    """
    x_init = check_particles("x_init", x_init)
    check_sigma_range(sigma_max, sigma_min)
    dtype = x_init.dtype
    controller, dt0, max_steps = _setup_solver(solver, stepsize_controller, rtol, atol, dt0,
                                               sigma_max, sigma_min, max_steps, dtype)
    save = None if save_sigmas is None else _check_save_sigmas(save_sigmas, sigma_max, sigma_min, dtype)
    check_score_fn(score_fn, x_init, sigma=True)
    x, trajectory, stats = _pf_ode_kernel(
        score_fn, x_init, _sigma_scalar("sigma_max", sigma_max, dtype),
        _sigma_scalar("sigma_min", sigma_min, dtype), save, solver, controller,
        None if dt0 is None else jnp.asarray(dt0, dtype), max_steps,
    )
    out = (x,) if save is None else (x, trajectory)
    if return_info:
        out = out + (_info(solver, stats),)
    return out[0] if len(out) == 1 else out


def _info(solver, stats) -> dict:
    return {
        "nfe": _nfe(solver, stats["num_steps"]),
        "num_steps": int(stats["num_steps"]),
        "num_accepted_steps": int(stats["num_accepted_steps"]),
        "num_rejected_steps": int(stats["num_rejected_steps"]),
    }


# ------------------------------------------------------------------------------------------
# Log-likelihood


def _gaussian_prior(sigma_max):
    def prior_logp(x):
        d = x.size
        return -0.5 * jnp.sum(x**2) / sigma_max**2 - 0.5 * d * jnp.log(2 * jnp.pi * sigma_max**2)

    return prior_logp


@eqx.filter_jit
def _log_likelihood_kernel(score_fn, x, sigma_min, sigma_max, prior_logp, probes, probe_scale,
                           solver, controller, dt0, max_steps):
    """Integrates `(x, delta)` from `sigma_min` to `sigma_max` with `dx/dsigma = f(x, sigma) =
    -sigma s(x, sigma)` and `d delta/dsigma = div f`, the divergence written as
    `probe_scale * sum_j p_j^T (df/dx) p_j` over the probes `p_j` (the basis vectors for the
    exact trace, random vectors for Hutchinson's estimator), each a forward-mode JVP."""
    per_example_probes = probes.ndim == x.ndim + 1  # (n, m, *shape) vs (m, *shape)
    if prior_logp is None:
        prior_logp = _gaussian_prior(sigma_max)

    def f_and_div(x1, sigma, p):
        fx, jvp = jax.linearize(lambda y: -sigma * score_fn(y, sigma), x1)
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
    )
    x_end, delta = sol.ys[0][-1], sol.ys[1][-1]
    return jax.vmap(prior_logp)(x_end) + delta, sol.stats


def log_likelihood(
    score_fn: Callable,
    x: Float[Array, "n *shape"],
    *,
    sigma_min: float,
    sigma_max: float,
    prior_logp: Callable | None = None,
    key: PRNGKeyArray | None = None,
    exact_divergence: bool | None = None,
    n_probes: int = 1,
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dt0: float | None = None,
    max_steps: int = 4096,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    return_info: bool = False,
):
    """The log-density at noise level `sigma_min` of each example, by the instantaneous change of
    variables along the probability-flow ODE.

    With `f(x, sigma) = -sigma score_fn(x, sigma)`, integrate `dx/dsigma = f` from `x` at
    `sigma_min` up to `sigma_max` jointly with `div f`; then

        log p_sigma_min(x) = prior_logp(x(sigma_max)) + integral_{sigma_min}^{sigma_max} div f dsigma.

    With the exact score (`gm.perturbed(sigma).score` for a `GaussianMixture`) and the exact
    prior (`gm.perturbed(sigma_max).log_prob`), this is `gm.perturbed(sigma_min).log_prob(x)` up
    to the solver tolerance. All examples are integrated in ONE jitted `diffeqsolve` (see the
    module docstring).

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score` for ONE example `x` of shape `(*shape)`.
    - `x`: `(n, *shape)` examples.
    - `sigma_min`, `sigma_max`: the noise levels at the start (the density evaluated) and the
      end (the prior) of the integration.
    - `prior_logp`: the log-density at `sigma_max` of ONE example, `(*shape) -> scalar`; default
      `N(0, sigma_max^2 I)`. (For the VE process the exact prior is the data convolved with
      `N(0, sigma_max^2 I)`; the Gaussian is its approximation for large `sigma_max`.)
    - `key`: PRNG key of the probes; required for Hutchinson's estimator.
    - `exact_divergence`: the exact trace of the Jacobian (`d` forward-mode JVPs per
      evaluation, `d = prod(shape)`) or Hutchinson's unbiased estimator `p^T (df/dx) p` with
      `n_probes` random probes per example, fixed along the trajectory (one JVP each). Default:
      exact when `d <= 16`.
    - `n_probes`: Hutchinson probes per example (averaged).
    - `probe`: `"rademacher"` (entries +-1; lower variance, exact when `d = 1`) or `"gaussian"`.
    - `solver`, `rtol`, `atol`, `dt0`, `max_steps`, `stepsize_controller`: as in
      `probability_flow_ode` (the error of the log-density term is controlled too); a `StepTo`
      grid runs upwards, from `sigma_min` to `sigma_max`.
    - `return_info`: also return a dict `info` with `"nfe"` (evaluations of the vector field,
      each costing one score evaluation plus its JVPs), `"num_steps"`, ...

    **Returns:** `(n,)` log-densities; `(logp, info)` with `return_info=True`.
    """
    x = check_particles("x", x)
    check_sigma_range(sigma_max, sigma_min)
    dtype = x.dtype
    controller, dt0, max_steps = _setup_solver(solver, stepsize_controller, rtol, atol, dt0,
                                               sigma_min, sigma_max, max_steps, dtype)
    shape = x.shape[1:]
    d = int(np.prod(shape))
    if exact_divergence is None:
        exact_divergence = d <= 16
    if exact_divergence:
        probes = jnp.eye(d, dtype=dtype).reshape(d, *shape)
        probe_scale = 1.0
    else:
        n_probes = check_positive_int("n_probes", n_probes)
        if probe not in ("rademacher", "gaussian"):
            raise ValueError(f"`probe` must be 'rademacher' or 'gaussian', got {probe!r}.")
        if key is None:
            raise ValueError(
                "`key` is required for Hutchinson's divergence estimator (exact_divergence=False, "
                f"the default for d = {d} > 16)."
            )
        probe_shape = (x.shape[0], n_probes, *shape)
        if probe == "rademacher":
            probes = jax.random.rademacher(key, probe_shape, dtype=dtype)
        else:
            probes = jax.random.normal(key, probe_shape, dtype=dtype)
        probe_scale = 1.0 / n_probes
    check_score_fn(score_fn, x, sigma=True)
    if prior_logp is not None:
        if not callable(prior_logp):
            raise ValueError(f"`prior_logp` must be callable, got {type(prior_logp).__name__}.")
        try:
            out = jax.eval_shape(prior_logp, jax.ShapeDtypeStruct(shape, dtype))
        except Exception as e:
            raise ValueError(f"`prior_logp` failed on ONE example of shape {shape}: {e}") from e
        if getattr(out, "shape", None) != ():
            raise ValueError(
                f"`prior_logp` must return a scalar for ONE example, got shape "
                f"{getattr(out, 'shape', type(out).__name__)}."
            )
    logp, stats = _log_likelihood_kernel(
        score_fn, x, _sigma_scalar("sigma_min", sigma_min, dtype),
        _sigma_scalar("sigma_max", sigma_max, dtype), prior_logp, probes,
        jnp.asarray(probe_scale, dtype), solver, controller,
        None if dt0 is None else jnp.asarray(dt0, dtype), max_steps,
    )
    return (logp, _info(solver, stats)) if return_info else logp
