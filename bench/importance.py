"""Benchmark: importance sampling with the prior as proposal, infcomp vs plain torch vs Pyro.

The model is the Gaussian with unknown mean of :mod:`infcomp.examples.gaussian`,
z ~ N(1, √5); x1, x2 ~ N(z, √2), observed at x1 = 8, x2 = 9. For N = 10², 10³, ...,
10^max-exponent particles, each contender does the whole job a user asks for and is timed
end to end:

* **infcomp**: ``ic.importance(gaussian, DATA, num_samples=N)`` (which also runs its
  built-in checks: ESS and Pareto k̂), then ``post.mean("z")``, ``post.log_evidence`` and
  ``post.ess``, each forced to a Python float. infcomp's ``InferenceWarning`` (expected at
  small N, where the ESS is small) is silenced inside the timing.
* **torch**: the same computation written by hand the natural way, with no framework: draw
  z from the prior, log w = log N(8; z, √2) + log N(9; z, √2), then in float64
  log Ẑ = logsumexp(log w) − log N, the normalized weights, the weighted mean of z and
  ESS = exp(2 lse(log w) − lse(2 log w)). This is our practical limit: a framework that
  records sites, checks data and diagnoses its weights can approach it but not beat it.
* **pyro**: ``pyro.infer.Importance(model, guide=None, num_samples=N).run()`` on the same
  model written in Pyro, then ``EmpiricalMarginal(...).mean`` of z,
  ``get_log_normalizer()`` and ``get_ESS()``. Pyro runs its particles one by one in a
  Python loop (a few thousand particles per second), so it is only run up to
  N = 10^pyro-max-exponent; "-" marks the sizes above.

Method (for a shared, noisy machine): for each N, every contender gets one untimed
warm-up, then the contenders are interleaved (infcomp, torch, pyro, infcomp, torch, pyro,
...) so that a burst of load from elsewhere hits them alike. Each is repeated until about
``--budget`` seconds of its runs are spent (at least 3 repeats; a contender whose single
run takes longer than the budget gets only 1-2), and the best (minimum) time of each is
reported as particles per second, N / best time. The minimum is the least disturbed run,
the one closest to what the code itself costs. All contenders run with one torch thread
by default (``--threads``): when other jobs busy the cores, torch's multi-threaded
kernels stall waiting for a descheduled worker thread (even ``exp`` and ``log`` of a
100-element tensor enter an OpenMP region), which makes times erratic by up to 40x at any
N, and often not even the best of the repeats escapes it. ``--threads 0`` keeps torch's
own choice for a quiet machine.

Reading the ratios: "infcomp/torch" is infcomp's throughput as a fraction of the
hand-written torch; 1.0 would mean the framework costs nothing, 0.3 means infcomp runs
at 30% of the practical limit. It is low at small N, where fixed per-call costs (probe
run, handlers, checks) dominate, and should approach its ceiling at large N, where both
spend their time in the same tensor kernels. "infcomp/pyro" is how many times faster
infcomp is than Pyro on the same job, which grows with N because infcomp runs the
particles as one vectorized batch. The "check" section after the table states the two
targets: infcomp ≥ 0.3x torch at N = 10⁶ and infcomp ≥ 1000x Pyro at N = 10⁴.

Run with ``python bench/importance.py`` (``make bench``); ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.distributions import Normal

import infcomp as ic
from infcomp.examples.gaussian import DATA, exact_log_evidence, exact_posterior, gaussian

# isort: split
# Helpers shared by the scripts of this folder (python bench/X.py puts it on sys.path).
import common
from common import Timing, eng, measure, ratio

PRIOR_MEAN = 1.0
PRIOR_SCALE = math.sqrt(5.0)
NOISE_SCALE = math.sqrt(2.0)
X1 = 8.0
X2 = 9.0

MIN_EXPONENT = 2
# Targets checked after the table: (N, minimum ratio).
TORCH_TARGET = (10**6, 0.3)
PYRO_TARGET = (10**4, 1000.0)

# (posterior mean of z, log evidence, ESS) as Python floats.
Estimates = tuple[float, float, float]
Contender = Callable[[int], Estimates]


def run_infcomp(num_samples: int) -> Estimates:
    """infcomp: prior importance sampling, then what a user asks of the posterior."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        post = ic.importance(gaussian, DATA, num_samples=num_samples)
        return float(post.mean("z")), float(post.log_evidence), float(post.ess)


def run_torch(num_samples: int) -> Estimates:
    """The same computation written by hand in plain torch; weights summarized in float64."""
    z = Normal(PRIOR_MEAN, PRIOR_SCALE).sample((num_samples,))
    log_w = Normal(z, NOISE_SCALE).log_prob(torch.tensor(X1)) + Normal(z, NOISE_SCALE).log_prob(
        torch.tensor(X2)
    )
    log_w = log_w.to(torch.float64)
    lse = torch.logsumexp(log_w, dim=0)
    log_evidence = lse - math.log(num_samples)
    weights = torch.exp(log_w - lse)
    mean = (weights * z.to(torch.float64)).sum()
    ess = torch.exp(2 * lse - torch.logsumexp(2 * log_w, dim=0))
    return float(mean), float(log_evidence), float(ess)


def make_pyro_contender() -> Contender | None:
    """Pyro's ``Importance`` on the same model, or ``None`` when Pyro is not installed."""
    try:
        import pyro
        import pyro.distributions as pdist
        from pyro.infer import EmpiricalMarginal, Importance
    except ImportError:
        return None

    x1 = torch.tensor(X1)
    x2 = torch.tensor(X2)

    def model() -> Any:
        z = pyro.sample("z", pdist.Normal(PRIOR_MEAN, PRIOR_SCALE))
        pyro.sample("x1", pdist.Normal(z, NOISE_SCALE), obs=x1)
        pyro.sample("x2", pdist.Normal(z, NOISE_SCALE), obs=x2)
        return z

    def run_pyro(num_samples: int) -> Estimates:
        posterior = Importance(model, guide=None, num_samples=num_samples).run()
        mean = EmpiricalMarginal(posterior, sites="z").mean
        return float(mean), float(posterior.get_log_normalizer()), float(posterior.get_ESS())

    return run_pyro


def rate(timings: dict[str, Timing], name: str, num_samples: int) -> float | None:
    timing = timings.get(name)
    return None if timing is None else num_samples / timing.best


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Particles per second of prior importance sampling on the Gaussian "
        "model: infcomp vs hand-written torch vs Pyro."
    )
    parser.add_argument(
        "--max-exponent",
        type=int,
        default=7,
        help="largest N is 10**MAX_EXPONENT (default 7; smallest N is 10**2)",
    )
    parser.add_argument(
        "--pyro-max-exponent",
        type=int,
        default=4,
        help="run Pyro only up to N = 10**PYRO_MAX_EXPONENT (default 4; it loops in Python)",
    )
    parser.add_argument("--no-pyro", action="store_true", help="do not run Pyro at all")
    parser.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="seconds of timed runs per contender per N (default 1.0; at least 3 repeats "
        "unless a single run takes longer than this)",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default 0)")
    common.add_threads_argument(parser)
    args = parser.parse_args(argv)
    if args.max_exponent < MIN_EXPONENT:
        parser.error(f"--max-exponent must be at least {MIN_EXPONENT}")
    common.check_budget_and_threads(parser, args)
    return args


def check_line(label: str, value: float | None, target: float, where: str) -> str:
    if value is None:
        return f"  {label} >= {target:g} at {where}: not measured"
    verdict = "MET" if value >= target else "NOT MET"
    return f"  {label} >= {target:g} at {where}: {value:.3g} -> {verdict}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.set_threads(args.threads)
    torch.manual_seed(args.seed)

    notes: list[str] = []
    run_pyro = None
    if args.no_pyro:
        notes.append("Pyro not run (--no-pyro).")
    else:
        run_pyro = make_pyro_contender()
        if run_pyro is None:
            notes.append("Pyro is not importable: pyro column is n/a (pip install pyro-ppl).")
    pyro_missing = "n/a" if run_pyro is None else "-"

    print(
        "Prior importance sampling on z ~ N(1, √5); x1, x2 ~ N(z, √2) | x1 = 8, x2 = 9\n"
        + common.versions_line(
            None if run_pyro is None else common.pyro_version(), args.budget, per="N"
        )
    )

    header = (
        f"{'N':>9} {'infcomp/s':>11} {'torch/s':>11} {'pyro/s':>11} "
        f"{'infcomp/torch':>14} {'infcomp/pyro':>13}"
    )
    common.print_table_header(header)

    rows: dict[int, dict[str, float | None]] = {}
    last: dict[str, Timing] = {}
    for exponent in range(MIN_EXPONENT, args.max_exponent + 1):
        n = 10**exponent
        contenders: dict[str, Contender] = {"infcomp": run_infcomp, "torch": run_torch}
        if run_pyro is not None and exponent <= args.pyro_max_exponent:
            contenders["pyro"] = run_pyro
        timings = measure(contenders, n, args.budget)
        last = timings
        row = {name: rate(timings, name, n) for name in ("infcomp", "torch", "pyro")}
        rows[n] = row
        pyro_cell = eng(row["pyro"]) if row["pyro"] is not None else pyro_missing
        vs_pyro = ratio(row["infcomp"], row["pyro"])
        vs_pyro_cell = eng(vs_pyro) if vs_pyro is not None else pyro_missing
        print(
            f"{n:>9.0e} {eng(row['infcomp']):>11} {eng(row['torch']):>11} {pyro_cell:>11} "
            f"{eng(ratio(row['infcomp'], row['torch'])):>14} {vs_pyro_cell:>13}",
            flush=True,
        )

    torch_n, torch_target = TORCH_TARGET
    pyro_n, pyro_target = PYRO_TARGET
    at_torch_n = rows.get(torch_n, {})
    at_pyro_n = rows.get(pyro_n, {})
    common.print_checks(
        [
            check_line(
                "infcomp/torch",
                ratio(at_torch_n.get("infcomp"), at_torch_n.get("torch")),
                torch_target,
                f"N = {torch_n:.0e}",
            ),
            check_line(
                "infcomp/pyro",
                ratio(at_pyro_n.get("infcomp"), at_pyro_n.get("pyro")),
                pyro_target,
                f"N = {pyro_n:.0e}",
            ),
        ]
    )

    largest = 10**args.max_exponent
    exact = exact_posterior()
    print()
    print(
        f"estimates at N = {largest:.0e} (exact: mean z = {float(exact.mean):.4f}, "
        f"log Z = {exact_log_evidence():.4f}):"
    )
    for name, timing in last.items():
        if timing.estimates is not None:
            mean, log_z, ess = timing.estimates
            print(f"  {name:>8}: mean z = {mean:.4f}, log Z = {log_z:.4f}, ESS = {ess:.4g}")
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
