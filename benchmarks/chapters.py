"""`python -m benchmarks.chapters [--chapters N ...] [--reuse NAME ...] [--no-retrain] [--inplace] [--write-guide]`

Measures what an instructor plans a course with: for every chapter, the time to execute its
notebook with the cached models (what a student does in class), and the time to retrain its
models from scratch (`score-models artifacts build --chapter N`, into a temporary folder, so the
committed artifacts are untouched). Writes `benchmarks/chapter_times.json`; `--write-guide`
also rewrites the table in `instructor-guide.qmd` from it (`tests/test_book.py` checks that the
two agree).

Each measurement runs in a fresh process, so imports and compilation are included, as they are
for a student. `--reuse NAME` takes a model's build time from its committed sidecar instead of
retraining it (for the MNIST U-Net, whose build is the recorded measurement). `--inplace`
executes the committed notebooks themselves, so one command refreshes every chapter and its
timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "chapter_times.json"
GUIDE = ROOT / "instructor-guide.qmd"
START, END = "<!-- chapter-times:start -->", "<!-- chapter-times:end -->"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU seconds of a subprocess (its children included); raises if it fails."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, cpu


def notebooks() -> dict[int, Path]:
    """The chapter notebooks, by chapter number (`notebooks/NN_*.ipynb`)."""
    return {int(p.name[:2]): p for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}


def missing_figures(path: Path) -> list[int]:
    """Indices of the figure cells (`#| label: fig-*`, not `include: false`) of an executed
    notebook that have no image or HTML (animation) output."""
    import nbformat

    missing = []
    for i, cell in enumerate(nbformat.read(str(path), as_version=4).cells):
        src = cell.source if cell.cell_type == "code" else ""
        if "#| label: fig-" in src and "#| include: false" not in src and not any(
            "image/png" in o.get("data", {}) or "text/html" in o.get("data", {})
            for o in cell.get("outputs", [])
        ):
            missing.append(i)
    return missing


def run_chapter(path: Path, env: dict, inplace: bool = False) -> dict:
    """Executes the notebook with the cached models (`SCORE_MODELS_ARTIFACTS=require`) and
    matplotlib's inline backend, so that figures are kept. With `inplace` the executed copy
    replaces the notebook (its outputs refreshed), but only if every figure cell has an image."""
    env = {k: v for k, v in env.items() if k != "MPLBACKEND"}  # Agg would drop every figure
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
               "--ExecutePreprocessor.timeout=1800", f"--ExecutePreprocessor.cwd={path.parent}",
               "--output", str(out), str(path)]
        wall, cpu = _timed(cmd, {**env, "SCORE_MODELS_ARTIFACTS": "require"})
        missing = missing_figures(out)
        if missing:
            raise RuntimeError(f"{path.name}: figure cells {missing} produced no image; "
                               "the notebook was not replaced")
        if inplace:
            shutil.copyfile(out, path)
    return {"run_seconds": wall, "run_cpu_seconds": cpu}


def retrain_chapter(chapter: int, env: dict, reuse: list[str]) -> dict:
    """Builds every artifact of `chapter` from scratch in a temporary folder (no checkpoints)."""
    import score_models as sm

    names = sm.zoo.names(chapter=chapter)
    if not names:
        return {"retrain_seconds": 0.0, "retrain_cpu_seconds": 0.0, "artifacts": [], "reused": {}}
    fresh = [n for n in names if n not in reuse]
    reused = {n: float(sm.zoo.info(n)["history"]["build_seconds"]) for n in names if n in reuse}
    wall = cpu = 0.0
    if fresh:
        with tempfile.TemporaryDirectory() as tmp:
            build_env = {**env, "SCORE_MODELS_ARTIFACT_DIR": tmp, "SCORE_MODELS_CACHE": tmp}
            wall, cpu = _timed([sys.executable, "-m", "score_models.cli", "artifacts", "build", *fresh],
                               build_env)
    return {"retrain_seconds": wall + sum(reused.values()), "retrain_cpu_seconds": cpu,
            "artifacts": names, "reused": reused}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds / 60:.1f} min"


def guide_table(results: dict) -> str:
    """The Markdown table of `results` that the instructor guide shows."""
    m = results["machine"]
    rows = ["| chapter | run with cached models | retrain its models | models |", "|---|---|---|---|"]
    for ch, r in sorted(results["chapters"].items(), key=lambda kv: int(kv[0])):
        run = _duration(r["run_seconds"]) if "run_seconds" in r else "-"
        retrain = _duration(r["retrain_seconds"]) if r.get("artifacts") else "nothing to train"
        if r.get("reused"):
            retrain += "\\*"
        rows.append(f"| {ch} | {run} | {retrain} | {', '.join(f'`{n}`' for n in r.get('artifacts', [])) or '-'} |")
    total_run = sum(r.get("run_seconds", 0.0) for r in results["chapters"].values())
    total_retrain = sum(r.get("retrain_seconds", 0.0) for r in results["chapters"].values())
    rows.append(f"| all | {_duration(total_run)} | {_duration(total_retrain)} | |")
    caption = (f": Measured on {m['cpu_count']} CPU cores ({m['processor']}, JAX {m['jax']}, "
               f"{m['devices']} device), load average {m['load_average_start']:.1f} at the start; "
               f"wall-clock times, imports and compilation included. \\* recorded build times "
               f"(`history.build_seconds` in each sidecar) instead of a fresh retrain. "
               f"{{#tbl-chapter-times}}")
    return "\n".join(rows) + "\n\n" + caption


def write_guide(results: dict) -> None:
    text = GUIDE.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{GUIDE} lacks the markers {START} ... {END}.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    tmp = GUIDE.with_suffix(".tmp")
    tmp.write_text(f"{head}{START}\n{guide_table(results)}\n{END}{tail}")
    os.replace(tmp, GUIDE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chapters", description=__doc__.split("\n")[2])
    parser.add_argument("--chapters", nargs="*", type=int, default=None, help="only these chapters")
    parser.add_argument("--reuse", nargs="*", default=["mnist_unet"],
                        help="models whose build time is read from their sidecar (default: mnist_unet)")
    parser.add_argument("--no-retrain", action="store_true", help="only time the notebooks")
    parser.add_argument("--inplace", action="store_true",
                        help="execute the notebooks themselves, refreshing their committed outputs")
    parser.add_argument("--write-guide", action="store_true", help="rewrite the instructor guide's table")
    args = parser.parse_args(argv)

    import jax

    env = dict(os.environ)
    env.setdefault("SCORE_MODELS_DATA", str(ROOT.parent / "shared" / "data"))
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"chapters": {}}
    results = {
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "jax": jax.__version__, "devices": jax.devices()[0].platform.upper(),
                    "load_average_start": os.getloadavg()[0]},
        "chapters": dict(previous.get("chapters", {})),
    }
    for chapter, path in notebooks().items():
        if args.chapters and chapter not in args.chapters:
            continue
        print(f"chapter {chapter}: running {path.name} ...", flush=True)
        entry = run_chapter(path, env, args.inplace)
        if not args.no_retrain:
            print(f"chapter {chapter}: retraining ...", flush=True)
            entry.update(retrain_chapter(chapter, env, args.reuse))
        elif str(chapter) in results["chapters"]:
            entry = {**results["chapters"][str(chapter)], **entry}
        results["chapters"][str(chapter)] = entry
        print(f"chapter {chapter}: {json.dumps(entry)}", flush=True)
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, RESULTS)
    print(guide_table(results))
    if args.write_guide:
        write_guide(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
