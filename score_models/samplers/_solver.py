"""diffrax plumbing shared by the probability-flow ODE and the log-likelihood: solver and
step-size validation, the per-particle error norm, score-evaluation counts, and a clear error
when a solve fails."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Array

from .._checks import check_positive, check_positive_int, check_sigmas, is_concrete


def max_rms_norm(tree) -> Float[Array, ""]:
    """The largest per-example RMS of a pytree whose leaves have a leading batch axis `n`.

    Used as the step-size controller's norm so that EVERY example meets the tolerances.
    """
    leaves = jax.tree.leaves(tree)
    n = leaves[0].shape[0]
    squares = sum(jnp.sum(jnp.reshape(jnp.abs(leaf) ** 2, (n, -1)), axis=1) for leaf in leaves)
    size = sum(int(np.prod(leaf.shape[1:])) for leaf in leaves)
    return jnp.sqrt(jnp.max(squares) / size)


def evals_per_step(solver) -> tuple[int, int] | None:
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


def score_evals(solver, num_steps) -> int | None:
    """Score evaluations per particle of a solve of `num_steps` steps (None when unknown)."""
    per = evals_per_step(solver)
    if per is None:
        return None
    return per[0] * (int(num_steps) if is_concrete(num_steps) else num_steps) + per[1]


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


def setup_solver(solver, stepsize_controller, rtol, atol, dt0, start, end, max_steps, dtype):
    """Validates the solver options for a solve from `start` to `end` (noise levels); returns
    `(controller, dt0, max_steps)` with `dt0` positive or None. Options the chosen controller
    does not use are refused."""
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(f"`solver` must be a diffrax solver (e.g. diffrax.Tsit5()), got {solver!r}.")
    max_steps = check_positive_int("max_steps", max_steps)
    if dt0 is not None:
        check_positive("dt0", dt0, dtype)
    if stepsize_controller is not None:
        if rtol is not None or atol is not None:
            raise ValueError("`rtol` and `atol` are unused with a `stepsize_controller` (set its own).")
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
        rtol = 1e-5 if rtol is None else rtol
        atol = 1e-5 if atol is None else atol
        check_positive("rtol", rtol)
        check_positive("atol", atol)
        controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=max_rms_norm)
        if dt0 is None:
            # Our own first step (diffrax's automatic choice is a fixed 0.01 for wrapped terms).
            dt0 = 0.01 * abs(end - start)
        return controller, dt0, max_steps
    if rtol is not None or atol is not None:
        raise ValueError(f"`rtol` and `atol` are unused by {type(solver).__name__}, which has no error estimate.")
    if dt0 is None:
        raise ValueError(
            f"`dt0` is required for {type(solver).__name__}, which has no error estimate "
            "(or pass stepsize_controller=diffrax.StepTo(ts=...))."
        )
    return diffrax.ConstantStepSize(), dt0, max_steps


def check_save_sigmas(save_sigmas, sigma_max, sigma_min, dtype):
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


@eqx.filter_jit
def _scores_near(score_fn, x, sigmas):
    """`score_fn` for every particle at each of the noise levels `sigmas`: `(k, n, *shape)`."""
    return jax.vmap(lambda s: jax.vmap(score_fn, in_axes=(0, None))(x, s))(sigmas)


def check_solve(what: str, result, sigma_reached, x_reached, score_fn, sigma_end, max_steps: int) -> None:
    """Raises a clear error when a diffrax solve (run with `throw=False`) failed.

    An adaptive solver that meets a NaN or infinite score rejects every step, shrinking it,
    until `max_steps`: so the particles where it stopped, and the score there and just beyond
    (towards `sigma_end`), are checked first, and a non-finite value gives a
    `FloatingPointError` naming the noise level. Otherwise a `RuntimeError` names `max_steps`
    (or diffrax's reason)."""
    if not is_concrete(sigma_reached) or bool(result == diffrax.RESULTS.successful):
        return  # (under jit the solve's outcome is not known here: nothing to check)
    sigma = float(sigma_reached)
    finite = bool(jnp.all(jnp.isfinite(x_reached)))
    if finite:
        gap = float(sigma_end) - sigma
        probes = jnp.asarray([sigma] + [sigma + f * gap for f in (1e-6, 1e-4, 1e-2)], x_reached.dtype)
        finite = bool(jnp.all(jnp.isfinite(_scores_near(score_fn, x_reached, probes))))
    if not finite:
        raise FloatingPointError(
            f"`{what}`: the particles or `score_fn` became NaN or inf at sigma = {sigma:.6g}, where "
            "the solve stopped. Check the score model (and the noise range it was trained on)."
        )
    if bool(result == diffrax.RESULTS.max_steps_reached):
        raise RuntimeError(
            f"`{what}`: the solver took `max_steps` = {max_steps} steps and stopped at sigma = "
            f"{sigma:.6g}. Increase `max_steps`, or loosen `rtol`/`atol`."
        )
    raise RuntimeError(f"`{what}`: the diffrax solve failed at sigma = {sigma:.6g}: {result}.")
