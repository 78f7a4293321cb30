"""A branching program with Poisson latents: the second latent exists only on one branch.

k ~ Poisson(3); if k > 4 then m ~ Poisson(2) and the mean is k + m, else the mean is k;
y ~ N(mean, 1) observed. The number of latent sites depends on a sampled value, so the
program runs particle by particle. The posterior of k and the evidence come from
enumerating k and m below a limit (the Poisson tails beyond 80 are below 1e-80).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Normal, Poisson

import infcomp as ic

DATA = {"y": torch.tensor(7.0)}
K_RATE, M_RATE, NOISE = 3.0, 2.0, 1.0
THRESHOLD = 4  # the branch with m is taken when k > THRESHOLD


def branching() -> Tensor:
    """k ~ Poisson(3); m ~ Poisson(2) only if k > 4; y ~ N(k (+ m), 1) observed; returns k.

    Example:
        >>> import torch, infcomp as ic
        >>> from infcomp.examples.branching import branching
        >>> data = {"y": 7.0, "k": 6.0, "m": 1.0}    # conditioning the latents too
        >>> list(ic.trace(ic.condition(branching, data=data)).get_trace())
        ['k', 'm', 'y']
    """
    k = ic.sample("k", Poisson(K_RATE))
    mean = k
    if k > THRESHOLD:
        mean = k + ic.sample("m", Poisson(M_RATE))
    ic.observe("y", Normal(mean, NOISE))
    return k


def enumerate_posterior(y: float, limit: int = 80) -> tuple[Tensor, float]:
    """p(k | y) for k < ``limit`` (shape ``(limit,)``, float64) and log p(y), by enumeration.

    log p(k, y) = log Poisson(k; 3) + [k ≤ 4] log N(y; k, 1)
    + [k > 4] logsumexp_m (log Poisson(m; 2) + log N(y; k + m, 1)), m < ``limit``.

    Example:
        >>> from infcomp.examples.branching import enumerate_posterior
        >>> posterior_k, log_evidence = enumerate_posterior(7.0)
        >>> round(float(posterior_k.sum()), 12), round(log_evidence, 4)
        (1.0, -3.2662)
    """
    k = torch.arange(limit, dtype=torch.float64)
    log_pk = Poisson(torch.tensor(K_RATE, dtype=torch.float64)).log_prob(k)
    log_pm = Poisson(torch.tensor(M_RATE, dtype=torch.float64)).log_prob(k)
    total = k.unsqueeze(1) + k.unsqueeze(0)  # k + m
    observed = torch.tensor(float(y), dtype=torch.float64)
    branch = log_pk.unsqueeze(1) + log_pm.unsqueeze(0) + Normal(total, NOISE).log_prob(observed)
    small = log_pk + Normal(k, NOISE).log_prob(observed)
    log_k = torch.where(k > THRESHOLD, branch.logsumexp(1), small)
    log_evidence = log_k.logsumexp(0)
    return (log_k - log_evidence).exp(), float(log_evidence)
