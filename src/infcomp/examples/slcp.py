"""SLCP, "simple likelihood, complex posterior" (Papamakarios, Sterratt & Murray, AISTATS 2019;
an sbi benchmark task).

θ ~ U(-3, 3)⁵; four i.i.d. observations x_j ~ N(m, S), j = 1..4, with m = (θ₁, θ₂) and
S = [[s₁², ρ s₁ s₂], [ρ s₁ s₂, s₂²]], s₁ = θ₃², s₂ = θ₄², ρ = tanh θ₅. The likelihood is
a plain Gaussian, but the posterior has four modes (the signs of θ₃ and θ₄) and no
closed form. :func:`reference_posterior` computes a reference by importance sampling
with a proposal that is exact in (θ₁, θ₂) (see there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Independent, MultivariateNormal, Uniform

import infcomp as ic

DIMENSION = 5
NUM_OBSERVATIONS = 4
BOUND = 3.0


def likelihood(theta: Tensor) -> Independent[MultivariateNormal]:
    """p(x | θ): four i.i.d. 2-d Normals, event shape ``(4, 2)``, batch shape ``θ.shape[:-1]``."""
    s1, s2, rho = theta[..., 2] ** 2, theta[..., 3] ** 2, torch.tanh(theta[..., 4])
    zero = torch.zeros_like(s1)
    scale_tril = torch.stack(
        [torch.stack([s1, zero], -1), torch.stack([rho * s2, s2 * (1 - rho**2).sqrt()], -1)], -2
    )
    normal = MultivariateNormal(theta[..., None, :2], scale_tril=scale_tril[..., None, :, :])
    return Independent(normal.expand((*theta.shape[:-1], NUM_OBSERVATIONS)), 1)


def slcp() -> Tensor:
    """θ ~ U(-3, 3)⁵ at site ``theta``; x ~ p(x | θ) observed at site ``x``, shape ``(4, 2)``.

    Example:
        >>> import infcomp as ic
        >>> from infcomp.examples.slcp import slcp
        >>> trace = ic.trace(ic.uncondition(slcp)).get_trace()
        >>> tuple(trace["theta"].value.shape), tuple(trace["x"].value.shape)
        ((5,), (4, 2))
    """
    low = torch.full((DIMENSION,), -BOUND)
    theta = ic.sample("theta", Independent(Uniform(low, -low), 1))
    ic.observe("x", likelihood(theta))
    return theta


@dataclass(frozen=True)
class Reference:
    """A reference posterior summary: mean and standard deviation of θ (shape ``(5,)``),
    log p(x), and the effective sample size of the importance sampler that made it."""

    mean: Tensor
    std: Tensor
    log_evidence: float
    ess: float


def reference_posterior(
    x: Tensor, num_particles: int = 4_000_000, chunk_size: int = 1_000_000, seed: int = 0
) -> Reference:
    """Importance sampling for p(θ | x) with a proposal exact in (θ₁, θ₂), in float64.

    Given (θ₃, θ₄, θ₅) the likelihood of m = (θ₁, θ₂) is N(m; x̄, S/4) times a factor
    free of m, so the proposal draws (θ₃, θ₄, θ₅) from the prior and m ~ N(x̄, S/4):
    log w = log p(θ) + log p(x | θ) - log q(θ) = -2 log 6 + log p(x | θ) - log N(m; x̄, S/4)
    for m inside the box (-∞ outside), which does not depend on m. Only a 3-d prior
    importance sampler remains, with all four modes inside its support.

    Raises:
        ValueError: ``x`` not of shape ``(4, 2)``, or sizes not positive.

    Example:
        >>> import torch
        >>> from infcomp.examples.slcp import likelihood, reference_posterior
        >>> _ = torch.manual_seed(0)
        >>> x = likelihood(torch.tensor([0.7, -2.9, -1.0, -0.9, 0.6])).sample()
        >>> reference = reference_posterior(x, num_particles=200_000)
        >>> bool(reference.ess > 1000), tuple(reference.mean.shape)
        (True, (5,))
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.shape != (NUM_OBSERVATIONS, 2):
        raise ValueError(f"SLCP data must have shape (4, 2), got {tuple(x.shape)}")
    if num_particles < 1 or chunk_size < 1:
        raise ValueError("num_particles and chunk_size must be positive")
    generator = torch.Generator().manual_seed(seed)
    log_weights, thetas = [], []
    for start in range(0, num_particles, chunk_size):
        size = min(chunk_size, num_particles - start)
        rest = (torch.rand(size, 3, generator=generator, dtype=torch.float64) * 2 - 1) * BOUND
        # S / 4 as a Cholesky factor; the likelihood's factor does not depend on (θ₁, θ₂).
        normal = likelihood(torch.cat([torch.zeros(size, 2, dtype=torch.float64), rest], -1))
        tril = normal.base_dist.scale_tril[:, 0] / math.sqrt(NUM_OBSERVATIONS)
        proposal = MultivariateNormal(x.mean(0), scale_tril=tril)
        noise = torch.randn(size, 2, 1, generator=generator, dtype=torch.float64)
        m = x.mean(0) + (tril @ noise).squeeze(-1)
        theta = torch.cat([m, rest], -1)
        inside = (m.abs() < BOUND).all(-1)
        log_w = -2 * math.log(2 * BOUND) + likelihood(theta).log_prob(x) - proposal.log_prob(m)
        log_weights.append(torch.where(inside, log_w, -math.inf))
        thetas.append(theta)
    log_w, theta = torch.cat(log_weights), torch.cat(thetas)
    weights = (log_w - log_w.logsumexp(0)).exp()
    mean = (weights.unsqueeze(-1) * theta).sum(0)
    variance = (weights.unsqueeze(-1) * (theta - mean) ** 2).sum(0)
    return Reference(
        mean=mean,
        std=variance.sqrt(),
        log_evidence=float(log_w.logsumexp(0) - math.log(num_particles)),
        ess=float(1 / (weights**2).sum()),
    )
