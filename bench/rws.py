"""Benchmark: reweighted wake-sleep (RWS) steps per second, infcomp vs Pyro vs plain torch.

The model is the Gaussian mixture of :mod:`infcomp.examples.rws_mixture`:
c ~ Categorical(softmax(logits)), y ~ N(means[c], 1), with ``means`` and ``logits``
learned (θ), on its 500 simulated points, each point one observed data set. The guide
q_φ(c | y) is the same small network for every contender: an MLP 1→16→2 (tanh) giving
the logits of c, which broadcasts over a batch of points. Every step draws a random
minibatch of data sets (points), K = 10 particles for each, and updates θ and φ with
wake-θ (the IWAE bound) and wake-φ (insomnia 1, the default of both libraries: no sleep
phase). All contenders use the same optimizers: Adam, fused where torch has it
(:func:`infcomp.inference.csis.default_optimizer`), lr 1e-2 for θ and 1e-3 for φ, and
start from the same initial weights.

* **infcomp**: ``ic.RWS(Mixture(), {"y": y}, guide=MixtureGuide(), num_particles=K)``
  then ``rws.step(minibatch)``. The guide is called as ``guide(observations={"y": y})``
  with ``y`` of shape ``(minibatch,)`` and calls ``ic.sample("c", Categorical(logits))``;
  infcomp adds the particle dimension. Also with ``guide=None``: infcomp's automatic
  inference network (observation embedding, LSTM core, categorical head).
* **pyro**: ``pyro.infer.ReweightedWakeSleep(num_particles=K, vectorize_particles=True,
  max_plate_nesting=1)``; each step is ``zero_grad``, ``rws.loss_and_grads(model, guide,
  y_minibatch)``, ``optimizer.step()`` for θ and φ. Pyro's RWS has no minibatching over
  data sets of its own, so the model and guide put the minibatch of points in a
  ``pyro.plate("data", minibatch)`` and register their modules with ``pyro.module``;
  Pyro vectorizes the K particles with a second plate. Note that Pyro then weighs each
  particle by the *joint* density of the whole minibatch (its log weight sums over the
  plate before the logsumexp over particles), a looser bound than infcomp's per-data-set
  IWAE bound for minibatches above 1; the work per step, K × minibatch latent draws and
  densities, is the same. Pyro's validation is left on (its default), as infcomp's is.
  For context, also with ``vectorize_particles=False`` (Pyro runs model and guide K times
  a step); the ratios and the target are against the vectorized form.
* **torch**: the same step hand-written in plain torch (sample c from the MLP's logits,
  log w = log softmax(logits)[c] + log N(y; means[c], 1) - log q, per-data-set IWAE bound
  and wake-φ loss, one backward, two Adam steps): the practical limit.

Method, as in ``bench/csis.py``: each contender is warmed up, then timed in blocks of
consecutive steps of about 50 ms; the contenders' blocks are interleaved so that a burst
of load from elsewhere hits them alike, each is repeated until about ``--budget``
seconds of its blocks are spent (at least 3 blocks), and the best (minimum) block time
gives steps/s. "data-set-particles/s" is minibatch × K × steps/s. One torch thread by
default (``--threads``; 0 keeps torch's own choice), since torch's multi-threaded kernels
stall on a busy machine.

The target (of the issue): an infcomp RWS step costs at most 1/5 of a Pyro RWS step
(vectorized) on the same model and guide, i.e. infcomp steps/s ≥ 5× Pyro's; the check
section says at which minibatch sizes it is met.

Run with ``python bench/rws.py``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Normal

import infcomp as ic
from infcomp.examples.rws_mixture import Mixture, simulate_data
from infcomp.inference.csis import default_optimizer

# isort: split
# Helpers shared by the scripts of this folder (python bench/X.py puts it on sys.path).
import common
from common import Trainer, measure_blocks, ratio

NUM_PARTICLES = 10
MINIBATCH_SIZES = (1, 10, 100)
DATA_SIZE = 500
MODEL_LEARNING_RATE = 1e-2
GUIDE_LEARNING_RATE = 1e-3
HIDDEN = 16
# Target: infcomp steps/s at least this many times Pyro's.
STEP_TARGET = 5.0

INFCOMP = "infcomp RWS, MLP guide"
INFCOMP_AUTO = "infcomp RWS, auto network"
PYRO = "pyro RWS (vectorized)"
PYRO_LOOP = "pyro RWS (per particle)"
TORCH = "torch (hand-written)"

SETUP = (
    f"  {INFCOMP}: ic.RWS(Mixture(), {{'y': y}}, guide=MixtureGuide(), num_particles=K)"
    ".step(minibatch)\n"
    f"  {INFCOMP_AUTO}: the same with guide=None (embedding + LSTM core + categorical head)\n"
    f"  {PYRO}: ReweightedWakeSleep(num_particles=K, vectorize_particles=True, "
    "max_plate_nesting=1).loss_and_grads\n"
    "      + two Adam steps; model and guide take the minibatch in pyro.plate('data', m),\n"
    "      so one Pyro step covers m data sets (weights joint over the plate: a looser\n"
    "      bound for m > 1, same work)\n"
    f"  {PYRO_LOOP}: the same with vectorize_particles=False (K model/guide runs a step;\n"
    "      for context only: the target and the ratios are against the vectorized one)\n"
    f"  {TORCH}: the same step written in plain torch (the practical limit)\n"
    "  all: guide MLP 1-16-2 (tanh) -> logits of q(c | y); Adam (fused) lr 1e-2 (θ), "
    "1e-3 (φ); insomnia 1"
)


# -- the model and guide -----------------------------------------------------------------


def guide_network() -> nn.Sequential:
    """The guide's MLP: y → logits of q(c | y), 1→16→2 with tanh; broadcasts over batches."""
    return nn.Sequential(nn.Linear(1, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 2))


class MixtureGuide(nn.Module):
    """infcomp's guide: q(c | y) = Categorical(logits=MLP(y)), for any batch shape of y."""

    def __init__(self) -> None:
        super().__init__()
        self.network = guide_network()

    def forward(self, observations: dict[str, Tensor] | None = None) -> Tensor:
        assert observations is not None
        logits = self.network(observations["y"].unsqueeze(-1))
        return ic.sample("c", Categorical(logits=logits))


def new_pair(seed: int) -> tuple[Mixture, nn.Sequential]:
    """The model (θ) and the guide's network (φ), with the initial weights of ``seed``."""
    torch.manual_seed(seed)
    return Mixture(), guide_network()


def infcomp_step(data: Tensor, seed: int, minibatch: int, automatic: bool) -> Callable[[], Any]:
    model, network = new_pair(seed)
    guide: MixtureGuide | None = None
    if not automatic:
        guide = MixtureGuide()
        guide.network.load_state_dict(network.state_dict())
    rws = ic.RWS(
        model,
        {"y": data},
        guide=guide,
        num_particles=NUM_PARTICLES,
        model_learning_rate=MODEL_LEARNING_RATE,
        learning_rate=GUIDE_LEARNING_RATE,
    )
    return lambda: rws.step(minibatch)


def torch_step(data: Tensor, seed: int, minibatch: int) -> Callable[[], Any]:
    """The RWS step hand-written in plain torch, with infcomp's losses (means over the
    minibatch of per-data-set IWAE bounds and wake-φ losses)."""
    model, network = new_pair(seed)
    model_optimizer = default_optimizer(list(model.parameters()), MODEL_LEARNING_RATE)
    guide_optimizer = default_optimizer(list(network.parameters()), GUIDE_LEARNING_RATE)
    log_k = math.log(NUM_PARTICLES)
    size = data.shape[0]

    def step() -> float:
        y = data[torch.randperm(size)[:minibatch]]
        q = Categorical(logits=network(y.unsqueeze(-1)))
        c = q.sample((NUM_PARTICLES,))
        log_q = q.log_prob(c)
        log_p = torch.log_softmax(model.logits, -1)[c] + Normal(model.means[c], 1.0).log_prob(y)
        log_w = log_p - log_q.detach()
        bound = torch.logsumexp(log_w, 0) - log_k
        wake_phi = -(torch.softmax(log_w.detach(), 0) * log_q).sum(0)
        loss = wake_phi.mean() - bound.mean()
        model_optimizer.zero_grad()
        guide_optimizer.zero_grad()
        loss.backward()
        model_optimizer.step()
        guide_optimizer.step()
        return float(bound.detach().mean())

    return step


@dataclass
class PyroKit:
    """Pyro's side: its version and a factory of RWS step functions."""

    version: str
    new_step: Callable[[Tensor, int, int, str, bool], Callable[[], Any]]


def load_pyro() -> PyroKit | None:
    """Pyro's RWS on the same model and guide, or ``None`` when Pyro is not installed."""
    try:
        import pyro
        import pyro.distributions as pdist
        from pyro.infer import ReweightedWakeSleep
    except ImportError:
        return None

    def new_step(
        data: Tensor, seed: int, minibatch: int, prefix: str, vectorize: bool
    ) -> Callable[[], Any]:
        mixture, network = new_pair(seed)

        def model(y: Tensor) -> Tensor:
            pyro.module(f"{prefix}mixture", mixture)
            with pyro.plate("data", y.shape[0], dim=-1):
                c = pyro.sample("c", pdist.Categorical(logits=mixture.logits))
                return pyro.sample("y", pdist.Normal(mixture.means[c], 1.0), obs=y)

        def guide(y: Tensor) -> Tensor:
            pyro.module(f"{prefix}guide", network)
            with pyro.plate("data", y.shape[0], dim=-1):
                logits = network(y.unsqueeze(-1))
                return pyro.sample("c", pdist.Categorical(logits=logits))

        loss = ReweightedWakeSleep(
            num_particles=NUM_PARTICLES, vectorize_particles=vectorize, max_plate_nesting=1
        )
        model_optimizer = default_optimizer(list(mixture.parameters()), MODEL_LEARNING_RATE)
        guide_optimizer = default_optimizer(list(network.parameters()), GUIDE_LEARNING_RATE)
        size = data.shape[0]

        def step() -> Any:
            y = data[torch.randperm(size)[:minibatch]]
            model_optimizer.zero_grad()
            guide_optimizer.zero_grad()
            losses = loss.loss_and_grads(model, guide, y)
            model_optimizer.step()
            guide_optimizer.step()
            return losses

        return step

    pyro.clear_param_store()
    return PyroKit(version=pyro.__version__, new_step=new_step)


# -- timing ------------------------------------------------------------------------------


def warm_up(trainer: Trainer) -> None:
    """Three steps, for the probe runs and Adam's lazily created state."""
    for _ in range(3):
        trainer.step()


# -- results -----------------------------------------------------------------------------


@dataclass
class Row:
    contender: str
    minibatch: int
    steps_per_second: float

    @property
    def particles_per_second(self) -> float:
        """Data-set-particles per second: minibatch × K × steps/s."""
        return self.minibatch * NUM_PARTICLES * self.steps_per_second


@dataclass
class Results:
    """What :func:`collect` measured, for printing here or in ``bench/all.py``."""

    rows: list[Row]
    pyro_version: str | None

    def rate(self, contender: str, minibatch: int) -> float | None:
        for row in self.rows:
            if row.contender == contender and row.minibatch == minibatch:
                return row.steps_per_second
        return None

    def target(self) -> tuple[str, bool | None]:
        """The check line of the target and whether it is met (None: not measured)."""
        ratios = {}
        for size in MINIBATCH_SIZES:
            ours, theirs = self.rate(INFCOMP, size), self.rate(PYRO, size)
            if ours is not None and theirs is not None:
                ratios[size] = ours / theirs
        label = f"infcomp RWS step <= 1/{STEP_TARGET:g} of a Pyro RWS step (MLP guide, K = "
        label += f"{NUM_PARTICLES})"
        if not ratios:
            return f"  {label}: not measured", None
        listed = ", ".join(f"{r:.2f}x at minibatch {m}" for m, r in ratios.items())
        met = [m for m, r in ratios.items() if r >= STEP_TARGET]
        if met:
            verdict = "MET at minibatch " + ", ".join(str(m) for m in met)
        else:
            verdict = "NOT MET at any measured minibatch size"
        return f"  {label}: speedup {listed} -> {verdict}", bool(met)


def collect(budget: float, seed: int = 0, pyro: bool = True) -> Results:
    """Time every contender at every minibatch size (see the module docstring)."""
    data = simulate_data(DATA_SIZE)
    kit = load_pyro() if pyro else None
    trainers: list[Trainer] = []
    for size in MINIBATCH_SIZES:
        if kit is not None:
            trainers.append(Trainer(PYRO, size, kit.new_step(data, seed, size, f"v{size}_", True)))
            trainers.append(
                Trainer(PYRO_LOOP, size, kit.new_step(data, seed, size, f"p{size}_", False))
            )
        trainers.append(Trainer(INFCOMP, size, infcomp_step(data, seed, size, automatic=False)))
        trainers.append(Trainer(INFCOMP_AUTO, size, infcomp_step(data, seed, size, automatic=True)))
        trainers.append(Trainer(TORCH, size, torch_step(data, seed, size)))
    torch.manual_seed(seed)
    measure_blocks(trainers, budget, warm_up)
    rows = [Row(t.name, t.size, t.steps_per_second) for t in trainers]
    return Results(rows, kit.version if kit is not None else None)


def print_table(results: Results) -> None:
    header = (
        f"{'contender':<27} {'minibatch':>9} {'K':>3} {'steps/s':>9} {'ms/step':>8} "
        f"{'data-set-particles/s':>21} {'ratio to pyro':>14}"
    )
    common.print_table_header(header)
    missing = "-" if results.pyro_version is not None else "n/a"
    for row in sorted(results.rows, key=lambda r: r.minibatch):
        pyro_rate = results.rate(PYRO, row.minibatch)
        vs_pyro = missing if pyro_rate is None else f"{row.steps_per_second / pyro_rate:.2f}"
        print(
            f"{row.contender:<27} {row.minibatch:>9} {NUM_PARTICLES:>3} "
            f"{row.steps_per_second:>9.0f} {1e3 / row.steps_per_second:>8.3f} "
            f"{row.particles_per_second:>21.2e} {vs_pyro:>14}",
            flush=True,
        )


def check_lines(results: Results) -> list[str]:
    line, _ = results.target()
    lines = [line]
    limits = [
        (size, value)
        for size in MINIBATCH_SIZES
        if (value := ratio(results.rate(TORCH, size), results.rate(PYRO, size))) is not None
    ]
    if limits and max(r for _, r in limits) < STEP_TARGET:
        listed = ", ".join(f"{r:.2f}x at {size}" for size, r in limits)
        lines.append(
            f"    (even the hand-written torch step is only {listed} Pyro's steps/s: the "
            f"target is below the floor of backward + two Adam steps + the kernels of this "
            f"step at these sizes)"
        )
    for size in MINIBATCH_SIZES:
        ours, auto, limit = (results.rate(name, size) for name in (INFCOMP, INFCOMP_AUTO, TORCH))
        pyro_rate = results.rate(PYRO, size)
        parts = []
        if ours is not None and limit is not None:
            parts.append(f"infcomp/torch {ours / limit:.2f}")
        if pyro_rate is not None and limit is not None:
            parts.append(f"torch/pyro {limit / pyro_rate:.2f}")
        if auto is not None and pyro_rate is not None:
            parts.append(f"auto network/pyro {auto / pyro_rate:.2f}")
        per_particle = results.rate(PYRO_LOOP, size)
        if ours is not None and per_particle is not None:
            parts.append(f"infcomp/pyro per particle {ours / per_particle:.2f}")
        if parts:
            lines.append(f"  minibatch {size}: " + ", ".join(parts))
    return lines


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Reweighted wake-sleep steps per second on a Gaussian mixture: infcomp "
        "vs Pyro's ReweightedWakeSleep vs hand-written torch."
    )
    parser.add_argument("--no-pyro", action="store_true", help="do not run Pyro at all")
    parser.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="seconds of timed blocks per contender per minibatch size (default 1.0)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    common.add_threads_argument(parser)
    args = parser.parse_args(argv)
    common.check_budget_and_threads(parser, args)
    return args


def header_line(pyro: str | None, budget: float) -> str:
    return (
        f"RWS on the Gaussian mixture c ~ Cat(softmax(logits)), y ~ N(means[c], 1); "
        f"{DATA_SIZE} data sets, K = {NUM_PARTICLES}\n"
        + common.versions_line(pyro, budget, per="row", runs="blocks")
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    common.set_threads(args.threads)
    print(header_line(None if args.no_pyro else common.pyro_version(), args.budget))
    print("setup:")
    print(SETUP, flush=True)
    results = collect(args.budget, args.seed, pyro=not args.no_pyro)
    print_table(results)
    common.print_checks(check_lines(results))
    common.print_pyro_note(args.no_pyro, results.pyro_version)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
