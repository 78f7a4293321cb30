"""Reweighted wake-sleep (RWS) steps/s on a Gaussian mixture: infcomp vs torch vs Pyro.

The model of :mod:`infcomp.examples.rws_mixture`, c ~ Categorical(softmax(logits)),
y ~ N(means[c], 1) with θ = (means, logits) learned, on its 500 simulated points, each
point a data set. The guide q_φ(c | y) is an MLP 1→16→2 (tanh) giving the logits of c.
Every step draws a random minibatch of data sets, K = 10 particles for each, and updates
θ and φ by wake-θ (IWAE bound) and wake-φ (insomnia 1). Adam, fused where torch has it,
lr 1e-2 (θ) and 1e-3 (φ); every contender starts from the same weights.

* **infcomp**: ``ic.RWS(Mixture(), {"y": y}, guide=MixtureGuide(), num_particles=K)``,
  then ``rws.step(batch_size=minibatch)``; and the same with ``guide=None`` (the automatic
  network: embedding, LSTM core, categorical head).
* **pyro**: ``ReweightedWakeSleep(num_particles=K, vectorize_particles=True,
  max_plate_nesting=1).loss_and_grads`` and two Adam steps, the minibatch in
  ``pyro.plate("data", m)`` (its weights are joint over the plate: a looser bound for
  m > 1, the same work). With ``vectorize_particles=False`` (K runs a step) as context.
* **torch**: the same step hand-written (per-data-set IWAE bound and wake-φ loss, one
  backward, two Adam steps): the practical limit.

Blocks of ~50 ms of steps after three warm-up steps. Target: infcomp ≥ 5× Pyro's steps/s.
Run ``python bench/rws.py``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Normal

import infcomp as ic
from infcomp.examples.rws_mixture import Mixture, simulate_data

# isort: split
import harness
from harness import Case, Row, Section

K = 10
MINIBATCH_SIZES = (1, 10, 100)
MODEL_LEARNING_RATE, GUIDE_LEARNING_RATE = 1e-2, 1e-3


def adam(module: nn.Module, learning_rate: float) -> torch.optim.Adam:
    """infcomp's default optimizer: Adam, fused where torch has it."""
    try:
        return torch.optim.Adam(module.parameters(), lr=learning_rate, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(module.parameters(), lr=learning_rate)


def new_pair(seed: int) -> tuple[Mixture, nn.Sequential]:
    """The model (θ) and the guide's MLP (φ) with the initial weights of ``seed``."""
    torch.manual_seed(seed)
    return Mixture(), nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 2))


class MixtureGuide(nn.Module):
    """q(c | y) = Categorical(logits=MLP(y)), for any batch shape of y."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        logits = self.network(observations["y"].unsqueeze(-1))
        return ic.sample("c", Categorical(logits=logits))


def infcomp_step(data: Tensor, seed: int, size: int, automatic: bool) -> Callable[[], Any]:
    model, network = new_pair(seed)
    guide = None if automatic else MixtureGuide(network)
    rws = ic.RWS(
        model,
        {"y": data},
        guide=guide,
        num_particles=K,
        model_learning_rate=MODEL_LEARNING_RATE,
        learning_rate=GUIDE_LEARNING_RATE,
    )
    return lambda: rws.step(batch_size=size)


def torch_step(data: Tensor, seed: int, size: int) -> Callable[[], Any]:
    model, network = new_pair(seed)
    optimizers = adam(model, MODEL_LEARNING_RATE), adam(network, GUIDE_LEARNING_RATE)

    def step() -> float:
        y = data[torch.randperm(data.shape[0])[:size]]
        q = Categorical(logits=network(y.unsqueeze(-1)))
        c = q.sample((K,))
        log_q = q.log_prob(c)
        log_p = torch.log_softmax(model.logits, -1)[c] + Normal(model.means[c], 1.0).log_prob(y)
        log_w = log_p - log_q.detach()
        bound = torch.logsumexp(log_w, 0) - math.log(K)
        loss = -(torch.softmax(log_w.detach(), 0) * log_q).sum(0).mean() - bound.mean()
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        return float(bound.detach().mean())

    return step


def pyro_step(data: Tensor, seed: int, size: int, vectorize: bool) -> Callable[[], Any]:
    import pyro
    import pyro.distributions as dist
    from pyro.infer import ReweightedWakeSleep

    mixture, network = new_pair(seed)
    prefix = f"{'v' if vectorize else 'p'}{size}_"

    def model(y: Tensor) -> Tensor:
        pyro.module(f"{prefix}mixture", mixture)
        with pyro.plate("data", y.shape[0], dim=-1):
            c = pyro.sample("c", dist.Categorical(logits=mixture.logits))
            return pyro.sample("y", dist.Normal(mixture.means[c], 1.0), obs=y)

    def guide(y: Tensor) -> Tensor:
        pyro.module(f"{prefix}guide", network)
        with pyro.plate("data", y.shape[0], dim=-1):
            return pyro.sample("c", dist.Categorical(logits=network(y.unsqueeze(-1))))

    loss = ReweightedWakeSleep(num_particles=K, vectorize_particles=vectorize, max_plate_nesting=1)
    optimizers = adam(mixture, MODEL_LEARNING_RATE), adam(network, GUIDE_LEARNING_RATE)

    def step() -> Any:
        y = data[torch.randperm(data.shape[0])[:size]]
        for optimizer in optimizers:
            optimizer.zero_grad()
        losses = loss.loss_and_grads(model, guide, y)
        for optimizer in optimizers:
            optimizer.step()
        return losses

    return step


def cases(options: argparse.Namespace) -> Iterator[Case]:
    data, seed = simulate_data(500), options.seed
    steps: dict[str, Callable[[], Any]] = {}
    rows = []
    for m in MINIBATCH_SIZES:
        if options.pyro:
            steps[f"pyro {m}"] = pyro_step(data, seed, m, vectorize=True)
            steps[f"pyro loop {m}"] = pyro_step(data, seed, m, vectorize=False)
        steps[f"infcomp {m}"] = infcomp_step(data, seed, m, automatic=False)
        steps[f"infcomp auto {m}"] = infcomp_step(data, seed, m, automatic=True)
        if options.torch:
            steps[f"torch {m}"] = torch_step(data, seed, m)
        mlp, workload = f"infcomp {m}", f"RWS step, mixture, {{}}, minibatch {m}, K = {K}"
        rows += [
            Row(
                workload.format("MLP guide"),
                "steps/s",
                mlp,
                f"torch {m}",
                f"pyro {m}",
                target=("infcomp/pyro", ">=", 5.0) if m == 10 else None,
            ),
            Row(
                workload.format("auto network"),
                "steps/s",
                f"infcomp auto {m}",
                f"torch {m}",
                f"pyro {m}",
            ),
            Row(
                workload.format("MLP guide vs Pyro per particle"),
                "steps/s",
                mlp,
                None,
                f"pyro loop {m}",
            ),
        ]
    yield Case(rows, steps, blocks=True, warm_up=3)


SECTION = Section("rws", "reweighted wake-sleep steps, Gaussian mixture", cases)

if __name__ == "__main__":
    harness.run_alone(SECTION)
