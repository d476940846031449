"""A non-editable install in a fresh virtual environment, used from outside the checkout.

The copy in site-packages has no checkout beside it: it must never train silently or write next
to itself, must say how to get the book's models, must find them where it is told, and must
build one into the user cache when asked (issue: installs that work outside an editable checkout).
"""

import os
import shutil
import subprocess
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv (system site-packages for the dependencies) with `pip install --no-deps` of a copy of
    the checkout; returns `(run, home, site)`: `run(*args, env=...)` runs in a clean environment."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "artifacts", "notebooks", "_preview", "_book", "build", "*.egg-info", "__pycache__"))
    env_dir = base / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    # The venv's interpreter runs this interpreter's pip (system site-packages), installing into the venv.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(source)],
                   check=True, capture_output=True, text=True)
    home = base / "home"
    home.mkdir()
    work = base / "work"
    work.mkdir()
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    installed_at = time.time()

    def run(*args, env=None, check=False):
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith("SCORE_MODELS_") and k not in ("PYTHONPATH", "MPLBACKEND")}
        clean.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), JAX_PLATFORMS="cpu", **(env or {}))
        return subprocess.run([str(python), *args], cwd=work, env=clean, capture_output=True, text=True,
                              check=check, timeout=300)

    return run, home, site, installed_at


def test_the_installed_copy_is_the_one_imported(installed):
    run, home, site, _ = installed
    out = run("-c", "import score_models as sm; print(sm.__file__); print(sm.artifacts.checkout_dir()); "
                    "print(sm.artifacts.artifact_dir()); print(sm.artifacts.mode())", check=True).stdout.split("\n")
    assert Path(out[0]).is_relative_to(site)
    assert out[1] == "None"
    assert Path(out[2]) == home / ".cache" / "score_models" / "artifacts"
    assert out[3] == "require"


def test_a_missing_model_is_refused_with_directions_not_trained(installed):
    run, home, _, _ = installed
    t0 = time.perf_counter()
    proc = run("-c", "import score_models as sm; sm.zoo.load('mnist_unet')")
    assert proc.returncode != 0 and time.perf_counter() - t0 < 120
    assert "ArtifactError" in proc.stderr
    assert "score-models artifacts build mnist_unet" in proc.stderr
    assert "SCORE_MODELS_ARTIFACT_DIR" in proc.stderr
    for mode in ("require", "rebuild", "use"):  # sampling never trains, in any mode
        cli = run("-m", "score_models.cli", "sample", "mnist", "--n", "2", "--out", "x.npy",
                  env={"SCORE_MODELS_ARTIFACTS": mode})
        assert cli.returncode == 2, (mode, cli.stderr)
        assert "mnist_unet is missing" in cli.stderr and "artifacts build mnist_unet" in cli.stderr
    assert not (home / ".cache" / "score_models" / "artifacts" / "mnist_unet.eqx").exists()


def test_the_book_models_are_found_where_the_user_points(installed):
    run, _, _, _ = installed
    proc = run("-c", "import score_models as sm; print(type(sm.zoo.load('explicit_sm_1d')).__name__)",
               env={"SCORE_MODELS_ARTIFACT_DIR": str(ROOT / "artifacts")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "MLP"


def test_a_requested_build_goes_to_the_user_cache_and_nothing_beside_the_package(installed):
    run, home, site, installed_at = installed
    proc = run("-m", "score_models.cli", "artifacts", "build", "explicit_sm_1d")
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    assert "explicit_sm_1d: trains" in said and "about" in said  # what it trains and for how long
    cache = home / ".cache" / "score_models" / "artifacts"
    assert (cache / "explicit_sm_1d.eqx").exists() and (cache / "explicit_sm_1d.json").exists()
    assert run("-c", "import score_models as sm; sm.zoo.load('explicit_sm_1d')").returncode == 0
    written = [p for p in (site / "score_models").rglob("*")
               if p.stat().st_mtime > installed_at and "__pycache__" not in p.parts]
    assert written == []
