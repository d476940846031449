"""The one result type of every sampler, in the spirit of diffrax's `Solution`."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import is_concrete

__all__ = ["SamplerResult"]


class SamplerResult(eqx.Module):
    """What a sampler returns: the samples, an optional thinned trajectory, and how they were
    obtained.

    **Fields:**

    - `samples`: `(n, *shape)` the final particles (after the Tweedie step with `denoise=True`).
    - `trajectory`: `(frames, n, *shape)` the particles along the way, or None when no
      trajectory was requested. Stochastic samplers start it with the initial particles and
      add one frame every `trajectory_every` steps; the PF-ODE saves one frame per entry of
      `save_sigmas`. With `denoise=True` the denoised particles are the last frame.
    - `trajectory_sigmas`: `(frames,)` the noise level of each frame (0 for the denoised frame),
      or None (no trajectory, or plain Langevin, which has no noise level).
    - `samples_before_denoise`: `(n, *shape)` the particles before the Tweedie step, or None
      when `denoise=False`.
    - `score_evals`: score evaluations per particle, the Tweedie step included (None for an
      ODE solver whose count is unknown, e.g. an implicit one).
    - `n_diverged`: how many particles ended with a NaN or infinite value (the samplers raise a
      `FloatingPointError` instead unless called with `throw=False`).
    - `stats`: solver statistics (the PF-ODE: `num_steps`, `num_accepted_steps`,
      `num_rejected_steps`); empty for the fixed-step samplers.
    """

    samples: Float[Array, "n *shape"]
    trajectory: Float[Array, "frames n *shape"] | None
    trajectory_sigmas: Float[Array, " frames"] | None
    samples_before_denoise: Float[Array, "n *shape"] | None
    score_evals: int | None
    n_diverged: int
    stats: dict[str, int]

    @property
    def diverged(self) -> bool:
        """True when at least one particle ended non-finite."""
        return self.n_diverged > 0


@jax.jit
def _count_nonfinite(x):
    return jnp.sum(~jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1))


def finish(sampler: str, samples, *, trajectory=None, trajectory_sigmas=None, before=None,
           score_evals: int | None, stats: dict | None = None, throw: bool,
           hint: str) -> SamplerResult:
    """Builds the result, counting the particles that diverged; raises when some did and
    `throw` is True. `hint` says what to change (e.g. "a smaller `step_size`").

    Under `jit` (a traced sampler call) the count stays a traced array and nothing is raised:
    the caller checks `n_diverged` itself."""
    count = _count_nonfinite(samples)
    if not is_concrete(count):
        return SamplerResult(samples=samples, trajectory=trajectory, trajectory_sigmas=trajectory_sigmas,
                             samples_before_denoise=before, score_evals=score_evals, n_diverged=count,
                             stats={} if stats is None else dict(stats))
    n_diverged = int(count)
    if n_diverged and throw:
        raise FloatingPointError(
            f"`{sampler}`: {n_diverged} of {samples.shape[0]} particles diverged (NaN or inf). "
            f"Try {hint}, or pass throw=False to get the result with `n_diverged` set."
        )
    return SamplerResult(
        samples=samples, trajectory=trajectory, trajectory_sigmas=trajectory_sigmas,
        samples_before_denoise=before, score_evals=None if score_evals is None else int(score_evals),
        n_diverged=n_diverged, stats={} if stats is None else {k: int(v) for k, v in stats.items()},
    )


def frame_sigmas(step_sigmas: np.ndarray | Array, start_sigma, every: int, denoise: bool, dtype):
    """The noise level of each trajectory frame: `start_sigma` for the initial particles, then
    the level of the last step taken before each frame (`step_sigmas[every - 1 :: every]`), and
    0 for the denoised frame."""
    parts = [jnp.asarray([start_sigma], dtype), jnp.asarray(step_sigmas, dtype)[every - 1::every]]
    if denoise:
        parts.append(jnp.zeros((1,), dtype))
    return jnp.concatenate(parts)
