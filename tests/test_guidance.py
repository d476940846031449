"""Guided scores and inpainting against exact answers: a Gaussian mixture's class posterior
under noise makes classifier guidance exact, and its conditional given some coordinates is an
exact, smaller mixture. Also the GaussianMixture helpers behind those answers."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_models as sm

# Three overlapping classes (one isotropic component each) in 3D.
GM3 = sm.GaussianMixture([[0.0, 1.5, 0.0], [-1.3, -0.75, 0.5], [1.3, -0.75, -0.5]], [0.8, 0.6, 1.0],
                         [0.5, 0.3, 0.2])


def batch_score(score, x, sigma):
    return jax.jit(jax.vmap(score, in_axes=(0, None)))(x, sigma)


# ------------------------------------------------------------------------ mixture helpers


def test_class_log_posterior_is_bayes_rule_under_noise():
    x = 2.0 * jax.random.normal(jax.random.key(0), (50, 3))
    for sigma in (0.0, 0.3, 2.0):
        log_post = jax.vmap(GM3.class_log_posterior, in_axes=(0, None))(x, sigma)
        perturbed = GM3.perturbed(sigma)
        by_hand = jax.vmap(perturbed.component_log_probs)(x) - jax.vmap(perturbed.log_prob)(x)[:, None]
        np.testing.assert_allclose(log_post, by_hand, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(jax.scipy.special.logsumexp(log_post, axis=-1), 0.0, atol=1e-5)


def test_subset_is_the_class_conditional_distribution():
    x = 2.0 * jax.random.normal(jax.random.key(1), (40, 3))
    two = GM3.subset([0, 2])
    np.testing.assert_allclose(two.weights, [0.5 / 0.7, 0.2 / 0.7], rtol=1e-6)
    # p(x | class in {0, 2}) = sum_{k in C} w_k N_k(x) / sum_{k in C} w_k
    comps = jax.vmap(GM3.component_log_probs)(x)
    expected = jax.scipy.special.logsumexp(comps[:, [0, 2]], axis=-1) - np.log(0.7)
    np.testing.assert_allclose(jax.vmap(two.log_prob)(x), expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(GM3.subset(np.array([True, False, True])).means, two.means)
    for bad in ([], [3], [0, 0], [-1], np.array([True, False]), [0.5]):
        with pytest.raises(ValueError, match="`components`"):
            GM3.subset(bad)


def test_sample_labelled_draws_the_samples_of_sample_and_their_components():
    key = jax.random.key(2)
    x, k = GM3.sample_labelled(key, 20_000)
    assert np.array_equal(x, GM3.sample(key, 20_000)) and k.dtype == jnp.int32
    freq = np.bincount(np.asarray(k), minlength=3) / 20_000
    np.testing.assert_allclose(freq, GM3.weights, atol=5 * np.sqrt(0.25 / 20_000))
    # each point is a draw of its own component: standardised residuals are N(0, 1)
    z = (x - GM3.means[k]) / GM3.stds[k][:, None]
    np.testing.assert_allclose(jnp.mean(z, 0), 0.0, atol=5 / np.sqrt(20_000))
    np.testing.assert_allclose(jnp.std(z, 0), 1.0, atol=5 / np.sqrt(2 * 20_000))


def test_conditional_matches_the_normalised_joint_density():
    """p(x_u | x_m) = p(x_m, x_u) / int p(x_m, x_u) dx_u, by quadrature over the unknown axis."""
    gm = sm.data.gaussian_mixture_2d()
    grid = np.linspace(-8.0, 8.0, 4001)
    for known_axis, value in ((0, 3.3), (1, 0.5), (0, -2.0)):
        mask = np.arange(2) == known_axis
        x_known = jnp.zeros(2).at[known_axis].set(value)
        cond = gm.conditional(x_known, mask)
        points = np.zeros((grid.size, 2), np.float32)
        points[:, known_axis], points[:, 1 - known_axis] = value, grid
        joint = np.exp(np.asarray(jax.jit(jax.vmap(gm.log_prob))(points), np.float64))
        expected = joint / np.trapezoid(joint, grid)
        got = np.exp(np.asarray(jax.vmap(cond.log_prob)(jnp.asarray(grid[:, None], jnp.float32)), np.float64))
        np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-6 * expected.max())


def test_conditional_in_three_dimensions_reweights_by_the_known_coordinates():
    mask = np.array([True, False, True])
    x_known = jnp.array([0.4, 123.0, -0.3])  # the unknown entry is ignored
    cond = GM3.conditional(x_known, mask)
    assert cond.dim == 1 and np.array_equal(cond.means[:, 0], GM3.means[:, 1])
    known = GM3.means[:, [0, 2]]
    log_w = jnp.log(GM3.weights) - jnp.log(GM3.stds**2) - jnp.sum((x_known[jnp.array([0, 2])] - known) ** 2, -1) / (
        2 * GM3.stds**2)
    np.testing.assert_allclose(cond.weights, jax.nn.softmax(log_w), rtol=1e-5)


@pytest.mark.parametrize("x_known,mask,match", [
    (jnp.zeros(2), np.array([1, 0]), "boolean"),
    (jnp.zeros(2), np.array([True, True]), "at least one known and one unknown"),
    (jnp.zeros(2), np.array([False, False]), "at least one known and one unknown"),
    (jnp.zeros(3), np.array([True, False]), "`x_known` must have shape"),
    (jnp.array([jnp.nan, 0.0]), np.array([True, False]), "`x_known` contains"),
])
def test_conditional_rejects_bad_input(x_known, mask, match):
    with pytest.raises(ValueError, match=match):
        sm.data.gaussian_mixture_2d().conditional(x_known, mask)


# ------------------------------------------------------------------------ guided scores


@pytest.mark.parametrize("k", [0, 2])
def test_exact_guidance_is_the_exact_conditional_score(k):
    """grad log p_sigma(x) + grad log p_sigma(k | x) = grad log p_sigma(x | k), the score of
    component k alone: Bayes' rule for scores, at every noise level."""
    guided = sm.guided_score(GM3.perturbed_score, lambda x, s: GM3.class_log_posterior(x, s)[k])
    x = 3.0 * jax.random.normal(jax.random.key(3), (200, 3))
    for sigma in (0.05, 0.5, 5.0):
        exact = batch_score(GM3.subset([k]).perturbed_score, x, sigma)
        np.testing.assert_allclose(batch_score(guided, x, sigma), exact, rtol=1e-4,
                                   atol=1e-5 * float(jnp.max(jnp.abs(exact))))


def test_classifier_free_score_is_guidance_by_the_implicit_classifier():
    k = 1
    cond, uncond = GM3.subset([k]).perturbed_score, GM3.perturbed_score
    x = 3.0 * jax.random.normal(jax.random.key(4), (100, 3))
    for scale in (0.0, 1.0, 3.0):
        free = sm.classifier_free_score(cond, uncond, scale=scale)
        guided = sm.guided_score(uncond, lambda x, s: GM3.class_log_posterior(x, s)[k], scale=scale)
        a, b = batch_score(free, x, 0.7), batch_score(guided, x, 0.7)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(batch_score(sm.classifier_free_score(cond, uncond), x, 0.7),
                               batch_score(cond, x, 0.7), rtol=1e-5, atol=1e-5)


def test_log_likelihood_must_be_a_scalar():
    guided = sm.guided_score(GM3.perturbed_score, GM3.class_log_posterior)  # (k,): every class at once
    with pytest.raises(ValueError, match="must return a scalar"):
        sm.annealed_langevin(guided, jnp.ones((4, 3)), SIGMAS, jax.random.key(0), eps=1e-3, n_steps_each=1)


def test_a_guided_score_compiles_once_for_every_scale():
    traces = []

    @eqx.filter_jit
    def apply(score, x):
        traces.append(1)
        return jax.vmap(score, in_axes=(0, None))(x, 1.0)

    class LogPosterior(eqx.Module):
        k: int = eqx.field(static=True)

        def __call__(self, x, sigma):
            return GM3.class_log_posterior(x, sigma)[self.k]

    x = jnp.ones((4, 3))
    a = apply(sm.guided_score(GM3.perturbed_score, LogPosterior(0), scale=1.0), x)
    b = apply(sm.guided_score(GM3.perturbed_score, LogPosterior(0), scale=2.5), x)
    assert len(traces) == 1 and not np.allclose(a, b)


@pytest.mark.parametrize("bad,match", [("x", "`scale` must be a real number"), (float("inf"), "finite"),
                                       (jnp.ones(2), "scalar")])
def test_guidance_rejects_bad_scales(bad, match):
    with pytest.raises(ValueError, match=match):
        sm.guided_score(GM3.perturbed_score, lambda x, s: 0.0, scale=bad)
    with pytest.raises(ValueError, match=match):
        sm.classifier_free_score(GM3.perturbed_score, GM3.perturbed_score, scale=bad)
    with pytest.raises(ValueError, match="`log_likelihood` must be callable"):
        sm.guided_score(GM3.perturbed_score, 3.0)


def test_exactly_guided_annealed_langevin_samples_one_class():
    """Annealed Langevin with the exactly guided score samples N(mu_k, s_k^2 I): moments within
    five standard errors (plus the O(alpha) Langevin bias, below 1% here)."""
    k, n = 2, 4000
    guided = sm.guided_score(GM3.perturbed_score, lambda x, s: GM3.class_log_posterior(x, s)[k])
    sigmas = sm.geometric_sigmas(6.0, 0.03, 10)
    x0 = 6.0 * jax.random.normal(jax.random.key(5), (n, 3))
    x = sm.annealed_langevin(guided, x0, sigmas, jax.random.key(6), eps=5e-4, n_steps_each=60, denoise=True).samples
    s = float(GM3.stds[k])
    np.testing.assert_allclose(jnp.mean(x, 0), GM3.means[k], atol=5 * s / np.sqrt(n))
    np.testing.assert_allclose(jnp.std(x, 0), s, rtol=5 / np.sqrt(2 * n) + 0.01)


# ------------------------------------------------------------------------ inpainting

# Two components far apart along x_1 and close along x_2: the known x_1 decides the component.
DECIDED = sm.GaussianMixture([[-6.0, -1.0], [6.0, 1.0]], [0.5, 0.5], [0.5, 0.5])
SIGMAS = sm.geometric_sigmas(12.0, 0.02, 12)


def test_inpaint_samples_the_exact_conditional_when_the_known_coordinate_decides():
    n = 4000
    x_known = jnp.array([6.0, 0.0])
    mask = np.array([True, False])
    r = sm.inpaint(DECIDED.perturbed_score, x_known, mask, jax.random.key(7), sigmas=SIGMAS, eps=5e-4,
                   n_steps_each=50, n=n)
    cond = DECIDED.conditional(x_known, mask)  # N(1, 0.5^2)
    np.testing.assert_allclose(cond.weights, [0.0, 1.0], atol=1e-12)
    x2 = r.samples[:, 1]
    assert float(jnp.mean(x2)) == pytest.approx(1.0, abs=5 * 0.5 / np.sqrt(n))
    assert float(jnp.std(x2)) == pytest.approx(0.5, rel=5 / np.sqrt(2 * n) + 0.01)
    assert np.all(np.asarray(r.samples[:, 0]) == 6.0)


def test_inpaint_result_fields_and_known_coordinates():
    x_known = jnp.array([[6.0, 0.0], [-6.0, 9.0], [1.0, 2.0]])
    mask = np.array([[True, False], [True, False], [False, True]])  # one mask per particle
    r = sm.inpaint(DECIDED.perturbed_score, x_known, mask, jax.random.key(8), sigmas=SIGMAS, eps=5e-4,
                   n_steps_each=5, trajectory_every=20)
    assert isinstance(r, sm.SamplerResult) and r.samples.shape == (3, 2)
    np.testing.assert_array_equal(np.asarray(r.samples)[mask], np.asarray(x_known)[mask])
    assert r.score_evals == 12 * 5 + 1 and r.n_diverged == 0
    assert r.trajectory.shape == (1 + 3 + 1, 3, 2) and np.array_equal(r.trajectory[-1], r.samples)
    np.testing.assert_array_equal(np.asarray(r.trajectory_sigmas)[[0, -1]], [SIGMAS[0], 0.0])
    # before the Tweedie step the known coordinates hold the last level's noisy values
    before = np.asarray(r.samples_before_denoise)[mask]
    assert not np.array_equal(before, np.asarray(x_known)[mask])
    assert np.max(np.abs(before - np.asarray(x_known)[mask])) < 6 * float(SIGMAS[-1])
    # the Tweedie step acts on the unknown coordinates
    denoised = sm.tweedie_denoise(DECIDED.perturbed_score, r.samples_before_denoise, SIGMAS[-1])
    np.testing.assert_allclose(np.asarray(r.samples)[~mask], np.asarray(denoised)[~mask], rtol=1e-5, atol=1e-5)
    plain = sm.inpaint(DECIDED.perturbed_score, x_known, mask, jax.random.key(8), sigmas=SIGMAS, eps=5e-4,
                       n_steps_each=5, denoise=False)
    assert plain.samples_before_denoise is None and plain.score_evals == 60
    np.testing.assert_array_equal(np.asarray(plain.samples)[mask], np.asarray(x_known)[mask])


def test_inpaint_images_one_example_many_particles():
    """Examples of any shape; one example completed by `n` particles, with given `x_init`."""
    shape = (1, 4, 4)
    score = lambda x, sigma: -x / (1.0 + sigma**2)  # noqa: E731  (data N(0, I))
    x_known = jnp.arange(16.0).reshape(shape) / 16
    mask = np.zeros(shape, bool)
    mask[:, :, :2] = True
    x_init = jnp.zeros((5, *shape))
    r = sm.inpaint(score, x_known, mask, jax.random.key(9), sigmas=jnp.array([2.0, 1.0]), eps=0.01,
                   n_steps_each=3, n=5, x_init=x_init)
    assert r.samples.shape == (5, *shape)
    np.testing.assert_array_equal(np.asarray(r.samples)[:, mask], np.broadcast_to(np.asarray(x_known)[mask], (5, 8)))
    again = sm.inpaint(score, x_known, mask, jax.random.key(9), sigmas=jnp.array([2.0, 1.0]), eps=0.01,
                       n_steps_each=3, n=5, x_init=x_init)
    assert np.array_equal(r.samples, again.samples)


@pytest.mark.parametrize("kwargs,match", [
    (dict(x_known=jnp.zeros(2)), "pass `n`"),
    (dict(mask=np.array([1, 0])), "`mask` must be boolean"),
    (dict(mask=np.array([True, False, True])), "`mask` must have the shape"),
    (dict(mask=np.ones((4, 2), bool)), "`mask` must have the shape"),
    (dict(x_known=jnp.full((3, 2), jnp.nan)), "`x_known` contains"),
    (dict(x_init=jnp.zeros((2, 2))), "`x_init` must have shape"),
    (dict(sigmas=jnp.array([1.0, 2.0])), "`sigmas` must be strictly decreasing"),
    (dict(eps=-1.0), "`eps`"),
    (dict(n_steps_each=0), "`n_steps_each`"),
    (dict(denoise="yes"), "`denoise`"),
    (dict(trajectory_every=7), "`trajectory_every`"),
    (dict(score_fn=lambda x: x), "`score_fn` failed"),
])
def test_inpaint_rejects_bad_input(kwargs, match):
    args = dict(score_fn=DECIDED.perturbed_score, x_known=jnp.zeros((3, 2)), mask=np.array([True, False]),
                key=jax.random.key(0), sigmas=SIGMAS, eps=1e-3, n_steps_each=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sm.inpaint(**args)


# ------------------------------------------------------------------------ models and losses

GM2 = sm.GaussianMixture([[0.0, 1.5], [-1.3, -0.75], [1.3, -0.75]], [0.8, 0.8, 0.8], [0.5, 0.3, 0.2])
LEVELS = sm.geometric_sigmas(6.0, 0.03, 10)


class TemperedPosterior(eqx.Module):
    """The exact class posterior of GM2 under noise, with its log-probabilities divided by a
    temperature: a 'classifier' whose best temperature is 1."""

    temperature: float

    def __call__(self, x, sigma):
        return GM2.class_log_posterior(x, sigma) / self.temperature


class ExactConditional(eqx.Module):
    """The exact class-conditional perturbed score of GM2 (label 3: unconditional), times a
    factor: a class-conditional 'model' whose best factor is 1."""

    factor: float

    def __call__(self, x, sigma, label):
        scores = jnp.stack([GM2.subset([k]).perturbed_score(x, sigma) for k in range(3)]
                           + [GM2.perturbed_score(x, sigma)])
        return self.factor * scores[label]


def test_the_exact_posterior_minimises_the_noisy_classification_loss():
    """Cross-entropy is a proper scoring rule: the exact posterior at every level beats the same
    posterior made sharper or flatter (same batch, noise and levels for all three)."""
    data = GM2.sample_labelled(jax.random.key(10), 20_000)
    loss = jax.jit(sm.losses.noise_conditional_classification(LEVELS))
    values = {t: float(loss(TemperedPosterior(t), data, jax.random.key(11))) for t in (0.8, 1.0, 1.25)}
    assert values[1.0] < values[0.8] and values[1.0] < values[1.25], values
    # ... and equals E[-log p_sigma(y | x + sigma z)] computed by hand with the loss's own draws
    key_s, key_z = jax.random.split(jax.random.key(11))
    sigma = LEVELS[jax.random.randint(key_s, (20_000,), 0, 10)]
    noisy = data[0] + sigma[:, None] * jax.random.normal(key_z, data[0].shape)
    by_hand = -jnp.mean(jax.vmap(GM2.class_log_posterior)(noisy, sigma)[jnp.arange(20_000), data[1]])
    assert values[1.0] == pytest.approx(float(by_hand), rel=1e-5)


def test_the_exact_scores_minimise_the_class_conditional_loss():
    data = GM2.sample_labelled(jax.random.key(12), 20_000)
    loss = jax.jit(sm.losses.class_conditional_denoising_score_matching(LEVELS, null_label=3, drop_probability=0.3))
    values = {f: float(loss(ExactConditional(f), data, jax.random.key(13))) for f in (0.9, 1.0, 1.1)}
    assert values[1.0] < values[0.9] and values[1.0] < values[1.1], values


class LabelSpy(eqx.Module):
    """NaN for the labels in `poison`, else the score of N(0, I) data."""

    poison: tuple = eqx.field(static=True)

    def __call__(self, x, sigma, label):
        bad = jnp.any(jnp.asarray(self.poison) == label)
        return jnp.where(bad, jnp.nan, -x / (1.0 + sigma**2))


def test_label_dropout_replaces_labels_by_the_null_label():
    data = GM2.sample_labelled(jax.random.key(14), 512)
    def run(p, poison):
        loss = sm.losses.class_conditional_denoising_score_matching(LEVELS, null_label=3, drop_probability=p)
        return float(loss(LabelSpy(poison), data, jax.random.key(15)))
    assert np.isfinite(run(1.0, (0, 1, 2))) and np.isnan(run(1.0, (3,)))  # every label dropped
    assert np.isfinite(run(0.0, (3,))) and np.isnan(run(0.0, (0, 1, 2)))  # none dropped
    assert np.isnan(run(0.2, (3,))) and np.isnan(run(0.2, (0, 1, 2)))  # some of each


def test_conditional_models_shapes_labels_and_configs():
    clf = sm.models.NoiseConditionalClassifier(2, 3, key=jax.random.key(0))
    assert clf(jnp.ones(2), 0.5).shape == (3,)
    cond = sm.models.ClassConditionalMLP(2, 3, width=16, depth=2, key=jax.random.key(1))
    assert cond.null_label == 3 and cond(jnp.ones(2), 0.5, 3).shape == (2,)
    np.testing.assert_array_equal(cond.with_label(None)(jnp.ones(2), 0.5), cond(jnp.ones(2), 0.5, 3))
    np.testing.assert_array_equal(cond.with_label(1)(jnp.ones(2), 0.5), cond(jnp.ones(2), 0.5, 1))
    assert not np.allclose(cond(jnp.ones(2), 0.5, 0), cond(jnp.ones(2), 0.5, 1))
    for bad in (4, -1, 1.0, jnp.array([1, 2])):
        with pytest.raises(ValueError, match="`label`"):
            cond.with_label(bad)
    config = sm.models.model_config("ClassConditionalMLP", dim=2, n_classes=3, width=16, depth=2)
    rebuilt = sm.models.from_config(config, jax.random.key(1))
    np.testing.assert_array_equal(rebuilt(jnp.ones(2), 0.5, 2), cond(jnp.ones(2), 0.5, 2))
    with pytest.raises(ValueError, match="ONE example"):
        clf(jnp.ones((4, 2)), 0.5)


def test_class_log_likelihood_of_a_classifier():
    x = jax.random.normal(jax.random.key(2), (10, 2))
    ll = sm.samplers.class_log_likelihood(GM2.class_log_posterior, 2)
    np.testing.assert_allclose(jax.vmap(ll, in_axes=(0, None))(x, 0.3),
                               jax.vmap(GM2.class_log_posterior, in_axes=(0, None))(x, 0.3)[:, 2], rtol=1e-5)
    for bad in (3, -1, 1.5, True):
        with pytest.raises(ValueError, match="`label`"):
            sm.samplers.class_log_likelihood(GM2.class_log_posterior, bad)
    # a classifier that does not say how many classes it has: an out-of-range label is NaN, not clamped
    unnamed = sm.samplers.class_log_likelihood(lambda x, s: GM2.class_log_posterior(x, s), 5)
    assert np.isnan(float(eqx.filter_jit(unnamed)(x[0], 0.3)))


@pytest.mark.parametrize("make,match", [
    (lambda: sm.losses.class_conditional_denoising_score_matching(LEVELS, null_label=-1), "`null_label`"),
    (lambda: sm.losses.class_conditional_denoising_score_matching(LEVELS, null_label=3, drop_probability=1.5),
     "`drop_probability`"),
    (lambda: sm.losses.noise_conditional_classification(jnp.array([1.0, 2.0])), "strictly decreasing"),
])
def test_guidance_losses_reject_bad_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_guidance_losses_reject_unlabelled_batches():
    loss = sm.losses.noise_conditional_classification(LEVELS)
    clf = sm.models.NoiseConditionalClassifier(2, 3, key=jax.random.key(0))
    x = jnp.ones((8, 2))
    with pytest.raises(ValueError, match="pair"):
        loss(clf, x, jax.random.key(0))
    with pytest.raises(ValueError, match="`labels` must be integers"):
        loss(clf, (x, jnp.ones(8)), jax.random.key(0))


# ------------------------------------------------------------------------ image models

TINY_UNET = {"type": "UNet", "image_shape": [1, 8, 8], "channels": [8, 16], "n_res": 1, "patch": 2,
             "attention": False, "emb_dim": 16, "n_frequencies": 4, "groups": 4, "data_mean": 0.1, "data_std": 0.3}


def test_a_new_class_conditional_unet_is_its_unet_for_every_label():
    model = sm.models.from_config({"type": "ClassConditionalUNet", "unet": TINY_UNET, "n_classes": 3},
                                  jax.random.key(0))
    # give the U-Net a non-zero output layer (it starts at zero) so that outputs differ
    model = eqx.tree_at(lambda m: m.unet.out_conv.weight, model,
                        0.1 * jax.random.normal(jax.random.key(1), model.unet.out_conv.weight.shape))
    x = jax.random.normal(jax.random.key(2), (1, 8, 8))
    base = model.unet(x, 0.7)
    for label in range(4):
        np.testing.assert_allclose(model(x, 0.7, label), base, rtol=1e-6, atol=1e-6)
    assert model.null_label == 3 and model.image_shape == (1, 8, 8)
    trained = eqx.tree_at(lambda m: m.label_embedding, model,
                          jax.random.normal(jax.random.key(3), model.label_embedding.shape))
    assert not np.allclose(trained(x, 0.7, 0), trained(x, 0.7, 1))
    np.testing.assert_array_equal(trained.with_label(None)(x, 0.7), trained(x, 0.7, 3))
    # the label embedding is trained by the class-conditional loss
    data = (jnp.tile(x, (4, 1, 1, 1)), jnp.array([0, 1, 2, 0]))
    loss = sm.losses.class_conditional_denoising_score_matching(jnp.array([1.0, 0.1]), null_label=3,
                                                                drop_probability=0.0)
    grads = eqx.filter_grad(loss)(model, data, jax.random.key(4))
    assert np.any(np.asarray(grads.label_embedding[:3]) != 0) and np.all(grads.label_embedding[3] == 0)
    with pytest.raises(ValueError, match="`label`"):
        model(x, 0.7, 4)
    with pytest.raises(ValueError, match="config of a UNet"):
        sm.models.ClassConditionalUNet({"type": "MLP", "dim": 2}, 3, key=jax.random.key(0))


def test_noise_conditional_cnn_classifies_one_noisy_image():
    clf = sm.models.NoiseConditionalCNN((1, 8, 8), channels=(4, 8), n_features=16, n_classes=3,
                                        key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (1, 8, 8))
    assert clf(x, 0.5).shape == (3,)
    assert not np.allclose(clf(x, 0.5), clf(x, 5.0))  # the level enters
    ll = sm.samplers.class_log_likelihood(clf, 2)
    g = jax.grad(ll)(x, 0.5)
    assert g.shape == x.shape and np.all(np.isfinite(g)) and np.any(g != 0)
    with pytest.raises(ValueError, match="ONE image"):
        clf(jnp.ones((2, 1, 8, 8)), 0.5)
    with pytest.raises(ValueError, match="divisible by 4"):
        sm.models.NoiseConditionalCNN((1, 6, 6), key=jax.random.key(0))


def test_mnist_guided_score_checks_its_arguments_before_loading_anything():
    from score_models.zoo import chapter7

    with pytest.raises(ValueError, match="`kind`"):
        chapter7.mnist_guided_score("both", 3, 1.0)
    for bad in (10, -1, 2.0, True):
        with pytest.raises(ValueError, match="`digit`"):
            chapter7.mnist_guided_score("free", bad, 1.0)


# ------------------------------------------------------------------------ the command line

def _run_cli(capsys, *argv):
    from score_models import cli

    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv,message", [
    (["--digit", "10"], "`--digit` must be an integer in [0, 9]"),
    (["--scale", "2"], "give `--digit` too"),
    (["--guidance", "classifier"], "give `--digit` too"),
    (["--digit", "3", "--sampler", "pf-ode"], "drop `--sampler`"),
    (["--digit", "3", "--scale", "nan"], "`--scale` must be a finite number"),
])
def test_guided_sampling_checks_its_arguments_before_loading(tmp_path, capsys, monkeypatch, argv, message):
    from score_models import zoo

    looked = []
    monkeypatch.setattr(zoo, "check", lambda name: looked.append(name))
    rc, _, err = _run_cli(capsys, "sample", "mnist", "--out", str(tmp_path / "x.npy"), *argv)
    assert rc == 2 and message in err and looked == []


@pytest.fixture
def guided_registry(artifact_dir, monkeypatch):
    """The three MNIST guidance recipes, tiny and recording any attempt to train them."""
    from score_models import zoo

    calls = []
    tiny = {"type": "ClassConditionalUNet", "unet": {**TINY_UNET, "image_shape": [1, 28, 28]}, "n_classes": 10}
    configs = {"guide_mnist_conditional": {"model": tiny, "seed": 0},
               "mnist_unet": {"model": {**TINY_UNET, "image_shape": [1, 28, 28]}, "seed": 0},
               "guide_mnist_classifier": {"model": {"type": "NoiseConditionalCNN", "channels": [2, 2],
                                                    "n_features": 4}, "seed": 0}}
    recipes = {name: zoo.Recipe(name, 7, name, config, lambda c: calls.append(c)) for name, config in configs.items()}
    monkeypatch.setattr(zoo, "_RECIPES", recipes)
    return calls


def test_guided_sampling_never_trains_a_missing_model(guided_registry, tmp_path, capsys):
    rc, _, err = _run_cli(capsys, "sample", "mnist", "--digit", "3", "--out", str(tmp_path / "x.npy"))
    assert rc == 2 and "guide_mnist_conditional is missing" in err and guided_registry == []
    rc, _, err = _run_cli(capsys, "sample", "mnist", "--digit", "3", "--guidance", "classifier",
                          "--out", str(tmp_path / "x.npy"))
    assert rc == 2 and "mnist_unet is missing" in err and guided_registry == []


@pytest.mark.parametrize("guidance", [None, "classifier"])
def test_guided_sampling_builds_the_guided_score_of_the_digit(guided_registry, tmp_path, capsys, monkeypatch,
                                                             guidance):
    from score_models import zoo
    from score_models.zoo import chapter7

    for name in ("guide_mnist_conditional", "mnist_unet", "guide_mnist_classifier"):
        config = zoo.get(name).config
        sm.artifacts.save(name, sm.models.from_config(config["model"], jax.random.key(0)), config)
    seen = []
    monkeypatch.setattr(chapter7, "sample_mnist", lambda score_fn, key, n: seen.append(score_fn) or jnp.zeros((n, 1, 28, 28)))
    extra = [] if guidance is None else ["--guidance", guidance, "--scale", "3"]
    rc, out, err = _run_cli(capsys, "sample", "mnist", "--digit", "7", "--n", "2", "--out", str(tmp_path / "x.npy"), *extra)
    assert rc == 0, err
    assert np.load(tmp_path / "x.npy").shape == (2, 28, 28) and guided_registry == []
    (score_fn,) = seen
    if guidance is None:
        assert isinstance(score_fn, sm.samplers.ClassifierFreeScore) and "classifier-free" in out
        assert int(score_fn.conditional.label) == 7 and int(score_fn.unconditional.label) == 10
        assert float(score_fn.scale) == chapter7.CLI_SCALE["free"]
    else:
        assert isinstance(score_fn, sm.samplers.GuidedScore) and int(score_fn.log_likelihood.label) == 7
        assert float(score_fn.scale) == 3.0



def _perturbed(model, key, scale: float = 0.3):
    """`model` with Gaussian noise of std `scale` added to every weight."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, tree = jax.tree_util.tree_flatten(params)
    noisy = [a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, jax.random.split(key, len(leaves)))]
    return eqx.combine(jax.tree_util.tree_unflatten(tree, noisy), static)

def test_chapter6_loss_with_label_dropout_trains_labels_and_the_null_label():
    """Chapter 6's EDM loss with `label_dropout` (chapter 7's class-conditional U-Net): dropout 1
    is the loss of the unconditional score `with_label(None)`; dropout 0 passes every label."""
    from score_models.zoo import chapter6

    model = sm.models.ClassConditionalUNet({**TINY_UNET, "image_shape": [1, 8, 8]}, n_classes=3, key=jax.random.key(0))
    model = _perturbed(model, jax.random.key(1))              # a new U-Net's output layer is zero
    x = jax.random.uniform(jax.random.key(2), (6, 1, 8, 8))
    labels = jnp.full((6,), 2)
    noise = {"distribution": "log_normal", "log_mean": -1.2, "log_std": 1.2}
    loss = lambda p, **kw: chapter6.denoising_loss(noise, weighting="edm", sigma_data=0.3, **kw)  # noqa: E731
    key = jax.random.key(3)
    dropped = loss(None, label_dropout=1.0, null_label=3)(model, (x, labels), key)
    kept = loss(None, label_dropout=0.0, null_label=3)(model, (x, labels), key)
    assert float(dropped) == pytest.approx(float(loss(None)(model.with_label(None), x, key)), rel=1e-5)
    assert float(kept) == pytest.approx(float(loss(None)(model.with_label(2), x, key)), rel=1e-5)
    assert abs(float(kept) - float(dropped)) > 1e-3 * float(dropped)
    for bad in (1.5, True):
        with pytest.raises(ValueError, match="`label_dropout`"):
            chapter6.denoising_loss(noise, label_dropout=bad, null_label=3)
    with pytest.raises(ValueError, match="`null_label`"):
        chapter6.denoising_loss(noise, label_dropout=0.2)


def test_label_effect_is_zero_for_labels_that_change_nothing():
    """`chapter7.label_effect` is the check that caught a class-conditional U-Net ignoring its
    labels: zero for a new model (zero label embeddings), positive once the labels move it."""
    from score_models.zoo import chapter7

    model = sm.models.ClassConditionalUNet({**TINY_UNET, "image_shape": [1, 8, 8]}, n_classes=3, key=jax.random.key(0))
    model = _perturbed(model, jax.random.key(1))
    images = jax.random.uniform(jax.random.key(2), (6, 1, 8, 8))
    sigmas = jnp.array([1.0, 0.1])
    same = eqx.tree_at(lambda m: m.label_embedding, model, jnp.zeros_like(model.label_embedding))
    assert chapter7.label_effect(same, images, sigmas, jax.random.key(3)) == [0.0, 0.0]
    effect = chapter7.label_effect(model, images, sigmas, jax.random.key(3))
    assert len(effect) == 2 and all(e > 1e-3 for e in effect)
