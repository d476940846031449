"""Chapter 3 trains no model of its own: it samples chapter 2's `noise_conditional_1d`.

`SAMPLING` holds the annealed-Langevin settings the chapter uses with that model (Algorithm 1 of
Song & Ermon 2019), so that the benchmarks and readers reproduce the chapter's numbers.
"""

from __future__ import annotations

SAMPLING = {
    "eps": 0.004,        # the step at the last (smallest) noise level; alpha_i = eps sigma_i^2 / sigma_L^2
    "n_steps_each": 100,  # Langevin steps at each noise level
}
