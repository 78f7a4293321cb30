"""The Gaussian with unknown mean: z ~ N(μ0, √5); x1, x2 ~ N(z, √2).

Conjugate, so the posterior and the evidence are known in closed form:
posterior precision 1/5 + 2/2, so z | x ~ N((μ0/5 + (x1 + x2)/2) / (6/5), √(5/6));
at μ0 = 1 and (x1, x2) = (8, 9) that is N(7.25, √(5/6)). The evidence is
(x1, x2) ~ N([μ0, μ0], [[7, 5], [5, 7]]), log p(8, 9) = -8.2394 at μ0 = 1.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import MultivariateNormal, Normal

import infcomp as ic

PRIOR_MEAN = 1.0
PRIOR_VARIANCE = 5.0
NOISE_VARIANCE = 2.0
DATA = {"x1": torch.tensor(8.0), "x2": torch.tensor(9.0)}


def gaussian(prior_mean: float = PRIOR_MEAN) -> torch.Tensor:
    """z ~ N(prior_mean, √5); x1, x2 ~ N(z, √2) observed."""
    z = ic.sample("z", Normal(prior_mean, math.sqrt(PRIOR_VARIANCE)))
    ic.observe("x1", Normal(z, math.sqrt(NOISE_VARIANCE)))
    ic.observe("x2", Normal(z, math.sqrt(NOISE_VARIANCE)))
    return z


def exact_posterior(x1: float = 8.0, x2: float = 9.0, prior_mean: float = PRIOR_MEAN) -> Normal:
    """p(z | x1, x2): precision 1/5 + 2/2, mean (μ0/5 + (x1 + x2)/2) / precision.

    Example:
        >>> from infcomp.examples.gaussian import exact_posterior
        >>> posterior = exact_posterior(8.0, 9.0)
        >>> float(posterior.mean), float(posterior.stddev) ** 2  # N(7.25, √(5/6))
        (7.25, 0.8333...)
    """
    precision = 1 / PRIOR_VARIANCE + 2 / NOISE_VARIANCE
    mean = (prior_mean / PRIOR_VARIANCE + (x1 + x2) / NOISE_VARIANCE) / precision
    return Normal(
        torch.tensor(mean, dtype=torch.float64), torch.tensor(precision**-0.5, dtype=torch.float64)
    )


def exact_log_evidence(x1: float = 8.0, x2: float = 9.0, prior_mean: float = PRIOR_MEAN) -> float:
    """log p(x1, x2) = log N([x1, x2]; [μ0, μ0], 5·11ᵀ + 2·I).

    Example:
        >>> from infcomp.examples.gaussian import exact_log_evidence
        >>> round(exact_log_evidence(8.0, 9.0), 4)
        -8.2394
    """
    covariance = PRIOR_VARIANCE * torch.ones(
        2, 2, dtype=torch.float64
    ) + NOISE_VARIANCE * torch.eye(2, dtype=torch.float64)
    marginal = MultivariateNormal(torch.full((2,), prior_mean, dtype=torch.float64), covariance)
    return float(marginal.log_prob(torch.tensor([x1, x2], dtype=torch.float64)))
