"""Per-site cost of infcomp's particle-by-particle path.

A model of 20 latent sites and one observation, under a distribution whose ``sample``
and ``log_prob`` return a constant, is run with ``ic.importance(model, data, 5000,
vectorize=False)`` (public API only), so that what is timed is infcomp's own work per
site: the site record, the handler stack, the trace, the weights, the posterior. The same
loop without infcomp (20 ``sample`` calls and one ``log_prob`` per particle, stacked) is
the baseline; the figure is (infcomp − baseline) per particle per site, best of at least
7 interleaved runs. Target: at most 10 µs per site (pyprob spends about 60 µs).
Run ``python bench/overhead.py``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch.distributions import Distribution, constraints

import infcomp as ic

# isort: split
import harness
from harness import Case, Row, Section

SITES, PARTICLES = 20, 5000
ZERO = torch.tensor(0.0)


class Constant(Distribution):
    """Samples and scores nothing: a constant value and log density."""

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    support = constraints.real

    def __init__(self) -> None:
        super().__init__(torch.Size(), validate_args=False)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        return ZERO

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return ZERO


CONSTANT = Constant()


def model() -> None:
    for i in range(SITES):
        ic.sample(f"z_{i}", CONSTANT)
    ic.observe("y", CONSTANT)


def bare() -> torch.Tensor:
    for _ in range(SITES):
        CONSTANT.sample()
    return CONSTANT.log_prob(ZERO)


def per_site(rates: dict[str, float]) -> float:
    """µs per site over the baseline; rates are in sites per second."""
    return 1e6 / rates["infcomp"] - 1e6 / rates["bare"]


def cases(options: argparse.Namespace) -> Iterator[Case]:
    data = {"y": ZERO}
    contenders = {
        "bare": lambda: torch.stack([bare() for _ in range(PARTICLES)]),
        "infcomp": lambda: ic.importance(model, data, PARTICLES, vectorize=False),
    }
    row = Row(
        f"particle by particle, {SITES + 1} sites x {PARTICLES}, cost per site",
        "µs/site",
        per_site,
        None,
        None,
        higher_is_better=False,
        target=("infcomp", "<=", 10.0),
    )
    yield Case(
        [row], contenders, work=PARTICLES * (SITES + 1), min_repeats=dict.fromkeys(contenders, 7)
    )


SECTION = Section("overhead", "per-site cost of the particle-by-particle path", cases)

if __name__ == "__main__":
    harness.run_alone(SECTION)
