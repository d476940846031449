"""One independent score model per noise level, stored and trained as one vmapped module."""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import as_real_scalar, check_noise_level, check_positive, check_sigmas


class ScoreEnsemble(eqx.Module):
    """`L` independent unconditional score models, one per noise level, with stacked weights.

    Looks like a noise-conditional model to the samplers: `ensemble(x, sigma)` evaluates the
    member whose sigma is nearest to `sigma` (in log). Member `i` sees the rescaled input
    `x / sqrt(sigma_i^2 + data_std^2)` and, with `scale_by_sigma=True`, its output is divided by
    `sigma_i`, as in `NoiseConditionalMLP`. `multiscale_denoising_score_matching` trains all
    members in one vmapped evaluation, each at its own level (and refuses other levels).

    **Arguments:**

    - `make_member`: `key -> eqx.Module`, an unconditional model `(d,) -> (d,)`.
    - `sigmas`: `(L,)` descending noise levels, one per member.
    - `key`: PRNG key; member `i` is initialised with the `i`-th split of it.
    """

    members: eqx.Module
    # The noise levels are a static tuple, not an array leaf: they are hyperparameters, and an
    # array leaf would be trained by `fit` (and drift away from the sigmas of the loss).
    sigma_values: tuple[float, ...] = eqx.field(static=True)
    data_std: float = eqx.field(static=True)
    scale_by_sigma: bool = eqx.field(static=True)

    def __init__(self, make_member: Callable[[PRNGKeyArray], eqx.Module], sigmas, *,
                 data_std: float = 1.0, scale_by_sigma: bool = True, key: PRNGKeyArray):
        # NumPy, not jnp: the levels stay concrete even when the ensemble is built under a trace
        # (e.g. `eqx.filter_eval_shape` making a skeleton to load weights into).
        with jax.ensure_compile_time_eval():
            values = np.asarray(check_sigmas("sigmas", sigmas))
        self.sigma_values = tuple(float(v) for v in values)
        if not callable(make_member):
            raise ValueError(f"`make_member` must be callable, got {type(make_member).__name__}.")
        check_positive("data_std", as_real_scalar("data_std", data_std))
        self.members = eqx.filter_vmap(make_member)(jax.random.split(key, len(self.sigma_values)))
        self.data_std = float(data_std)
        self.scale_by_sigma = bool(scale_by_sigma)

    @property
    def sigmas(self) -> Float[Array, " L"]:
        """The members' noise levels, `(L,)` descending (constants, never trained)."""
        return jnp.asarray(self.sigma_values, dtype=jnp.float32)

    @property
    def n_members(self) -> int:
        """The number of members `L`."""
        return self.sigmas.shape[0]

    def _apply(self, member, x, sigma):
        out = member(x / jnp.sqrt(sigma**2 + self.data_std**2))
        return out / sigma if self.scale_by_sigma else out

    def member(self, i) -> eqx.Module:
        """The `i`-th member model (unconditional, without the sigma rescaling)."""
        params, static = eqx.partition(self.members, eqx.is_array)
        return eqx.combine(jax.tree.map(lambda a: a[i], params), static)

    def member_scores(self, x: Float[Array, " d"]) -> Float[Array, "L d"]:
        """Every member's score at ONE point: row `i` is `s_i(x)` at `sigmas[i]`."""

        def one(member, sigma):
            return self._apply(member, x, sigma)

        return eqx.filter_vmap(one)(self.members, self.sigmas)

    def __call__(self, x: Float[Array, " d"], sigma: Float[Array, ""]) -> Float[Array, " d"]:
        """The score at ONE point `x: (d,)` from the member whose sigma is nearest `sigma`."""
        sigma = jnp.asarray(sigma, dtype=self.sigmas.dtype)
        check_noise_level("sigma", sigma, self.sigmas.dtype)
        i = jnp.argmin(jnp.abs(jnp.log(self.sigmas) - jnp.log(sigma)))
        return self._apply(self.member(i), x, self.sigmas[i])
