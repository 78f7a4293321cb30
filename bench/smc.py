"""Sequential Monte Carlo on the 100-step HMM: infcomp vs a hand-written filter vs Pyro.

The 3-state HMM of :mod:`infcomp.examples.hmm`, 100 steps, data simulated from the model
with seed 0. Every contender resamples systematically when ESS < N/2 (``ic.smc`` is given
``resample="systematic"`` explicitly: its default is multinomial):

* **infcomp**: ``ic.smc(hmm, data, N, args=(100,), resample="systematic")``, the model as
  written (a Python loop of ``sample`` and ``observe``), then ``log_evidence`` and ``ess``
  as floats. By default the program is replay-checked until one run has passed (here the
  warm-up run); a second row replays every run (``check=True``).
* **torch**: the bootstrap filter written by hand for this model: a loop over steps with
  the state tensor, Categorical transitions, Normal emissions, float64 log weights,
  systematic resampling (``infcomp.resampling.systematic_indices``) and the evidence
  accumulated at each resampling. The practical limit.
* **pyro**: ``pyro.infer.SMCFilter`` with the model rewritten as ``init``/``step`` methods
  and the transition as guide (Pyro's bootstrap filter), its weights in float64 (in
  float32 its systematic resampling can fail with an index out of range); it does not
  estimate the evidence.

Rows: particles/s at N = 10⁴ (targets: infcomp ≥ 1/1.5 of torch, faster than Pyro), and,
at N = 10³ over 30 repeats, the standard deviation of log Ẑ for prior importance
sampling, bootstrap SMC (target: 10× smaller than prior IS), the hand-written filter and,
with ``--long`` (the default when run alone, not in ``bench/all.py``), SMC with a network
compiled for importance sampling (trained here first: 600 steps of 64 simulations, with
attention over the observations; target: smaller than bootstrap SMC's), with the mean
final ESS; and the same spread on the 50-step linear-Gaussian model for prior IS,
bootstrap SMC and SMC with the locally optimal proposal written as a guide. Run
``python bench/smc.py``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.distributions import Categorical, Normal

import infcomp as ic
from infcomp.examples import state_space as ssm
from infcomp.examples.hmm import INITIAL, MEANS, NOISE, TRANSITION, forward_log_evidence, hmm
from infcomp.resampling import systematic_indices

# isort: split
import harness
from harness import Case, Row, Section

STEPS = 100
REPEATS = 30
SYSTEMATIC = "systematic"  # ic.smc's default is multinomial; compared here with systematic


def dataset() -> dict[str, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        values = ic.trace(hmm).get_trace(STEPS).values()
    return {f"y_{t}": values[f"y_{t}"] for t in range(STEPS)}


DATA = dataset()
Y = torch.stack([DATA[f"y_{t}"] for t in range(STEPS)])


def run_infcomp(n: int, check: bool | None = None) -> tuple[float, float]:
    post = ic.smc(hmm, DATA, n, args=(STEPS,), resample=SYSTEMATIC, check=check)
    return float(post.log_evidence), float(post.ess)


def run_torch(n: int) -> tuple[float, float]:
    """A bootstrap filter for the HMM, written by hand."""
    log_weights = torch.zeros(n, dtype=torch.float64)
    log_evidence = torch.zeros((), dtype=torch.float64)
    state = Categorical(INITIAL).sample((n,))
    for t in range(STEPS):
        if t > 0:
            state = Categorical(TRANSITION[state]).sample()
        log_weights += Normal(MEANS[state], NOISE).log_prob(Y[t]).double()
        total = torch.logsumexp(log_weights, 0)
        ess = torch.exp(2 * total - torch.logsumexp(2 * log_weights, 0))
        if ess < n / 2:
            log_evidence += total - math.log(n)
            state = state[systematic_indices(torch.softmax(log_weights, 0), n)]
            log_weights = torch.zeros_like(log_weights)
    total = torch.logsumexp(log_weights, 0)
    ess = torch.exp(2 * total - torch.logsumexp(2 * log_weights, 0))
    return float(log_evidence + total - math.log(n)), float(ess)


def pyro_filter() -> Callable[[int], tuple[float, float]]:
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SMCFilter

    class Model:
        def init(self, state: Any, y: torch.Tensor) -> None:
            state["x"] = pyro.sample("x", dist.Categorical(INITIAL))
            pyro.sample("y", dist.Normal(MEANS[state["x"]], NOISE), obs=y)

        def step(self, state: Any, y: torch.Tensor) -> None:
            state["x"] = pyro.sample("x", dist.Categorical(TRANSITION[state["x"]]))
            pyro.sample("y", dist.Normal(MEANS[state["x"]], NOISE), obs=y)

    class Guide:
        def init(self, state: Any, y: torch.Tensor) -> None:
            pyro.sample("x", dist.Categorical(INITIAL))

        def step(self, state: Any, y: torch.Tensor) -> None:
            pyro.sample("x", dist.Categorical(TRANSITION[state["x"]]))

    def run(n: int) -> tuple[float, float]:
        smc = SMCFilter(Model(), Guide(), num_particles=n, max_plate_nesting=0)
        # In float32, Pyro's systematic resampling can draw index n (its cumulative sum
        # ends below 1) and fail; float64 weights avoid it.
        smc.state._log_weights = smc.state._log_weights.double()
        smc.init(Y[0])
        for t in range(1, STEPS):
            smc.step(Y[t])
        log_weights = smc.state._log_weights
        ess = torch.exp(2 * log_weights.logsumexp(0) - (2 * log_weights).logsumexp(0))
        return math.nan, float(ess)

    return run


def run_importance(n: int) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        post = ic.importance(hmm, DATA, n, args=(STEPS,))
    return float(post.log_evidence), float(post.ess)


def compiled() -> Callable[[int], tuple[float, float]]:
    """SMC with an inference network trained for importance sampling (attention over the
    observations; 600 steps of 64 simulations, a few minutes: after 200 the network was
    still about the prior, log Ẑ's spread 0.31 to 0.37 against bootstrap's 0.34 to 0.38;
    after 600, 0.10)."""
    csis = ic.CSIS(hmm, args=(STEPS,), network=ic.nn.NetworkConfig(attention=True))
    csis.train(num_steps=600, batch_size=64, progress=False)

    def run(n: int) -> tuple[float, float]:
        post = ic.smc(hmm, DATA, n, args=(STEPS,), guide=csis, resample=SYSTEMATIC)
        return float(post.log_evidence), float(post.ess)

    return run


def spread(options: argparse.Namespace) -> Callable[[], dict[str, float]]:
    def values() -> dict[str, float]:
        found: dict[str, float] = {}
        contenders = {"importance": run_importance, "smc": run_infcomp}
        if options.torch:
            contenders["torch"] = run_torch
        if options.long:
            contenders["compiled"] = compiled()
        for name, run in contenders.items():
            results = torch.tensor([run(1000) for _ in range(REPEATS)], dtype=torch.float64)
            found[name] = float(results[:, 0].std())
            found[f"{name} ess"] = float(results[:, 1].mean())
            found[f"{name} error"] = float(results[:, 0].mean()) - forward_log_evidence(DATA, STEPS)
        # The linear-Gaussian state-space model, 50 steps, against the Kalman filter.
        steps = 50
        with torch.random.fork_rng():
            torch.manual_seed(0)
            data = ssm.simulate_data(steps)
        exact, *_ = ssm.kalman(data, steps)
        linear = {
            "lg importance": lambda: ic.importance(ssm.state_space, data, 1000, args=(steps,)),
            "lg smc": lambda: ic.smc(
                ssm.state_space, data, 1000, args=(steps,), resample=SYSTEMATIC
            ),
            "lg guided": lambda: ic.smc(
                ssm.state_space,
                data,
                1000,
                args=(steps,),
                guide=ssm.optimal_guide,
                resample=SYSTEMATIC,
            ),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ic.InferenceWarning)
            for name, call in linear.items():
                log_z = torch.stack([call().log_evidence for _ in range(REPEATS)])
                found[name] = float(log_z.std())
                found[f"{name} error"] = float(log_z.mean()) - exact
        return found

    return values


def describe(last: dict[str, Any]) -> str:
    exact = f"exact log Z {forward_log_evidence(DATA, STEPS):.3f}"
    found = "; ".join(f"{k} {z:.3f} (ESS {e:.4g})" for k, (z, e) in last.items())
    return f"{exact}; {found}"


def cases(options: argparse.Namespace) -> Iterator[Case]:
    n = 10_000
    contenders: dict[str, Callable[[], Any]] = {"infcomp": lambda: run_infcomp(n)}
    if options.torch:
        contenders["torch"] = lambda: run_torch(n)
    if options.pyro:
        pyro = pyro_filter()
        contenders["pyro"] = lambda: pyro(n)
    row = Row(
        "bootstrap SMC, HMM 100 steps, N = 1e4",
        "particles/s",
        target=("infcomp/torch", ">=", 1 / 1.5),
    )
    yield Case([row], contenders, work=n, warm_up=1, describe=describe)
    every = Row("bootstrap SMC, HMM 100 steps, N = 1e4, check=True", "particles/s")
    contenders["infcomp"] = lambda: run_infcomp(n, check=True)
    contenders.pop("pyro", None)
    yield Case([every], contenders, work=n, warm_up=1, describe=describe)
    ratio = Row(
        "log Ẑ sd, HMM 100 steps, N = 1e3: prior IS / bootstrap SMC",
        "ratio",
        lambda v: v["importance"] / v["smc"],
        None,
        None,
        target=("infcomp", ">=", 10.0),
    )
    rows = [
        ratio,
        Row(
            "log Ẑ sd over 30 repeats, bootstrap SMC, N = 1e3",
            "sd",
            "smc",
            "torch",
            None,
            higher_is_better=False,
        ),
        Row(
            "log Ẑ sd over 30 repeats, prior IS, N = 1e3",
            "sd",
            "importance",
            None,
            None,
            higher_is_better=False,
        ),
        Row(
            "log Ẑ sd over 30 repeats, compiled SMC, N = 1e3 (--long)",
            "sd",
            "compiled",
            None,
            None,
            higher_is_better=False,
        ),
        Row(
            "log Ẑ sd, N = 1e3: bootstrap SMC / compiled SMC (--long)",
            "ratio",
            lambda v: v["smc"] / v["compiled"],
            None,
            None,
            target=("infcomp", ">=", 1.0),
        ),
        Row("mean final ESS, bootstrap SMC, N = 1e3", "ESS", "smc ess", "torch ess", None),
        Row("mean final ESS, compiled SMC, N = 1e3 (--long)", "ESS", "compiled ess", None, None),
        Row("mean final ESS, prior IS, N = 1e3", "ESS", "importance ess", None, None),
        Row("mean log Ẑ - log Z, bootstrap SMC, N = 1e3", "nats", "smc error", "torch error", None),
        Row("mean log Ẑ - log Z, prior IS, N = 1e3", "nats", "importance error", None, None),
        Row(
            "linear-Gaussian 50 steps, log Ẑ sd, prior IS, N = 1e3",
            "sd",
            "lg importance",
            None,
            None,
            higher_is_better=False,
        ),
        Row(
            "linear-Gaussian 50 steps, log Ẑ sd, bootstrap SMC, N = 1e3",
            "sd",
            "lg smc",
            None,
            None,
            higher_is_better=False,
        ),
        Row(
            "linear-Gaussian 50 steps, log Ẑ sd, SMC with the optimal guide, N = 1e3",
            "sd",
            "lg guided",
            None,
            None,
            higher_is_better=False,
        ),
        Row(
            "linear-Gaussian 50 steps, mean log Ẑ - log Z, bootstrap SMC, N = 1e3",
            "nats",
            "lg smc error",
            None,
            None,
        ),
    ]
    yield Case(rows, values=spread(options))


SECTION = Section("smc", "sequential Monte Carlo, 100-step HMM", cases)

if __name__ == "__main__":
    harness.run_alone(SECTION)
