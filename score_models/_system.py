"""Facts about the machine, on every platform: memory, load and hardware for sidecars.

The Unix-only calls (`os.getloadavg`, `os.sysconf`) are guarded: where they do not exist the
answer is None, never an exception.
"""

from __future__ import annotations

import os
import platform

import jax


def total_memory_bytes() -> int | None:
    """The machine's physical memory in bytes, or None where it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none (Windows)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def check_fits_in_memory(name: str, n_bytes: int, what: str) -> None:
    """Raises a ValueError naming argument `name` when `n_bytes` (for `what`) exceeds half of
    the machine's memory: refused up front rather than aborting the process later."""
    total = total_memory_bytes()
    if total is not None and n_bytes > total // 2:
        raise ValueError(
            f"`{name}` is too large: {what} would take {n_bytes / 2**30:.1f} GiB, more than half of "
            f"this machine's {total / 2**30:.1f} GiB of memory."
        )


def hardware() -> dict:
    """The devices and CPU a model was trained on (for artifact sidecars)."""
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
