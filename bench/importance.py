"""Prior importance sampling on the Gaussian, particles/s: infcomp vs torch vs Pyro.

The model of :mod:`infcomp.examples.gaussian`, z ~ N(1, √5); x1, x2 ~ N(z, √2) at
x1 = 8, x2 = 9. For N = 10² ... 10⁶ (10⁷ with ``--long``, the default here), each
contender does the whole job a user asks for, timed end to end:

* **infcomp**: ``ic.importance(gaussian, DATA, N)`` (with its ESS and k̂ checks), then
  ``post.mean("z")``, ``post.log_evidence`` and ``post.ess`` as Python floats.
* **torch**: the same written by hand: z from the prior, log w = log N(8; z, √2) +
  log N(9; z, √2), in float64 log Ẑ, the weighted mean of z and the ESS. The practical
  limit: a framework that records sites and checks its weights can approach it.
* **pyro**: ``Importance(model, guide=None, num_samples=N).run()``, then
  ``EmpiricalMarginal(...).mean``, ``get_log_normalizer()`` and ``get_ESS()``; Pyro loops
  over particles in Python, so it runs only up to N = 10⁴.

Targets: infcomp ≥ 0.3× torch at N = 10⁶ and ≥ 1000× Pyro at N = 10⁴.
Run ``python bench/importance.py``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.distributions import Normal

import infcomp as ic
from infcomp.examples.gaussian import DATA, exact_log_evidence, exact_posterior, gaussian

# isort: split
import harness
from harness import Case, Row, Section

PRIOR_SCALE, NOISE_SCALE = math.sqrt(5.0), math.sqrt(2.0)
PYRO_MAX = 10**4


def run_infcomp(n: int) -> tuple[float, float, float]:
    post = ic.importance(gaussian, DATA, n)
    return float(post.mean("z")), float(post.log_evidence), float(post.ess)


def run_torch(n: int) -> tuple[float, float, float]:
    z = Normal(1.0, PRIOR_SCALE).sample((n,))
    noise = Normal(z, NOISE_SCALE)
    log_w = (noise.log_prob(DATA["x1"]) + noise.log_prob(DATA["x2"])).double()
    lse = torch.logsumexp(log_w, 0)
    mean = (torch.exp(log_w - lse) * z.double()).sum()
    ess = torch.exp(2 * lse - torch.logsumexp(2 * log_w, 0))
    return float(mean), float(lse - math.log(n)), float(ess)


def pyro_importance() -> Callable[[int], tuple[float, float, float]]:
    import pyro
    import pyro.distributions as dist
    from pyro.infer import EmpiricalMarginal, Importance

    def model() -> Any:
        z = pyro.sample("z", dist.Normal(1.0, PRIOR_SCALE))
        pyro.sample("x1", dist.Normal(z, NOISE_SCALE), obs=DATA["x1"])
        pyro.sample("x2", dist.Normal(z, NOISE_SCALE), obs=DATA["x2"])
        return z

    def run(n: int) -> tuple[float, float, float]:
        post = Importance(model, guide=None, num_samples=n).run()
        mean = float(EmpiricalMarginal(post, sites="z").mean)
        return mean, float(post.get_log_normalizer()), float(post.get_ESS())

    return run


def describe(last: dict[str, Any]) -> str:
    exact = f"exact mean z {float(exact_posterior().mean):.4f}, log Z {exact_log_evidence():.4f}"
    found = "; ".join(f"{k} {m:.4f}, {z:.4f} (ESS {e:.4g})" for k, (m, z, e) in last.items())
    return f"{exact}; {found}"


def cases(options: argparse.Namespace) -> Iterator[Case]:
    pyro = pyro_importance() if options.pyro else None
    for exponent in range(2, (7 if options.long else 6) + 1):
        n = 10**exponent
        contenders: dict[str, Callable[[], Any]] = {"infcomp": lambda n=n: run_infcomp(n)}
        if options.torch:
            contenders["torch"] = lambda n=n: run_torch(n)
        if pyro is not None and n <= PYRO_MAX:
            contenders["pyro"] = lambda n=n: pyro(n)
        target = {10**6: ("infcomp/torch", ">=", 0.3), 10**4: ("infcomp/pyro", ">=", 1000.0)}
        row = Row(f"prior IS, Gaussian, N = {n:.0e}", "particles/s", target=target.get(n))
        yield Case([row], contenders, work=n, describe=describe if n >= 10**6 else None)


SECTION = Section("importance", "prior importance sampling, Gaussian", cases)

if __name__ == "__main__":
    harness.run_alone(SECTION)
