"""Compiling a simulator that fails: 1 % of its runs return NaN and 0.2 % raise.

The simulator is the Gaussian (z ~ N(1, √5); x1, x2 ~ N(z, √2)) with an internal
uniform draw u that decides whether a run fails: u < ``raise_rate`` raises (a solver
that diverges), u < ``raise_rate + nan_rate`` returns NaN for x1. With both rates zero it
is the clean simulator, with the same sites. CSIS is trained on a simulation budget of
each, with ``on_error="skip"`` for the failing one: failed and NaN simulations are
dropped and counted, and the compiled proposal is as good as the clean one's. Both
proposals are then used on the clean model at the data (8, 9).

Run ``python -m infcomp.examples.failing_simulator`` (``--simulations``, ``--particles``,
``--seed``); it prints one line per simulator.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.distributions import Normal, Uniform

import infcomp as ic
from infcomp.examples.gaussian import DATA, exact_posterior

NAN_RATE = 0.01
RAISE_RATE = 0.002


def failing_gaussian(nan_rate: float = NAN_RATE, raise_rate: float = RAISE_RATE) -> torch.Tensor:
    """The Gaussian as a one-run-at-a-time simulator that sometimes fails."""
    z = ic.sample("z", Normal(1.0, 5**0.5))
    u = float(ic.sample("u", Uniform(0.0, 1.0)))
    if u < raise_rate:
        raise RuntimeError("the solver diverged")
    mean = torch.full_like(z, math.nan) if u < raise_rate + nan_rate else z
    ic.observe("x1", Normal(mean, 2**0.5, validate_args=False))
    ic.observe("x2", Normal(z, 2**0.5))
    return z


@dataclass
class Outcome:
    """What compiling one simulator gave."""

    label: str
    ess_fraction: float
    mean_error: float  # |E_q-IS[z] - exact| in exact posterior standard deviations
    num_simulations: int
    failed: int
    invalid: int
    seconds: float


def compile_and_infer(
    label: str, nan_rate: float, raise_rate: float, simulations: int, particles: int, seed: int
) -> Outcome:
    """Compile on ``simulations`` runs of the simulator with these failure rates, then
    infer on the clean simulator at the data with ``particles`` particles."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    rates = {"nan_rate": nan_rate, "raise_rate": raise_rate}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.SimulationWarning)  # counted below
        csis = ic.CSIS(failing_gaussian, kwargs=rates, vectorize=False, on_error="skip")
        csis.train(num_simulations=simulations, progress=False)
    posterior = csis.run(DATA, num_particles=particles, nan_rate=0.0, raise_rate=0.0)
    exact = exact_posterior()
    return Outcome(
        label,
        float(posterior.ess) / particles,
        abs(float(posterior.mean("z")) - float(exact.mean)) / float(exact.stddev),
        csis.num_simulations,
        sum(csis.failed_simulations.values()),
        sum(csis.invalid_simulations.values()),
        time.perf_counter() - started,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--particles", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    print("| simulator | ESS/N | mean error (sd) | simulations | raised | NaN | seconds |")
    print("|---|---|---|---|---|---|---|")
    for label, nan_rate, raise_rate in (
        ("clean", 0.0, 0.0),
        (f"{NAN_RATE:.0%} NaN, {RAISE_RATE:.1%} raise", NAN_RATE, RAISE_RATE),
    ):
        outcome = compile_and_infer(
            label, nan_rate, raise_rate, options.simulations, options.particles, options.seed
        )
        print(
            f"| {outcome.label} | {outcome.ess_fraction:.3f} | {outcome.mean_error:.3f} | "
            f"{outcome.num_simulations} | {outcome.failed} | {outcome.invalid} | "
            f"{outcome.seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
