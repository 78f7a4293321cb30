"""Gaussian linear, the sbi benchmark task (Lueckmann et al., AISTATS 2021).

θ ~ N(0, 0.1·I₁₀); x ~ N(θ, 0.1·I₁₀). Conjugate, so for each coordinate
θ_i | x ~ N(x_i / 2, √0.05) and x ~ N(0, 0.2·I₁₀): the posterior and the evidence are
known in closed form for every observation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

import infcomp as ic

DIMENSION = 10
PRIOR_VARIANCE = 0.1
NOISE_VARIANCE = 0.1


def gaussian_linear() -> Tensor:
    """θ ~ N(0, 0.1·I₁₀) at site ``theta``; x ~ N(θ, 0.1·I₁₀) observed at site ``x``.

    Example:
        >>> import infcomp as ic
        >>> from infcomp.examples.gaussian_linear import gaussian_linear
        >>> trace = ic.trace(ic.uncondition(gaussian_linear)).get_trace()
        >>> tuple(trace["theta"].value.shape), tuple(trace["x"].value.shape)
        ((10,), (10,))
    """
    zeros = torch.zeros(DIMENSION)
    theta = ic.sample("theta", Independent(Normal(zeros, math.sqrt(PRIOR_VARIANCE)), 1))
    ic.observe("x", Independent(Normal(theta, math.sqrt(NOISE_VARIANCE)), 1))
    return theta


def exact_posterior(x: Tensor) -> Independent[Normal]:
    """p(θ | x) = N(x · v/(v + s), √(v s/(v + s))) per coordinate (v prior, s noise variance).

    Example:
        >>> import torch
        >>> from infcomp.examples.gaussian_linear import exact_posterior
        >>> posterior = exact_posterior(torch.ones(10))
        >>> float(posterior.mean[0]), round(float(posterior.variance[0]), 6)
        (0.5, 0.05)
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    shrink = PRIOR_VARIANCE / (PRIOR_VARIANCE + NOISE_VARIANCE)
    scale = math.sqrt(PRIOR_VARIANCE * NOISE_VARIANCE / (PRIOR_VARIANCE + NOISE_VARIANCE))
    return Independent(Normal(shrink * x, scale), 1)


def exact_log_evidence(x: Tensor) -> float:
    """log p(x) = log N(x; 0, (v + s)·I₁₀).

    Example:
        >>> import math, torch
        >>> from infcomp.examples.gaussian_linear import exact_log_evidence
        >>> round(exact_log_evidence(torch.zeros(10)) + 5 * math.log(2 * math.pi * 0.2), 9)
        0.0
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    marginal = Normal(torch.zeros_like(x), math.sqrt(PRIOR_VARIANCE + NOISE_VARIANCE))
    return float(marginal.log_prob(x).sum())
