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
    """r ~ Uniform(0, 1); flip_i ~ Bernoulli(r) for i < num_flips, observed.

    Example:
        >>> import infcomp as ic
        >>> from infcomp.examples.coin import DATA, coin
        >>> trace = ic.trace(ic.condition(coin, data=DATA)).get_trace()
        >>> [(name, trace[name].kind) for name in trace]
        [('r', 'sample'), ('flip_0', 'observe'), ('flip_1', 'observe'), ('flip_2', 'observe')]
    """
    r = ic.sample("r", Uniform(0.0, 1.0))
    for i in range(num_flips):
        ic.observe(f"flip_{i}", Bernoulli(r))
    return r


def exact_posterior(flips: tuple[bool, ...] = FLIPS) -> Beta:
    """Beta(1 + heads, 1 + tails).

    Example:
        >>> from infcomp.examples.coin import exact_log_evidence, exact_posterior
        >>> float(exact_posterior((True, True, False)).mean)  # Beta(3, 2)
        0.6
        >>> round(1 / math.exp(exact_log_evidence((True, True, False))), 6)  # evidence 1/12
        12.0
    """
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
