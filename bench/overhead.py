"""Per-site overhead of the particle-by-particle path.

A model of 20 latent sites and one observation is run particle by particle with a
distribution whose ``sample`` and ``log_prob`` return a constant, so that what is timed
is infcomp's own work per site: the site record, the handler stack, the trace, the
weights, grouping the traces into a posterior. The same loop without infcomp is the
baseline. Target: at most 10 µs per site (pyprob spends about 60 µs).
Run ``python bench/overhead.py``.
"""

from __future__ import annotations

import time
import warnings
from typing import ClassVar

import torch
from torch.distributions import Distribution, constraints

import infcomp as ic

SITES = 20
PARTICLES = 5000
ZERO = torch.tensor(0.0)


class Constant(Distribution):
    """Samples and scores nothing: a constant value and log density."""

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    support = constraints.real

    def __init__(self) -> None:
        super().__init__(torch.Size(), validate_args=False)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
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


def main() -> None:
    torch.set_num_threads(1)
    data = {"y": torch.tensor(0.0)}
    best_bare = best_infcomp = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(7):
            start = time.perf_counter()
            torch.stack([bare() for _ in range(PARTICLES)])
            best_bare = min(best_bare, time.perf_counter() - start)
            start = time.perf_counter()
            ic.importance(model, data, PARTICLES, vectorize=False)
            best_infcomp = min(best_infcomp, time.perf_counter() - start)
    per_site = (best_infcomp - best_bare) / PARTICLES / (SITES + 1) * 1e6
    print(f"{SITES + 1} sites x {PARTICLES} particles, particle by particle (best of 7)")
    print(f"  without infcomp: {best_bare / PARTICLES * 1e6:8.1f} µs per particle")
    print(f"  infcomp:         {best_infcomp / PARTICLES * 1e6:8.1f} µs per particle")
    verdict = "MET" if per_site <= 10 else "NOT MET"
    print(f"check: infcomp overhead {per_site:.2f} µs per site (target <= 10) -> {verdict}")


if __name__ == "__main__":
    main()
