"""Sample-quality and score-error metrics.

- `samples.py`: distances between sample sets (W1, energy distance, sliced W1), mode weights,
  noise floors, and the energy test (an unbiased distance with its uncertainty);
- `scores.py`: the error of a score function against the true score.
"""

from .samples import (
    DistanceReport,
    EnergyTest,
    distance_and_floor,
    energy_distance,
    energy_test,
    mode_weights,
    noise_floor,
    sliced_wasserstein,
    wasserstein_1d,
)
from .scores import ScoreError, score_error

__all__ = [
    "DistanceReport",
    "EnergyTest",
    "ScoreError",
    "distance_and_floor",
    "energy_distance",
    "energy_test",
    "mode_weights",
    "noise_floor",
    "score_error",
    "sliced_wasserstein",
    "wasserstein_1d",
]
