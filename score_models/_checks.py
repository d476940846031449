"""Input validation shared by the public functions: the one place where arguments are checked.

Every check runs on concrete values before anything is compiled, and raises a `ValueError`
that names the argument and what was expected. Traced values (inside `jit`/`vmap`) are
skipped: their shapes were already checked by the caller that traced them.

Numbers are checked in the dtype they are used in (float32 unless `jax_enable_x64` is on, or
the dtype of the particles): a noise level of `1e39` is finite as a Python float but `inf` in
float32, and two levels a float64 apart can be equal in float32. Complex numbers, strings and
booleans are refused where a real number is expected (JAX would silently drop an imaginary
part, NumPy would read `"1"` as 1.0, Python would read `"no"` as true).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when `x` is a concrete (non-traced) value."""
    return not isinstance(x, jax.core.Tracer)


def default_float() -> np.dtype:
    """The dtype JAX gives a Python float: float32, or float64 under `jax_enable_x64`."""
    return np.dtype(jnp.result_type(float))


def _type_name(x: Any) -> str:
    return type(x).__name__


def as_float_array(name: str, x: Any, *, ndim: int | None = None, min_ndim: int | None = None) -> jax.Array:
    """Converts `x` to a real floating array and checks its rank.

    Integer and boolean arrays become the default float dtype; floating arrays keep theirs.
    Strings, `None` and complex numbers are refused.
    """
    if is_concrete(x):
        if x is None or isinstance(x, str):
            raise ValueError(f"`{name}` must be an array of numbers, got {_type_name(x)}.")
        try:
            arr = jnp.asarray(x)
        except (TypeError, ValueError) as e:
            raise ValueError(f"`{name}` must be an array of numbers, got {_type_name(x)}.") from e
    else:
        arr = x
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise ValueError(f"`{name}` must be real, got complex dtype {arr.dtype}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(default_float())
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {tuple(arr.shape)}.")
    if min_ndim is not None and arr.ndim < min_ndim:
        raise ValueError(
            f"`{name}` must have at least {min_ndim} dimension(s), got shape {tuple(arr.shape)}."
        )
    return arr


def as_real_scalar(name: str, x: Any) -> Any:
    """A real number: a Python or NumPy int/float, or a 0-d real array. Returns a float (traced
    values are returned unchanged once their rank is checked)."""
    if not is_concrete(x):
        if jnp.ndim(x) != 0:
            raise ValueError(f"`{name}` must be a scalar, got shape {tuple(jnp.shape(x))}.")
        return x
    if x is None or isinstance(x, (str, bytes, bool, np.bool_)):
        raise ValueError(f"`{name}` must be a real number, got {x!r}.")
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be a real number, got {_type_name(x)}.") from e
    if arr.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {arr.shape}.")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"`{name}` must be a real number, got {x!r} ({arr.dtype}).")
    return float(arr)


def check_finite(name: str, x: Any) -> None:
    """Raises when a concrete array holds NaN or infinite values."""
    if is_concrete(x):
        arr = np.asarray(x)
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.sum(np.isfinite(arr)))
            raise ValueError(f"`{name}` contains {bad} NaN or infinite value(s).")


def check_positive(name: str, x: Any, dtype: Any = None) -> None:
    """Raises unless a concrete scalar or array is positive and finite, both as given and once
    cast to `dtype` (default: the default float dtype), where it must not overflow to inf or
    underflow to 0."""
    if not is_concrete(x):
        return
    if np.ndim(x) == 0:
        as_real_scalar(name, x)
    arr = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore"):
        cast = arr.astype(np.dtype(dtype or default_float()))
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"`{name}` must be positive and finite, got {arr.tolist()}.")
    if not np.all(np.isfinite(cast)) or np.any(cast <= 0):
        raise ValueError(
            f"`{name}` must be positive and finite in {cast.dtype}, got {arr.tolist()} "
            f"(which {cast.dtype} holds as {cast.tolist()})."
        )


def noise_level_range(dtype: Any = None) -> tuple[float, float]:
    """The noise levels `sigma` whose square is a finite, normal number in `dtype`:
    `[sqrt(tiny), sqrt(max)]` (about [1.1e-19, 1.8e19] in float32). Samplers, losses and the
    perturbed mixtures all use `sigma^2`."""
    info = np.finfo(np.dtype(dtype or default_float()))
    return float(np.sqrt(info.tiny)) * (1 + 1e-6), float(np.sqrt(info.max)) * (1 - 1e-6)


def check_noise_level(name: str, sigma: Any, dtype: Any = None, *, allow_zero: bool = False) -> Any:
    """Checks one noise level (a real scalar) and returns it: positive (or zero with
    `allow_zero`) and finite, with `sigma^2` finite and normal in `dtype`."""
    sigma = as_real_scalar(name, sigma)
    if not is_concrete(sigma):
        return sigma
    lo, hi = noise_level_range(dtype)
    dtype_name = np.dtype(dtype or default_float()).name
    if allow_zero and sigma == 0:
        return sigma
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(
            f"`{name}` must be {'non-negative' if allow_zero else 'positive'} and finite, got {sigma}."
        )
    if not lo <= sigma <= hi:
        raise ValueError(
            f"`{name}` must lie in [{lo:.3g}, {hi:.3g}] so that its square is a finite {dtype_name} "
            f"number, got {sigma:g}."
        )
    return sigma


def check_positive_int(name: str, x: Any) -> int:
    """Returns `x` as an int, raising unless it is a positive integer."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {x!r}.")
    return int(x)


def check_nonnegative_int(name: str, x: Any) -> int:
    """Returns `x` as an int, raising unless it is a non-negative integer."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x < 0:
        raise ValueError(f"`{name}` must be a non-negative integer, got {x!r}.")
    return int(x)


def check_bool(name: str, x: Any) -> bool:
    """Returns `x` as a bool, raising unless it is one (`"no"` is not False)."""
    if not isinstance(x, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False, got {x!r}.")
    return bool(x)


def check_callable(name: str, f: Any) -> None:
    """Raises unless `f` is callable."""
    if not callable(f):
        raise ValueError(f"`{name}` must be callable, got {_type_name(f)}.")


def check_sigmas(name: str, sigmas: Any, dtype: Any = None) -> jax.Array:
    """Checks a noise schedule and returns it as an array of `dtype` (default: its own floating
    dtype): 1D, non-empty, every level a valid noise level (`check_noise_level`) in that dtype,
    strictly decreasing in that dtype."""
    given = None
    if is_concrete(sigmas) and not isinstance(sigmas, (str, bytes)) and sigmas is not None:
        try:  # the values as given, for the messages (before a cast to float32 rounds them)
            given = np.asarray(sigmas, dtype=np.float64)
        except (TypeError, ValueError):
            given = None
    with np.errstate(over="ignore", under="ignore"):
        sigmas = as_float_array(name, sigmas, ndim=1)
        if dtype is not None:
            sigmas = sigmas.astype(dtype)
    if is_concrete(sigmas):
        arr = np.asarray(sigmas)
        wide = arr.astype(np.float64)
        shown = (given if given is not None and given.shape == arr.shape else wide).tolist()
        if arr.size == 0:
            raise ValueError(f"`{name}` must hold at least one noise level, got none.")
        if given is not None and given.shape == arr.shape and (
                not np.all(np.isfinite(given)) or np.any(given <= 0)):
            raise ValueError(f"`{name}` must be positive and finite, got {shown}.")
        if not np.all(np.isfinite(wide)) or np.any(wide <= 0):
            raise ValueError(f"`{name}` must be positive and finite in {arr.dtype}, got {shown}.")
        lo, hi = noise_level_range(arr.dtype)
        if np.any(wide < lo) or np.any(wide > hi):
            raise ValueError(
                f"`{name}` must lie in [{lo:.3g}, {hi:.3g}] so that their squares are finite "
                f"{arr.dtype} numbers, got {shown}."
            )
        if arr.size > 1 and np.any(np.diff(wide) >= 0):
            raise ValueError(
                f"`{name}` must be strictly decreasing (sigma_1 > ... > sigma_L) in {arr.dtype}, "
                f"got {shown}" + ("" if shown == wide.tolist() else f" ({arr.dtype}: {wide.tolist()})") + "."
            )
    return sigmas


def check_sigma_range(sigma_max: Any, sigma_min: Any, dtype: Any = None) -> None:
    """Raises unless `sigma_max` and `sigma_min` are valid noise levels in `dtype` with
    `sigma_min < sigma_max` there (traced values are skipped)."""
    sigma_max = check_noise_level("sigma_max", sigma_max, dtype)
    sigma_min = check_noise_level("sigma_min", sigma_min, dtype)
    if is_concrete(sigma_max) and is_concrete(sigma_min):
        dt = np.dtype(dtype or default_float())
        if not dt.type(sigma_min) < dt.type(sigma_max):
            raise ValueError(
                f"`sigma_min` must be smaller than `sigma_max` (in {dt.name}), got "
                f"sigma_min={sigma_min}, sigma_max={sigma_max}."
            )


def check_particles(name: str, x: Any) -> jax.Array:
    """Checks a batch of particles: real floating array of shape `(n, *event_shape)`, finite."""
    x = as_float_array(name, x, min_ndim=2)
    check_finite(name, x)
    return x


def check_trajectory_every(trajectory_every: Any, total: int) -> int | None:
    """`trajectory_every`: None, or a positive integer that divides the number of steps."""
    if trajectory_every is None:
        return None
    every = check_positive_int("trajectory_every", trajectory_every)
    if total % every:
        raise ValueError(f"`trajectory_every` ({every}) must divide the number of steps ({total}).")
    return every


def check_score_fn(score_fn: Callable, x: jax.Array, *, conditional: bool, name: str = "score_fn") -> None:
    """Checks (abstractly, without compiling) that `score_fn` maps ONE example of the shape of
    `x[0]` (and a scalar sigma when `conditional`) to a real array of the same shape."""
    check_callable(name, score_fn)
    example = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    args = (example, jax.ShapeDtypeStruct((), x.dtype)) if conditional else (example,)
    try:
        # (a plain function: older JAX hashes `fun`, and hashing a module of tracers fails)
        out = jax.eval_shape(lambda *a: score_fn(*a), *args)
    except Exception as e:  # report what was passed, then the original error
        raise ValueError(
            f"`{name}` failed on ONE example of shape {x.shape[1:]}"
            + (" with a scalar sigma" if conditional else "") + f": {e}"
        ) from e
    check_score_output(name, out, x.shape[1:])


def check_score_output(name: str, out: Any, shape: tuple) -> None:
    """Raises unless `out` (an array or a `ShapeDtypeStruct`) is real with shape `shape`: a
    score of another shape would be broadcast silently against the example it scores."""
    if getattr(out, "shape", None) != tuple(shape):
        raise ValueError(
            f"`{name}` must return the shape of one example, {tuple(shape)}; got "
            f"{getattr(out, 'shape', _type_name(out))}."
        )
    if not (jnp.issubdtype(out.dtype, jnp.floating) or jnp.issubdtype(out.dtype, jnp.integer)):
        raise ValueError(f"`{name}` must return real numbers, got dtype {out.dtype}.")


def check_key(name: str, key: Any) -> None:
    """Raises unless `key` is one JAX PRNG key: typed (`jax.random.key`) or a raw uint32 array
    (`jax.random.PRNGKey`)."""
    if not is_concrete(key):
        return
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"`{name}` must be a single PRNG key, got a batch of shape {key.shape}.")
        return
    arr = np.asarray(key) if isinstance(key, (np.ndarray, jax.Array)) else None
    if arr is None or arr.dtype != np.uint32 or arr.ndim != 1:  # raw keys: (2,), (4,) for rbg
        raise ValueError(
            f"`{name}` must be a JAX PRNG key (e.g. jax.random.key(0)), got "
            f"{_type_name(key) if arr is None else f'{arr.dtype} array of shape {arr.shape}'}."
        )


def check_size(name: str, n_elements: int, itemsize: int = 4, *, fraction: float = 0.5) -> None:
    """Refuses to allocate an array of `n_elements` that would take more than `fraction` of the
    machine's physical memory (the process would abort instead of raising)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: no limit known
        return
    need = int(n_elements) * int(itemsize)
    if need > fraction * total:
        raise ValueError(
            f"`{name}` asks for {need / 2**30:.3g} GiB ({n_elements:,} values), more than "
            f"{fraction:.0%} of this machine's {total / 2**30:.3g} GiB of memory."
        )

