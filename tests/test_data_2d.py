"""The distance of points to the two moons (`data.two_moons_distances`), against the geometry of
the moons: noiseless samples lie on a moon, noisy ones at the noise's half-normal distance, and
hand-computed points."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from score_models import data

N = 4000
MEAN, STD = np.array([0.5, 0.25]), np.array([0.8660, 0.4942])  # the standardisation of two_moons


def standardised(raw):
    return ((np.asarray(raw, np.float32) - MEAN) / STD).astype(np.float32)


def test_noiseless_samples_lie_on_a_moon_and_the_moons_are_apart():
    d = np.asarray(data.two_moons_distances(data.two_moons(jax.random.key(0), N, noise=0.0)))
    assert d.shape == (N, 2) and d.dtype == np.float32
    assert np.max(d.min(axis=1)) < 1e-5          # on the nearer moon, up to float32 rounding
    assert np.min(d.max(axis=1)) > 0.1           # and clearly off the other one
    counts = np.bincount(d.argmin(axis=1), minlength=2)
    assert abs(counts[0] / N - 0.5) < 4 * 0.5 / np.sqrt(N)   # each moon has probability 1/2


def test_noisy_samples_are_at_the_half_normal_distance():
    noise = 0.05
    d = np.asarray(data.two_moons_distances(data.two_moons(jax.random.key(1), N, noise=noise))).min(axis=1)
    # Away from the arcs' ends the distance is |radial noise|: half-normal, mean noise sqrt(2/pi),
    # standard error about 0.0005 here; the ends and the other moon change it by far less than 0.003.
    assert abs(d.mean() - noise * np.sqrt(2 / np.pi)) < 0.003, d.mean()


def test_hand_computed_points():
    raw = [[0.0, 2.0],     # above the upper moon: radius 2 -> 1; lower moon: nearer end (0, 0.5)
           [2.0, 0.0],     # upper: radius 2 -> 1; lower: sqrt(1.25) - 1 from its centre (1, 0.5)
           [0.0, -1.0],    # below the upper moon: sqrt(2) to either end; lower: radius sqrt(3.25)
           [1.0, -0.5]]    # the bottom of the lower moon; 0.5 from the upper moon's end (1, 0)
    expected = [[1.0, 1.5],
                [1.0, np.sqrt(1.25) - 1.0],
                [np.sqrt(2.0), np.sqrt(3.25) - 1.0],
                [0.5, 0.0]]
    got = np.asarray(data.two_moons_distances(standardised(raw)))
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("x, message", [
    (np.zeros((4, 3)), r"shape \(n, 2\)"),
    (np.zeros(4), "2 dimension"),
    (np.array([[0.0, np.nan]]), "finite|NaN"),
])
def test_bad_input_is_refused(x, message):
    with pytest.raises(ValueError, match=message):
        data.two_moons_distances(x)
