"""Timing helpers: wall-clock of a callable after warm-up, and XLA's FLOP count."""

from __future__ import annotations

import time
from typing import Any, Callable

import jax


def block(x: Any) -> Any:
    """Waits for every array in `x`."""
    return jax.block_until_ready(x)


def best_time(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> float:
    """The best wall-clock seconds of `fn()` over `repeats` runs, after `warmup` runs (which
    absorb compilation)."""
    for _ in range(warmup):
        block(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def xla_flops(jitted: Callable, *args, **kwargs) -> float:
    """FLOPs of one call of `jitted` (a `jax.jit`-wrapped function), from XLA's cost analysis of
    the compiled program."""
    compiled = jitted.lower(*args, **kwargs).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))
