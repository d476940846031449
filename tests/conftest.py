"""Shared fixtures for the unit tests of the library core.

The unit tests run on CPU with small sizes; every random draw comes from a fixed key, so every
test is deterministic. Statistical tolerances are derived from the Monte Carlo standard error
of the quantity being checked (typically 4-5 standard errors), not picked to make a test pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


@pytest.fixture
def artifact_dir(tmp_path, monkeypatch):
    """A fresh artifact directory (`SCORE_MODELS_ARTIFACT_DIR`) in `use` mode, so no test reads
    or writes the repository's `artifacts/` folder, whatever the caller's environment says."""
    d = tmp_path / "artifacts"
    d.mkdir()
    monkeypatch.setenv("SCORE_MODELS_ARTIFACT_DIR", str(d))
    monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", "use")
    return d



@pytest.fixture
def shared_mnist(monkeypatch):
    """Points `SCORE_MODELS_DATA` at the shared MNIST test split beside the checkout
    (`../shared/data`), skipping the test when that folder is absent."""
    if not (SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the shared MNIST test split is not available at {SHARED_DATA / 'mnist'}")
    monkeypatch.setenv("SCORE_MODELS_DATA", str(SHARED_DATA))
    return SHARED_DATA
