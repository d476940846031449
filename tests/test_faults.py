"""Faults a process cannot catch itself: SIGKILL in the middle of training or of a save,
concurrent writers, sizes that cannot fit in memory, and an installed copy without a checkout.
Each runs in subprocesses, so a crash or an abort cannot take the test run down with it.

(Faults inside one process, such as a save interrupted between its two writes, damaged
sidecars and checkpoints or unwritable paths, are tested beside the code: test_artifacts.py,
test_training.py, test_cli.py.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax

import score_models as sm
from score_models import artifacts
from score_models._checkpoint import Checkpoint

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))


def python(code: str, *args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_array)):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the subprocess ended early: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)


# --------------------------------------------------------------------------- fit and SIGKILL

FIT = """
    import sys, jax, optax, score_models as sm
    data = 1.0 + 2.0 * jax.random.normal(jax.random.key(0), (1000, 1))
    model = sm.models.MLP(1, 16, 1, key=jax.random.key(1))
    sm.fit(model, sm.losses.denoising_score_matching(1.0), data, optax.adam(1e-2), steps=STEPS,
           key=jax.random.key(2), batch_size=256, chunk_size=1000, progress=False, checkpoint=sys.argv[1])
"""
# Far more than a kill within 0.3 s of a checkpoint lets finish (the compiled loop runs this
# model at some 30,000 steps per second on a laptop core).
STEPS = 100_000


def fit_run(checkpoint=None):
    data = 1.0 + 2.0 * jax.random.normal(jax.random.key(0), (1000, 1))
    model = sm.models.MLP(1, 16, 1, key=jax.random.key(1))
    return sm.fit(model, sm.losses.denoising_score_matching(1.0), data, optax.adam(1e-2), steps=STEPS,
                  key=jax.random.key(2), batch_size=256, chunk_size=1000, progress=False, checkpoint=checkpoint)


def test_fit_killed_three_times_resumes_bit_for_bit(tmp_path):
    """SIGKILL at three random moments after a checkpoint exists; the resumed run's weights and
    its whole loss history equal an uninterrupted run's, and the checkpoint is gone."""
    ckpt = tmp_path / "run"  # no suffix
    rng = np.random.default_rng(0)
    steps_done = []
    def saved_step():
        return Checkpoint(ckpt)._read()[0]["step"] if ckpt.exists() else 0

    for _ in range(3):
        proc = python(FIT.replace("STEPS", str(STEPS)), str(ckpt))
        before = saved_step()
        wait_for(lambda: saved_step() > before, 120, proc)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        steps_done.append(saved_step())
    assert 0 < steps_done[0] < STEPS and steps_done == sorted(steps_done)
    # A kill in the middle of a write may leave that write's temporary file, never a damaged checkpoint.
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "run" in left and all(n == "run" or (n.startswith(".run.") and n.endswith(".tmp")) for n in left), left
    resumed, history = fit_run(ckpt)
    reference, ref_history = fit_run()
    assert history["resumed_from_step"] == steps_done[-1]
    assert weights_digest(resumed) == weights_digest(reference)
    np.testing.assert_array_equal(history["loss"], ref_history["loss"])
    assert list(tmp_path.iterdir()) == []  # the finished run removes its checkpoint and any stale temp file


# --------------------------------------------------------------------------- artifacts

CONFIG = {"model": {"type": "MLP", "dim": 2, "width": 64, "depth": 2}}
SAVER = """
    import sys, jax, score_models as sm
    directory, seeds, repeats = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], int(sys.argv[3])
    config = {"model": {"type": "MLP", "dim": 2, "width": 64, "depth": 2}}
    models = [sm.models.from_config(config["model"], jax.random.key(s)) for s in seeds]
    for i in range(repeats):
        sm.artifacts.save("shared", models[i % len(models)], config, directory=directory)
        if i == 0:
            print("saved", flush=True)
"""


def model(seed: int):
    return sm.models.from_config(CONFIG["model"], jax.random.key(seed))


def test_save_killed_at_random_moments_leaves_a_whole_artifact(tmp_path):
    """A process re-saving two models in a loop is SIGKILLed at random moments; every time the
    artifact that remains is whole and is one of the two."""
    expected = {weights_digest(model(s)) for s in (1, 2)}
    rng = np.random.default_rng(1)
    for _ in range(5):
        proc = python(SAVER, str(tmp_path), "1,2", "100000")
        assert proc.stdout.readline().strip() == "saved"
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert artifacts.status("shared", CONFIG, directory=tmp_path) == "ok"
        assert weights_digest(artifacts.load("shared", directory=tmp_path)) in expected


def test_concurrent_savers_and_a_reader(tmp_path):
    """Two processes save different models under one name while this one keeps loading it: no
    load fails, and the final artifact is whole and one of the two."""
    artifacts.save("shared", model(1), CONFIG, directory=tmp_path)
    expected = {weights_digest(model(s)) for s in (1, 2)}
    writers = [python(SAVER, str(tmp_path), seed, "30") for seed in ("1", "2")]
    loads, failures = 0, []
    while any(w.poll() is None for w in writers):
        try:
            assert weights_digest(artifacts.load("shared", directory=tmp_path)) in expected
            loads += 1
        except artifacts.ArtifactError as e:
            failures.append(str(e))
    for w in writers:
        out, err = w.communicate()
        assert w.returncode == 0, err
    assert failures == [] and loads > 0
    assert artifacts.status("shared", CONFIG, directory=tmp_path) == "ok"
    assert weights_digest(artifacts.load("shared", directory=tmp_path)) in expected
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith((".next", ".tmp"))]


# --------------------------------------------------------------------------- huge sizes


def test_sizes_that_cannot_fit_are_refused_and_the_process_survives(tmp_path):
    proc = python("""
        import jax, jax.numpy as jnp, optax, score_models as sm
        try:
            sm.fit(sm.models.MLP(1, 4, 1, key=jax.random.key(0)), sm.losses.denoising_score_matching(1.0),
                   jnp.zeros((8, 1)), optax.sgd(0.1), steps=10**13, key=jax.random.key(0), progress=False)
        except ValueError as e:
            print("refused:", e)
        print("alive")
    """)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "refused: `steps` is too large" in out and out.strip().endswith("alive")
    proc = subprocess.run([sys.executable, "-m", "score_models.cli", "sample", "mnist", "--n", str(10**12),
                           "--out", str(tmp_path / "x.npy")], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "`--n` is too large" in proc.stderr


# --------------------------------------------------------------------------- an installed copy


def test_an_installed_copy_never_trains_or_writes_beside_itself(tmp_path):
    """The package copied without its checkout (as `pip install .` puts it in site-packages):
    `zoo.load` of a model that is not in the user cache fails in seconds, says how to get it,
    and writes nothing; pointed at the checkout's artifacts it loads them."""
    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "score_models", site / "score_models",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in ENV.items() if not k.startswith("SCORE_MODELS_ARTIF")}
    env.update(PYTHONPATH=str(site), HOME=str(tmp_path / "home"), SCORE_MODELS_CACHE=str(tmp_path / "cache"))
    code = """
        import score_models as sm
        print(sm.artifacts.checkout_dir(), sm.artifacts.artifact_dir(), sm.artifacts.mode())
        try:
            sm.zoo.load("noise_conditional_1d")
        except sm.artifacts.ArtifactError as e:
            print("refused:", e)
    """
    t0 = time.monotonic()
    out, err = python(code, env=env, cwd=tmp_path).communicate(timeout=120)
    assert time.monotonic() - t0 < 60, "took as long as training"
    assert f"None {tmp_path / 'cache' / 'artifacts'} require" in out, err
    for part in ["refused: Artifact 'noise_conditional_1d' is missing", "installed copy",
                 "score-models artifacts build noise_conditional_1d", "about 40 s on a 2-core CPU",
                 "SCORE_MODELS_ARTIFACT_DIR"]:
        assert part in out, (part, out)
    assert not (tmp_path / "cache").exists() and not (site / "artifacts").exists()
    env["SCORE_MODELS_ARTIFACT_DIR"] = str(REPO / "artifacts")
    out, err = python(code + "\n        print(type(sm.zoo.load('noise_conditional_1d')).__name__)",
                      env=env, cwd=tmp_path).communicate(timeout=120)
    assert out.strip().endswith("NoiseConditionalMLP"), out + err


def test_a_finished_run_removes_the_temp_files_of_killed_writes(tmp_path):
    """A SIGKILL during `atomic_write` leaves `.NAME.*.tmp` beside the checkpoint; the run that
    finishes removes it with the checkpoint (it once stayed forever)."""
    ckpt = tmp_path / "run.ckpt"
    (tmp_path / ".run.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "unrelated.tmp").write_bytes(b"not ours")
    fit_run(ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.tmp"]
