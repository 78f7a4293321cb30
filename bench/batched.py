"""Batched inference for many data sets, data sets/s: infcomp vs its loop vs torch vs Pyro.

The Gaussian z ~ N(1, √5); x1, x2 ~ N(z, √2) on B = 10, 100, 1,000 pairs (x1, x2)
simulated from the model (the first B of one pool, seed ``--seed``), N = 1,000 particles
each. Every contender returns per data set log Ẑ, the ESS and the posterior mean of z:

* **infcomp**: ``ic.importance_batch(gaussian, datasets, N)`` (prior), and
  ``csis.run_batch(datasets, N)`` with the automatic network of ``ic.CSIS(gaussian)``
  trained before the timing (300 steps of 256); each also as a Python loop of
  ``ic.importance(gaussian, d, N)`` / ``csis.run(d, N)`` over the data sets (at
  B = 1,000 only with ``--long``, the default here: about 10 s a run).
* **torch**, prior only: z of shape (N, B) and per-column weights by hand (the limit).
* **pyro**, prior only, B = 10: ``Importance(...).run(x1, x2)`` per data set.

The description line after each B gives each contender's mean ESS/N and its largest
|log Ẑ − log p(x1, x2)| against the exact answers (the model is conjugate). Target:
``run_batch`` on 1,000 data sets × 1,000 particles in under a second (≥ 1,000 data sets/s).

With ``--long``: a compiled proposal on a 25-step linear-Gaussian state-space program
(25 latent sites, an automatic network with attention), ``csis.run_batch`` on 20 data sets
× 10⁴ particles against a loop of ``csis.run`` (target: batched not slower), and one
``csis.run`` of 10⁵ particles.
Run ``python bench/batched.py``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal, Normal

import infcomp as ic
from infcomp.examples.gaussian import gaussian

# isort: split
import harness
from harness import Case, Row, Section

PRIOR_VARIANCE, NOISE_VARIANCE = 5.0, 2.0
SIZES, N = (10, 100, 1000), 1000
Data = dict[str, Tensor]


def simulate(count: int, seed: int) -> Data:
    generator = torch.Generator().manual_seed(seed)
    z = 1.0 + math.sqrt(PRIOR_VARIANCE) * torch.randn(count, generator=generator)
    x = [z + math.sqrt(NOISE_VARIANCE) * torch.randn(count, generator=generator) for _ in "12"]
    return {"x1": x[0], "x2": x[1]}


def exact_log_evidence(data: Data) -> Tensor:
    x = torch.stack([data["x1"], data["x2"]], -1).double()
    covariance = PRIOR_VARIANCE + NOISE_VARIANCE * torch.eye(2, dtype=torch.float64)
    return MultivariateNormal(torch.ones(2, dtype=torch.float64), covariance).log_prob(x)


def split(data: Data) -> list[Data]:
    return [{"x1": x1, "x2": x2} for x1, x2 in zip(data["x1"], data["x2"])]


def from_batch(batch: Any) -> tuple[Tensor, ...]:
    return batch.log_evidence, batch.ess, batch.mean("z")


def from_loop(posteriors: list[Any]) -> tuple[Tensor, ...]:
    values = [(float(p.log_evidence), float(p.ess), float(p.mean("z"))) for p in posteriors]
    return tuple(torch.tensor(column, dtype=torch.float64) for column in zip(*values))


def run_torch(data: Data) -> tuple[Tensor, ...]:
    z = Normal(1.0, math.sqrt(PRIOR_VARIANCE)).sample((N, data["x1"].shape[0]))
    noise = Normal(z, math.sqrt(NOISE_VARIANCE))
    log_w = (noise.log_prob(data["x1"]) + noise.log_prob(data["x2"])).double()
    lse = torch.logsumexp(log_w, 0)
    ess = torch.exp(2 * lse - torch.logsumexp(2 * log_w, 0))
    return lse - math.log(N), ess, (torch.exp(log_w - lse) * z.double()).sum(0)


def pyro_importance() -> Callable[[Data], tuple[Tensor, ...]]:
    import pyro
    import pyro.distributions as dist
    from pyro.infer import EmpiricalMarginal, Importance

    def model(x1: Tensor, x2: Tensor) -> Tensor:
        z = pyro.sample("z", dist.Normal(1.0, math.sqrt(PRIOR_VARIANCE)))
        pyro.sample("x1", dist.Normal(z, math.sqrt(NOISE_VARIANCE)), obs=x1)
        pyro.sample("x2", dist.Normal(z, math.sqrt(NOISE_VARIANCE)), obs=x2)
        return z

    def run(data: Data) -> tuple[Tensor, ...]:
        values = []
        for d in split(data):
            post = Importance(model, guide=None, num_samples=N).run(d["x1"], d["x2"])
            mean = float(EmpiricalMarginal(post, sites="z").mean)
            values.append((float(post.get_log_normalizer()), float(post.get_ESS()), mean))
        return tuple(torch.tensor(column, dtype=torch.float64) for column in zip(*values))

    return run


def describe(data: Data) -> Callable[[dict[str, Any]], str]:
    exact = exact_log_evidence(data)

    def line(last: dict[str, Any]) -> str:
        return "; ".join(
            f"{name} ESS/N {float(ess.double().mean()) / N:.3f}, "
            f"max|dlogZ| {float((log_z.double() - exact).abs().max()):.3f}"
            for name, (log_z, ess, _) in last.items()
        )

    return line


def cases(options: argparse.Namespace) -> Iterator[Case]:
    pyro = pyro_importance() if options.pyro else None
    torch.manual_seed(options.seed)
    csis = ic.CSIS(gaussian, validation_size=0)
    csis.train(300, 256, progress=False)
    pool = simulate(max(SIZES), options.seed)
    for b in SIZES:
        data = {name: value[:b] for name, value in pool.items()}
        contenders: dict[str, Callable[[], Any]] = {
            "batch": lambda d=data: from_batch(ic.importance_batch(gaussian, d, N)),
            "csis batch": lambda d=data: from_batch(csis.run_batch(d, N)),
        }
        if b < 1000 or options.long:  # the loops take ~10 s at B = 1000
            contenders["loop"] = lambda d=data: from_loop(
                [ic.importance(gaussian, x, N) for x in split(d)]
            )
            contenders["csis loop"] = lambda d=data: from_loop([csis.run(x, N) for x in split(d)])
        if options.torch:
            contenders["torch"] = lambda d=data: run_torch(d)
        if pyro is not None and b <= 10:
            contenders["pyro"] = lambda d=data: pyro(d)
        size = f"{b} data sets × {N}"
        rows = [
            Row(f"batched prior IS, {size}", "data sets/s", "batch"),
            Row(f"loop of prior IS, {size}", "data sets/s", "loop"),
            Row(
                f"automatic network, run_batch, {size}",
                "data sets/s",
                "csis batch",
                None,
                None,
                target=("infcomp", ">=", 1000.0) if b == 1000 else None,
            ),
            Row(f"automatic network, loop of run, {size}", "data sets/s", "csis loop", None, None),
        ]
        rows = [row for row in rows if row.infcomp in contenders]
        min_repeats = {"csis batch": 5} if b == 1000 else {}
        yield Case(rows, contenders, work=b, min_repeats=min_repeats, describe=describe(data))


STEPS, SSM_DATASETS, SSM_PARTICLES = 25, 20, 10_000


def state_space() -> Tensor:
    """z_0 ~ N(0, 1), z_t ~ N(0.9 z_{t-1}, 0.5), y_t ~ N(z_t, 0.5): 25 latent sites."""
    z = ic.sample("z_0", Normal(0.0, 1.0))
    ic.observe("y_0", Normal(z, 0.5))
    for t in range(1, STEPS):
        z = ic.sample(f"z_{t}", Normal(0.9 * z, 0.5))
        ic.observe(f"y_{t}", Normal(z, 0.5))
    return z


def ssm_cases(options: argparse.Namespace) -> Iterator[Case]:
    """A compiled proposal on a 25-site program: ``run_batch`` on 20 data sets × 10⁴
    particles against a loop of ``run`` (target: not slower), and one ``run`` of 10⁵."""
    torch.manual_seed(options.seed)
    csis = ic.CSIS(state_space)
    csis.train(num_steps=5, batch_size=32, progress=False)  # the speed, not the quality
    traces = ic.JointSimulator(state_space)(SSM_DATASETS).traces[0]
    data = {f"y_{t}": traces[f"y_{t}"].value for t in range(STEPS)}
    n = SSM_PARTICLES
    contenders: dict[str, Callable[[], Any]] = {
        "csis batch": lambda: csis.run_batch(data, n),
        "csis loop": lambda: [
            csis.run({k: v[b] for k, v in data.items()}, n) for b in range(SSM_DATASETS)
        ],
    }
    size = f"{SSM_DATASETS} data sets × {n}"
    row = Row(
        f"25-site program, compiled: run_batch (torch column: loop of run), {size}",
        "data sets/s",
        "csis batch",
        "csis loop",
        None,
        target=("infcomp/torch", ">=", 1.0),
    )
    yield Case([row], contenders, work=SSM_DATASETS, warm_up=1)
    big = Row("25-site program, compiled: one run of 1e5 particles", "particles/s", "csis 1e5")
    contenders = {"csis 1e5": lambda: csis.run({k: v[0] for k, v in data.items()}, 100_000)}
    yield Case([big], contenders, work=100_000, warm_up=1)


def all_cases(options: argparse.Namespace) -> Iterator[Case]:
    yield from cases(options)
    if options.long:
        yield from ssm_cases(options)


SECTION = Section("batched", "batched inference for many data sets", all_cases)

if __name__ == "__main__":
    harness.run_alone(SECTION)
