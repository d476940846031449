"""The benchmark script keeps working: its smoke mode runs every benchmark at toy sizes.

Timings are never asserted here (they belong in `python -m benchmarks`); this checks that the
script runs, writes its JSON and reports the keys issue 7 asks for.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_smoke_mode(tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "SCORE_MODELS_ARTIFACTS": "require"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["smoke"] is True
    for key in ["matmul_peak_gflops", "fit_vs_python_loop", "ensemble_vs_model_list",
                "langevin_fraction_of_peak", "training_fraction_of_peak", "chapters_2_3_seconds",
                "pf_ode_vs_particle_loop"]:
        assert key in results, f"{key} missing; skipped: {results.get('skipped')}"
        assert results[key] > 0
    weights = results["chapters_2_3_mode_weights"]
    assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-6
