"""The benchmarks. Each takes `smoke` (toy sizes) and `peak` (GFLOP/s, once measured) and
returns a dict of results; every ratio is measured in this process against a reference run."""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import score_models as sm

from .timing import best_time, block, xla_flops


class Unavailable(Exception):
    """A benchmark whose subject does not exist yet (e.g. a chapter not landed)."""


def _recipe(name: str):
    try:
        return sm.zoo.get(name)
    except ValueError as e:
        raise Unavailable(str(e)) from e


# --------------------------------------------------------------------------- machine peak


def matmul_peak(*, smoke: bool, peak=None) -> dict:
    """float32 matmul throughput: the roofline everything else is a fraction of."""
    n = 256 if smoke else 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    seconds = best_time(lambda: dot(a, b), repeats=3 if smoke else 10)
    return {"matmul_peak_gflops": 2 * n**3 / seconds / 1e9, "matmul_size": n}


# --------------------------------------------------------------------------- training


def _chapter2_setup(smoke: bool):
    r = _recipe("noise_conditional_1d")
    gm = sm.data.running_example()
    data = gm.sample(jax.random.key(0), 2_000 if smoke else 10_000)
    model = sm.models.from_config(r.config["model"], jax.random.key(1))
    sigmas = jnp.asarray(sm.models.from_config(_recipe("ensemble_1d").config["model"]).sigmas)
    return gm, data, model, sigmas


def _python_loop_fit(model, loss_fn, data, optimizer, *, steps, key, batch_size):
    """The reference: a per-step Python loop over the same jitted step as `fit`'s scan body;
    seconds, compilation included."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    n = data.shape[0]

    @jax.jit
    def step(params, opt_state, data, step_key):
        key_batch, key_loss = jax.random.split(step_key)
        batch = data[jax.random.randint(key_batch, (batch_size,), 0, n)]
        loss, grads = jax.value_and_grad(lambda p: loss_fn(eqx.combine(p, static), batch, key_loss))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(params, updates), opt_state, loss

    t0 = time.perf_counter()  # compilation included, as for `fit`
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, data, jax.random.fold_in(key, i))
    block(params)
    return time.perf_counter() - t0


def _fit_seconds(model, loss_fn, data, optimizer, *, steps, key, batch_size) -> float:
    """Wall-clock seconds of one `fit` call of `steps` steps, its compilation included (what a
    user waits for). A short warm-up call first fills JAX's caches of everything but the kernel.
    (Subtracting two runs to cancel compilation proved too noisy on a loaded machine.)"""
    sm.fit(model, loss_fn, data, optimizer, steps=2, key=key, batch_size=batch_size, progress=False)
    t0 = time.perf_counter()
    m, _ = sm.fit(model, loss_fn, data, optimizer, steps=steps, key=key, batch_size=batch_size,
                  progress=False)
    block(eqx.filter(m, eqx.is_array))
    return time.perf_counter() - t0


def fit_vs_python_loop(*, smoke: bool, peak=None) -> dict:
    """`fit` against a per-step Python loop over the same jitted step (chapter-2 model,
    multi-scale denoising loss, batch 256)."""
    gm, data, model, sigmas = _chapter2_setup(smoke)
    steps = 100 if smoke else 2_000
    loss_fn = sm.losses.multiscale_denoising_score_matching(sigmas)
    opt = optax.adam(1e-3)
    kw = dict(steps=steps, key=jax.random.key(2), batch_size=256)
    t_fit = _fit_seconds(model, loss_fn, data, opt, **kw)
    t_loop = _python_loop_fit(model, loss_fn, data, opt, **kw)
    out = {"fit_vs_python_loop": t_loop / t_fit, "fit_steps_per_second": steps / t_fit,
           "python_loop_steps_per_second": steps / t_loop}
    if peak:
        params, static = eqx.partition(model, eqx.is_inexact_array)
        opt_state = opt.init(params)

        @jax.jit
        def one_step(params, opt_state, batch, key):
            loss, grads = jax.value_and_grad(lambda p: loss_fn(eqx.combine(p, static), batch, key))(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return eqx.apply_updates(params, updates), opt_state, loss

        flops = xla_flops(one_step, params, opt_state, data[:256], jax.random.key(0))
        # Steady state: the same step scanned over `steps` keys, compiled once, best of 3.
        batch = data[:256]

        @jax.jit
        def scanned(params, opt_state, keys):
            def body(carry, k):
                p, o, loss = one_step(carry[0], carry[1], batch, k)
                return (p, o), loss
            return jax.lax.scan(body, (params, opt_state), keys)

        keys = jax.random.split(jax.random.key(0), steps)
        t_steady = best_time(lambda: scanned(params, opt_state, keys), repeats=3)
        out["training_gflops"] = flops * steps / t_steady / 1e9
        out["training_fraction_of_peak"] = out["training_gflops"] / peak
    return out


def ensemble_vs_model_list(*, smoke: bool, peak=None) -> dict:
    """Nine one-per-sigma models as one vmapped `ScoreEnsemble` against a Python list of nine
    models whose losses are summed in one jitted loss; same steps, batch and optimiser."""
    r = _recipe("ensemble_1d")
    ensemble = sm.models.from_config(r.config["model"], jax.random.key(1))
    sigmas = ensemble.sigmas
    members = [ensemble.member(i) for i in range(ensemble.n_members)]
    if smoke:  # three members keep the list's compilation short
        members, sigmas = members[:3], sigmas[:3]
        ensemble = sm.models.ScoreEnsemble(lambda k: members[0], sigmas, data_std=ensemble.data_std,
                                           key=jax.random.key(1))
    data = sm.data.running_example().sample(jax.random.key(0), 2_000 if smoke else 10_000)
    steps = 100 if smoke else 2_000

    def list_loss(models, batch, key):
        total = 0.0
        for i, (m, sigma) in enumerate(zip(models, sigmas)):
            z = jax.random.normal(jax.random.fold_in(key, i), batch.shape)
            wrapped = lambda x, m=m, s=sigma: ensemble._apply(m, x, s)  # noqa: E731
            s = jax.vmap(wrapped)(batch + sigma * z)
            total = total + 0.5 * jnp.mean(jnp.sum((sigma * s + z) ** 2, axis=-1))
        return total / len(models)

    kw = dict(steps=steps, key=jax.random.key(2), batch_size=256)
    opt = optax.adam(1e-3)
    t_ens = _fit_seconds(ensemble, sm.losses.multiscale_denoising_score_matching(sigmas), data, opt, **kw)
    t_list = _fit_seconds(members, list_loss, data, opt, **kw)
    return {"ensemble_vs_model_list": t_list / t_ens, "ensemble_steps_per_second": steps / t_ens,
            "model_list_steps_per_second": steps / t_list, "ensemble_members": int(len(members))}


# --------------------------------------------------------------------------- sampling


def langevin_throughput(*, smoke: bool, peak=None) -> dict:
    """Annealed Langevin with the chapter-2 noise-conditional model: particle-steps per second
    and the fraction of the matmul peak it reaches (FLOPs from XLA's cost analysis of one step)."""
    gm, _, model, sigmas = _chapter2_setup(smoke)
    n = 1_000 if smoke else 10_000
    n_steps_each = 5 if smoke else 100
    x0 = sigmas[0] * jax.random.normal(jax.random.key(3), (n, 1))
    run = lambda: sm.annealed_langevin(model, x0, sigmas, jax.random.key(4), eps=0.05,  # noqa: E731
                                       n_steps_each=n_steps_each)
    seconds = best_time(run, repeats=2)
    total_steps = sigmas.shape[0] * n_steps_each
    out = {"langevin_particle_steps_per_second": n * total_steps / seconds, "langevin_seconds": seconds}
    if peak:
        params, static = eqx.partition(model, eqx.is_array)

        @jax.jit
        def one_step(params, x, key):
            s = jax.vmap(eqx.combine(params, static), in_axes=(0, None))(x, sigmas[-1])
            return x + 0.025 * s + 0.2 * jax.random.normal(key, x.shape)

        flops = xla_flops(one_step, params, x0, jax.random.key(0))
        out["langevin_gflops"] = flops * total_steps / seconds / 1e9
        out["langevin_fraction_of_peak"] = out["langevin_gflops"] / peak
    return out


def _pf_ode_speedup(score, x_init, **kwargs) -> tuple[float, float]:
    """Seconds of one `probability_flow_ode` call for all of `x_init`, and of a Python loop of
    one-particle calls (each shape compiled beforehand)."""
    solve = lambda x: sm.probability_flow_ode(score, x, **kwargs)  # noqa: E731
    t_batch = best_time(lambda: solve(x_init), repeats=3)
    block(solve(x_init[:1]))  # compile the one-particle shape
    t0 = time.perf_counter()
    for i in range(x_init.shape[0]):
        block(solve(x_init[i:i + 1]))
    return t_batch, time.perf_counter() - t0


def pf_ode_vs_particle_loop(*, smoke: bool, peak=None) -> dict:
    """The probability-flow ODE for many particles in one call against a Python loop of
    per-particle solves. Headline: chapter 5's setting (its learned 2D-mixture model, noise
    range and tolerance). Also: the exact mixture score at the library's default tolerance
    (1e-5), where each single-particle solve is cheap and the ratio is much smaller."""
    from score_models.zoo import chapter5

    n = 50 if smoke else 1_000
    config = sm.zoo.get("ncsn_2d_gaussians_continuous").config
    model = sm.zoo.load("ncsn_2d_gaussians_continuous")
    smax, smin = config["sigmas"]["sigma_max"], config["sigmas"]["sigma_min"]
    x_init = smax * jax.random.normal(jax.random.key(5), (n, 2))
    t_batch, t_loop = _pf_ode_speedup(model, x_init, sigma_max=smax, sigma_min=smin,
                                      rtol=chapter5.PF_TOL, atol=chapter5.PF_TOL)
    gm = sm.data.gaussian_mixture_2d()
    x_exact = 20.0 * jax.random.normal(jax.random.key(6), (n, 2))
    e_batch, e_loop = _pf_ode_speedup(gm.perturbed_score, x_exact, sigma_max=20.0, sigma_min=0.01)
    return {"pf_ode_vs_particle_loop": t_loop / t_batch, "pf_ode_batch_seconds": t_batch,
            "pf_ode_loop_seconds": t_loop, "pf_ode_particles": n,
            "pf_ode_exact_score_vs_particle_loop": e_loop / e_batch,
            "pf_ode_exact_score_batch_seconds": e_batch, "pf_ode_exact_score_loop_seconds": e_loop}


# --------------------------------------------------------------------------- chapters


def chapters_2_3(*, smoke: bool, peak=None) -> dict:
    """Everything chapters 2 and 3 need, from scratch: train their models (the recipes' own
    builds, not saved) and sample as chapter 3 does; mode weights and W1 reached."""
    names = sm.zoo.names(chapter=2) + sm.zoo.names(chapter=3)
    if not names:
        raise Unavailable("no chapter-2/3 recipes registered")
    t0 = time.perf_counter()
    models = {}
    for name in names:
        r = sm.zoo.get(name)
        config = dict(r.config)
        if smoke:  # a few steps only: this checks the plumbing, not the quality
            config["steps"] = min(int(config.get("steps", 100)), 50)
            if isinstance(config.get("optimizer"), dict) and "warmup_steps" in config["optimizer"]:
                config["optimizer"] = {**config["optimizer"], "warmup_steps": 10}
        result = r.build(config)
        models[name] = result if isinstance(result, eqx.Module) else result[0]
    model = models["noise_conditional_1d"]
    gm = sm.data.running_example()
    sampling = sm.zoo.chapter3.SAMPLING  # the settings chapter 3 samples this model with
    sigmas = jnp.asarray(sm.zoo.get("ensemble_1d").config["model"]["sigmas"])
    n = 1_000 if smoke else 10_000
    x0 = sigmas[0] * jax.random.normal(jax.random.key(6), (n, 1))
    x = block(sm.annealed_langevin(model, x0, sigmas, jax.random.key(7), denoise=True, **sampling).samples)
    seconds = time.perf_counter() - t0
    weights = sm.metrics.mode_weights(x, gm)
    w1 = sm.metrics.wasserstein_1d(x, gm.sample(jax.random.key(8), n))
    return {"chapters_2_3_seconds": seconds, "chapters_2_3_mode_weights": [float(w) for w in weights],
            "chapters_2_3_wasserstein_1": w1, "chapters_2_3_artifacts": names}


def mnist_training(*, smoke: bool, peak=None) -> dict:
    """The MNIST U-Net's training step: images per second and fraction of the matmul peak."""
    r = _recipe("mnist_unet")
    model = sm.models.from_config(r.config["model"], jax.random.key(0))
    batch = 8 if smoke else int(r.config.get("batch_size", 128))
    sigmas = sm.geometric_sigmas(r.config.get("sigma_max", 50.0), r.config.get("sigma_min", 0.01), 10)
    loss_fn = sm.losses.multiscale_denoising_score_matching(sigmas)
    opt = optax.adam(1e-3)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = opt.init(params)
    images = jax.random.uniform(jax.random.key(1), (batch, 1, 28, 28))

    @jax.jit
    def one_step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(eqx.combine(p, static), batch, key))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return eqx.apply_updates(params, updates), opt_state, loss

    seconds = best_time(lambda: one_step(params, opt_state, images, jax.random.key(2)),
                        repeats=2 if smoke else 5)
    out = {"mnist_images_per_second": batch / seconds, "mnist_batch_size": batch}
    if peak:
        flops = xla_flops(one_step, params, opt_state, images, jax.random.key(2))
        out["mnist_training_gflops"] = flops / seconds / 1e9
        out["mnist_training_fraction_of_peak"] = out["mnist_training_gflops"] / peak
    return out


def mnist_fit(*, smoke: bool, peak=None) -> dict:
    """`sm.fit` on the MNIST U-Net recipe (its batch size, EMA and loss), batches sharded over
    every device JAX sees: training images per second after compilation. Run it with
    `XLA_FLAGS=--xla_force_host_platform_device_count=2` to compare two host devices with one."""
    r = _recipe("mnist_unet")
    config = r.config
    model = sm.models.from_config(config["model"], jax.random.key(0))
    batch = 8 if smoke else int(config["batch_size"])
    steps = 4 if smoke else 160
    loss_fn = sm.zoo.chapter6.unet_loss(config)  # the recipe's own loss (EDM weighting, log-normal sigmas)
    images = jax.random.uniform(jax.random.key(1), (512, 1, 28, 28))
    kw = dict(key=jax.random.key(2), batch_size=batch, ema_decay=config["ema_decay"], progress=False,
              chunk_size=steps // 2)

    def seconds_for(n_steps: int) -> float:
        t0 = time.perf_counter()
        trained, _ = sm.fit(model, loss_fn, images, optax.adam(1e-3), steps=n_steps, **kw)
        block(jax.tree.leaves(eqx.filter(trained, eqx.is_array)))
        return time.perf_counter() - t0

    # `fit` compiles once per call: the difference of a two-chunk and a one-chunk run is the
    # time of `steps // 2` steps with compilation cancelled out.
    one, two = seconds_for(steps // 2), seconds_for(steps)
    seconds = max(two - one, 1e-9) * 2
    return {"mnist_fit_images_per_second": steps * batch / seconds, "mnist_fit_devices": len(jax.devices()),
            "mnist_fit_batch_size": batch}


def _slug(name: str) -> str:
    """`"Heun + churn"` -> `"heun_churn"`."""
    return "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


# Toy settings for --smoke: every sampler runs a handful of steps.
_SMOKE_SETTINGS = {"n_steps_each": 1, "n_levels": 3, "n_steps": 3, "tol": 0.3}


def mnist_sampling(*, smoke: bool, peak=None) -> dict:
    """MNIST samples per second of every sampler of chapter 8 at its chapter setting
    (`zoo.chapter8.MNIST_SAMPLERS`), one chunk of 32 images after compilation, with the trained
    U-Net (smoke: 2 images, toy settings); and how many times faster than annealed Langevin
    each one is. Printed, never asserted."""
    from score_models.zoo import chapter8

    _recipe("mnist_unet")
    if sm.zoo.status("mnist_unet") != "ok":  # (an untrained U-Net's zero score breaks the corrector)
        raise Unavailable("the mnist_unet artifact is not built")
    model = sm.zoo.load("mnist_unet")
    batch = 2 if smoke else 32
    out = {"mnist_sampling_batch": batch}
    for name, settings in chapter8.MNIST_SAMPLERS.items():
        toy = {k: v for k, v in _SMOKE_SETTINGS.items() if k in settings} if smoke else {}
        result = {}

        def run():
            result["r"] = chapter8.sample_mnist(model, jax.random.key(3), batch, sampler=name, chunk_size=batch, **toy)
            return result["r"].samples

        seconds = best_time(run, repeats=1)
        key = _slug(name)
        out[f"mnist_samples_per_second_{key}"] = batch / seconds
        out[f"mnist_score_evals_{key}"] = result["r"].score_evals
    base = out[f"mnist_samples_per_second_{_slug('annealed Langevin')}"]
    for name in chapter8.MNIST_SAMPLERS:
        out[f"mnist_speed_vs_annealed_{_slug(name)}"] = out[f"mnist_samples_per_second_{_slug(name)}"] / base
    return out


BENCHMARKS = {
    "matmul_peak": matmul_peak,
    "fit_vs_python_loop": fit_vs_python_loop,
    "ensemble_vs_model_list": ensemble_vs_model_list,
    "langevin": langevin_throughput,
    "pf_ode_vs_particle_loop": pf_ode_vs_particle_loop,
    "chapters_2_3": chapters_2_3,
    "mnist_training": mnist_training,
    "mnist_fit": mnist_fit,
    "mnist_sampling": mnist_sampling,
}
