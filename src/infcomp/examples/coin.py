"""The biased coin: r ~ Uniform(0, 1); flips ~ Bernoulli(r).

With heads h and tails t observed the posterior is Beta(1 + h, 1 + t) and the evidence
is B(1 + h, 1 + t) = h! t! / (h + t + 1)!. For flips (true, true, false): Beta(3, 2),
posterior mean 0.6, evidence 1/12.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Bernoulli, Beta, Uniform

import infcomp as ic

FLIPS = (True, True, False)
DATA = {f"flip_{i}": float(flip) for i, flip in enumerate(FLIPS)}


def coin(num_flips: int = len(FLIPS)) -> torch.Tensor:
    """r ~ Uniform(0, 1); flip_i ~ Bernoulli(r) for i < num_flips, observed."""
    r = ic.sample("r", Uniform(0.0, 1.0))
    for i in range(num_flips):
        ic.observe(f"flip_{i}", Bernoulli(r))
    return r


def exact_posterior(flips: tuple[bool, ...] = FLIPS) -> Beta:
    """Beta(1 + heads, 1 + tails)."""
    heads = sum(flips)
    return Beta(
        torch.tensor(1.0 + heads, dtype=torch.float64),
        torch.tensor(1.0 + len(flips) - heads, dtype=torch.float64),
    )


def exact_log_evidence(flips: tuple[bool, ...] = FLIPS) -> float:
    """log B(1 + h, 1 + t) = log h! + log t! - log (h + t + 1)!."""
    heads = sum(flips)
    tails = len(flips) - heads
    return math.lgamma(heads + 1) + math.lgamma(tails + 1) - math.lgamma(heads + tails + 2)
