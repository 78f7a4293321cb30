"""Compiled importance sampling (CSIS) on the Gaussian: infcomp vs torch vs ``pyro.infer.CSIS``.

The model z ~ N(1, √5); x1, x2 ~ N(z, √2) at (8, 9), and the CSIS seed notebook's guide:
an MLP 2→10→20→10→5→2 (ReLU) giving the mean and log-std of a Normal proposal for z,
Adam lr 1e-3. infcomp uses :class:`infcomp.examples.csis_gaussian.Guide`, which broadcasts
over a batch (and, with ``--long``, the notebook's per-trace ``SingleTraceGuide``); Pyro
the same per-trace guide written as in its tutorial. All build their MLP with
``guide_network``, so one seed gives the same initial weights everywhere.

1. **Training**, traces/s: Pyro's ``csis.step(prior_mean)`` at batch 10 (trace by trace
   in Python); infcomp's ``CSIS.step(batch_size=b)`` (``validation_size=0``) at b = 10 to
   10⁴; the same step hand-written in torch at 10 and 1000 (the practical limit). Timed
   in blocks of ~50 ms after a warm-up step. Target: infcomp ≥ 50× Pyro's traces/s.
2. **Inference**, samples/s, with the guide trained with the notebook's settings (2,000
   steps of batch 10, seed ``--seed``) and copied into Pyro's guide: infcomp's
   ``csis.run(DATA, N)`` then ``ess`` and ``mean("z")``; Pyro's ``CSIS.run`` then
   ``get_ESS()`` and ``EmpiricalMarginal(...).mean`` (up to N = 10⁴).
3. **Quality**: the median ESS over 20 runs of 50 samples at (8, 9) after training with
   the notebook's settings from seed s (Pyro: 2,000 ``csis.step`` of batch 10 from the
   same weights), for 1 seed (5 with ``--long``). Target: median ESS ≥ 35 of 50.

Run ``python bench/csis.py``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Normal

import infcomp as ic
from infcomp.examples.csis_gaussian import Guide, SingleTraceGuide, guide_network
from infcomp.examples.gaussian import DATA, gaussian

# isort: split
import harness
from harness import Case, Row, Section

PRIOR_SCALE, NOISE_SCALE = math.sqrt(5.0), math.sqrt(2.0)
LEARNING_RATE = 1e-3
PYRO_BATCH = 10
BATCH_SIZES = (10, 100, 1000, 10000)
TORCH_BATCH_SIZES = (10, 1000)
INFERENCE_SIZES = (10**2, 10**3, 10**4, 10**5, 10**6)
PYRO_MAX = 10**4
STEPS, BATCH, RUNS, SAMPLES = 2000, 10, 20, 50  # the seed notebook's training; quality runs


def new_csis(guide: nn.Module) -> ic.CSIS:
    return ic.CSIS(gaussian, guide, learning_rate=LEARNING_RATE, validation_size=0)


def compile_gaussian(seed: int) -> ic.CSIS:
    """The notebook's training (as ``infcomp.examples.csis_gaussian.compile_gaussian``)."""
    torch.manual_seed(seed)
    csis = ic.CSIS(gaussian, Guide(), learning_rate=LEARNING_RATE)
    csis.train(STEPS, BATCH, progress=False)
    return csis


def infcomp_infer(csis: ic.CSIS, n: int) -> tuple[float, float, float]:
    """ESS, posterior mean and std of z."""
    post = csis.run(DATA, n)
    return float(post.ess), float(post.mean("z")), float(post.std("z"))


def torch_step(batch_size: int) -> Callable[[], float]:
    network = guide_network()
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)

    def step() -> float:
        with torch.no_grad():
            z = Normal(1.0, PRIOR_SCALE).sample((batch_size,))
            noise = Normal(z, NOISE_SCALE)
            inputs = torch.stack([noise.sample(), noise.sample()], dim=-1)
        outputs = network(inputs)
        loss = -Normal(outputs[:, 0], outputs[:, 1].exp()).log_prob(z).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


class Pyro:
    """Pyro's side: the tutorial's model and per-trace guide, its CSIS."""

    def __init__(self) -> None:
        import pyro
        import pyro.distributions as dist
        from pyro.infer import CSIS, EmpiricalMarginal
        from pyro.optim import Adam

        zero = {"x1": torch.tensor(0.0), "x2": torch.tensor(0.0)}
        self.pyro, self.prior_mean = pyro, torch.tensor(1.0)

        def model(prior_mean: Tensor, observations: dict[str, Tensor] = zero) -> Tensor:
            z = pyro.sample("z", dist.Normal(prior_mean, PRIOR_SCALE))
            pyro.sample("x1", dist.Normal(z, NOISE_SCALE), obs=observations["x1"])
            pyro.sample("x2", dist.Normal(z, NOISE_SCALE), obs=observations["x2"])
            return z

        class PyroGuide(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.network = guide_network()

            def forward(self, prior_mean: Tensor, observations: dict[str, Tensor] = zero) -> Any:
                pyro.module("guide", self)
                x = torch.cat((observations["x1"].view(1, 1), observations["x2"].view(1, 1)), 1)
                out = self.network(x)
                return pyro.sample("z", dist.Normal(out[0, 0], out[0, 1].exp()))

        self.guide = PyroGuide
        self.csis = lambda guide, n: CSIS(
            model,
            guide,
            Adam({"lr": LEARNING_RATE}),
            num_inference_samples=n,
            training_batch_size=PYRO_BATCH,
        )
        self.marginal = lambda post: EmpiricalMarginal(post, sites="z")

    def infer(self, guide: nn.Module, n: int) -> tuple[float, float, float]:
        csis = self.csis(guide, n)
        marginal = self.marginal(csis.run(self.prior_mean, observations=DATA))
        return float(csis.get_ESS()), float(marginal.mean), float(marginal.variance.sqrt())

    def trained_guide(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        self.pyro.clear_param_store()
        guide = self.guide()
        csis = self.csis(guide, SAMPLES)
        for _ in range(STEPS):
            csis.step(self.prior_mean)
        return guide


def describe(last: dict[str, tuple[float, float, float]]) -> str:
    """Both libraries sample the same proposal: their ESS and moments must agree."""
    return f"at N = {PYRO_MAX:.0e} (exact mean z 7.25, std 0.9129): " + "; ".join(
        f"{k} ESS/N {e / PYRO_MAX:.3f}, mean z {m:.4f}, std z {s:.4f}"
        for k, (e, m, s) in last.items()
    )


def cases(options: argparse.Namespace) -> Iterator[Case]:
    pyro = Pyro() if options.pyro else None
    # 1. Training throughput.
    steps: dict[str, Callable[[], Any]] = {}
    if pyro is not None:
        pyro.pyro.clear_param_store()
        pyro_csis = pyro.csis(pyro.guide(), 1)
        steps["pyro"] = lambda: pyro_csis.step(pyro.prior_mean)
    for size in BATCH_SIZES:
        trained_step = new_csis(Guide()).step
        steps[f"infcomp {size}"] = lambda step=trained_step, size=size: step(batch_size=size)
    if options.long:
        single = new_csis(SingleTraceGuide())
        steps["infcomp single 10"] = lambda: single.step(batch_size=10)
    for size in TORCH_BATCH_SIZES if options.torch else ():
        steps[f"torch {size}"] = torch_step(size)
    work = {name: float(name.split()[-1]) for name in steps if name != "pyro"}
    work["pyro"] = float(PYRO_BATCH)
    rows = [
        Row(
            f"CSIS training, batch {size} (pyro: batch 10)",
            "traces/s",
            f"infcomp {size}",
            f"torch {size}",
            target=("infcomp/pyro", ">=", 50.0) if size == 1000 else None,
        )
        for size in BATCH_SIZES
    ]
    if options.long:
        rows.append(
            Row(
                "CSIS training, SingleTraceGuide, batch 10",
                "traces/s",
                "infcomp single 10",
                "torch 10",
            )
        )
    yield Case(rows, steps, work, blocks=True, warm_up=1)

    # 2. Inference throughput with a trained guide, the same weights in Pyro's.
    trained = compile_gaussian(options.seed)
    if pyro is not None:
        pyro.pyro.clear_param_store()
        pyro_guide = pyro.guide()
        pyro_guide.load_state_dict(trained.guide.state_dict())
    for n in INFERENCE_SIZES:
        contenders: dict[str, Callable[[], Any]] = {
            "infcomp": lambda n=n: infcomp_infer(trained, n)
        }
        if pyro is not None and n <= PYRO_MAX:
            contenders["pyro"] = lambda n=n: pyro.infer(pyro_guide, n)
        row = Row(f"CSIS inference, trained guide, N = {n:.0e}", "samples/s", torch=None)
        yield Case([row], contenders, work=n, describe=describe if n == PYRO_MAX else None)

    # 3. Quality: median ESS of 50 after the notebook's training, per seed.
    for seed in range(5 if options.long else 1):

        def quality(seed: int = seed) -> dict[str, float]:
            csis = trained if seed == options.seed else compile_gaussian(seed)
            values = {
                "infcomp": statistics.median(infcomp_infer(csis, SAMPLES)[0] for _ in range(RUNS))
            }
            if pyro is not None:
                guide = pyro.trained_guide(seed)
                values["pyro"] = statistics.median(
                    pyro.infer(guide, SAMPLES)[0] for _ in range(RUNS)
                )
            return values

        row = Row(
            f"CSIS quality, training seed {seed}: median ESS of {SAMPLES}",
            "ESS",
            torch=None,
            target=("infcomp", ">=", 35.0),
        )
        yield Case([row], values=quality)


SECTION = Section("csis", "compiled importance sampling, Gaussian, seed notebook's guide", cases)

if __name__ == "__main__":
    harness.run_alone(SECTION)
