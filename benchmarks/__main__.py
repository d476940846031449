"""`python -m benchmarks [--smoke] [--only NAME ...] [--out FILE]`

Measures, side by side in one process, the library's jitted kernels against the patterns they
replace and against this machine's float32 matmul peak; prints a table and writes
`benchmarks/results.json`. `--smoke` runs every benchmark at toy sizes (seconds; used by the
test suite to keep this script working) and writes `benchmarks/results_smoke.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax

from . import suite

TARGETS = {
    # key: (comparison, target) from issue 7.
    "chapters_2_3_seconds": ("<=", 60.0),
    "fit_vs_python_loop": (">=", 1.2),
    "ensemble_vs_model_list": (">=", 1.0),
    "pf_ode_vs_particle_loop": (">=", 50.0),
    "langevin_fraction_of_peak": (">=", 0.25),
    "training_fraction_of_peak": (">=", 0.25),
    "mnist_training_fraction_of_peak": (">=", 0.25),
}


def _verdict(key: str, value) -> str:
    if key not in TARGETS or not isinstance(value, (int, float)):
        return ""
    op, target = TARGETS[key]
    ok = value <= target if op == "<=" else value >= target
    return f"{'ok ' if ok else 'MISS'} (target {op} {target:g})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, seconds in total")
    parser.add_argument("--only", nargs="*", default=None, help="run only these benchmarks")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON results")
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).parent / ("results_smoke.json" if args.smoke else "results.json")

    results: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]},
        "smoke": args.smoke,
    }
    t_start = time.perf_counter()
    for name, fn in suite.BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        print(f"[{name}] ...", flush=True)
        t0 = time.perf_counter()
        try:
            results.update(fn(smoke=args.smoke, peak=results.get("matmul_peak_gflops")))
        except suite.Unavailable as e:
            print(f"[{name}] skipped: {e}", flush=True)
            results.setdefault("skipped", {})[name] = str(e)
        print(f"[{name}] {time.perf_counter() - t0:.1f} s", flush=True)
    results["total_seconds"] = time.perf_counter() - t_start

    print()
    print(f"{'key':36s} {'value':>14s}  verdict")
    for key, value in results.items():
        if isinstance(value, (dict, list)) or key in ("smoke",):
            continue
        shown = f"{value:14.4g}" if isinstance(value, float) else f"{value!s:>14s}"
        print(f"{key:36s} {shown}  {_verdict(key, value)}")
    if args.only and out.exists():
        # A partial run updates its own keys and keeps the other benchmarks' last results.
        results = {**json.loads(out.read_text()), **results}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    tmp.replace(out)  # atomic: an interrupted run never leaves half a file
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
