"""The Gaussian with its prior drawn by the Marsaglia polar method.

Draw u, v ~ U(-1, 1) until s = u² + v² < 1, then z = μ0 + √5 · u · √(-2 ln s / s) is
N(μ0, √5): the same model as :mod:`infcomp.examples.gaussian`, so the same posterior
N(7.25, √(5/6)) and evidence at (8, 9). The number of sites varies between runs and
the loop's control flow depends on sampled values, so it cannot be vectorized: it
exercises the particle-by-particle path.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal, Uniform

import infcomp as ic
from infcomp.examples.gaussian import (
    DATA,
    NOISE_VARIANCE,
    PRIOR_MEAN,
    PRIOR_VARIANCE,
    exact_log_evidence,
    exact_posterior,
)

__all__ = ["DATA", "exact_log_evidence", "exact_posterior", "marsaglia"]


def marsaglia(prior_mean: float = PRIOR_MEAN) -> torch.Tensor:
    """z ~ N(prior_mean, √5) by rejection from the unit disc; x1, x2 ~ N(z, √2) observed."""
    attempt = 0
    while True:
        u = ic.sample(f"u_{attempt}", Uniform(-1.0, 1.0))
        v = ic.sample(f"v_{attempt}", Uniform(-1.0, 1.0))
        s = u * u + v * v
        if 0 < s < 1:
            break
        attempt += 1
    z = prior_mean + math.sqrt(PRIOR_VARIANCE) * u * torch.sqrt(-2 * torch.log(s) / s)
    ic.observe("x1", Normal(z, math.sqrt(NOISE_VARIANCE)))
    ic.observe("x2", Normal(z, math.sqrt(NOISE_VARIANCE)))
    return z
