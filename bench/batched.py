"""Benchmark: batched inference for many data sets, data sets per second.

The model is the Gaussian with unknown mean of :mod:`infcomp.examples.gaussian`,
z ~ N(1, √5); x1, x2 ~ N(z, √2). The data sets are B = 10, 100, 1,000 pairs (x1, x2)
simulated from the model (seed ``--seed``; the first B of one pool of 1,000), each
inferred with N = 1,000 particles. Every contender returns, for every data set, the
log evidence log Ẑ, the ESS and the posterior mean of z, and is timed end to end:

* **infcomp batch, prior**: ``ic.importance_batch(gaussian, datasets, N)`` (prior as
  proposal; B × N particles in one vectorized run, with its per-data-set checks), then
  ``log_evidence``, ``ess`` and ``mean("z")``.
* **infcomp batch, CSIS**: ``csis.run_batch(datasets, N)`` with the automatic inference
  network of ``ic.CSIS(gaussian)``, *trained* before the timing (``--train-steps``
  steps of batch ``--train-batch``, 300 × 256 by default); same outputs.
* **infcomp loop**: the unbatched way, a Python loop of ``ic.importance(gaussian, d, N)``
  (prior) or ``csis.run(d, N)`` (CSIS) over the data sets, each followed by
  ``float(post.log_evidence)``, ``float(post.ess)``, ``float(post.mean("z"))``.
* **torch (hand-written)**, prior only: z of shape (N, B) from the prior,
  log w = log N(x1; z, √2) + log N(x2; z, √2), then per column (float64)
  log Ẑ = logsumexp - log N, ESS = exp(2 lse(log w) - lse(2 log w)) and the weighted mean
  of z: the practical limit of the prior case (no checks, no traces, no k̂).
* **pyro**, prior only, B ≤ ``--pyro-max-datasets`` (10): ``pyro.infer.Importance(model,
  guide=None, num_samples=N).run(x1, x2)`` per data set (Pyro has no batch of data sets;
  it also loops over the particles in Python), then ``get_log_normalizer()``,
  ``get_ESS()`` and ``EmpiricalMarginal(...).mean``.

``InferenceWarning`` (a data set far in the prior's tail gets a small ESS) is silenced
inside the timing. Method, as in ``bench/importance.py``: for each B, every contender
gets one untimed warm-up, then they are interleaved, each repeated until about
``--budget`` seconds of its runs are spent (at least 3 repeats unless one run takes
longer than the budget), and the best (minimum) time gives data sets/s = B / best time.
One torch thread by default (``--threads``; 0 keeps torch's own choice).

The target (of the issue): 1,000 data sets × 1,000 particles with the Gaussian's
automatic network (``CSIS.run_batch``) in under a second on this CPU, best of the runs;
the check section states whether it is met (that contender is timed at least 5 times).
The table also gives each contender's mean ESS/N and its errors against the exact
answers (the model is conjugate): the median and largest |log Ẑ - log p(x1, x2)| and the
largest |mean z - E[z | x1, x2]| over the data sets. Prior importance sampling is poor
for data sets in the prior's tail (ESS/N ≈ 0.4 on average), hence its large worst
cases; batched and looped runs of one estimator should agree statistically.

Run with ``python bench/batched.py``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal, Normal

import infcomp as ic
from infcomp.examples.gaussian import NOISE_VARIANCE, PRIOR_MEAN, PRIOR_VARIANCE, gaussian

# isort: split
# Helpers shared by the scripts of this folder (python bench/X.py puts it on sys.path).
import common
from common import measure

PRIOR_SCALE = math.sqrt(PRIOR_VARIANCE)
NOISE_SCALE = math.sqrt(NOISE_VARIANCE)
DATASET_SIZES = (10, 100, 1000)
NUM_SAMPLES = 1000
TRAIN_STEPS = 300
TRAIN_BATCH = 256
# Target: CSIS.run_batch on this many data sets in under this many seconds.
TARGET_DATASETS = 1000
TARGET_SECONDS = 1.0
# The target's contender is timed at least this many times, whatever the budget.
TARGET_REPEATS = 5

BATCH_PRIOR = "infcomp importance_batch"
LOOP_PRIOR = "infcomp loop: importance"
TORCH_PRIOR = "torch (hand-written)"
PYRO_PRIOR = "pyro loop: Importance"
BATCH_CSIS = "infcomp CSIS.run_batch"
LOOP_CSIS = "infcomp loop: CSIS.run"
PRIOR = "prior"
CSIS = "CSIS (trained auto network)"

# Per data set: (log evidence, ESS, posterior mean of z), each of shape (B,), float64.
Estimates = tuple[Tensor, Tensor, Tensor]
Data = dict[str, Tensor]
Contender = Callable[[Data], Estimates]


# -- the contenders ----------------------------------------------------------------------


def simulate_datasets(count: int, seed: int) -> Data:
    """``count`` pairs (x1, x2) from the model's joint."""
    generator = torch.Generator().manual_seed(seed)
    z = PRIOR_MEAN + PRIOR_SCALE * torch.randn(count, generator=generator)
    return {
        "x1": z + NOISE_SCALE * torch.randn(count, generator=generator),
        "x2": z + NOISE_SCALE * torch.randn(count, generator=generator),
    }


def exact(data: Data) -> tuple[Tensor, Tensor]:
    """Exact log p(x1, x2) and E[z | x1, x2] per data set, float64."""
    x = torch.stack([data["x1"], data["x2"]], -1).double()
    covariance = PRIOR_VARIANCE * torch.ones(2, 2, dtype=torch.float64)
    covariance += NOISE_VARIANCE * torch.eye(2, dtype=torch.float64)
    mean = torch.full((2,), PRIOR_MEAN, dtype=torch.float64)
    log_evidence = MultivariateNormal(mean, covariance).log_prob(x)
    precision = 1 / PRIOR_VARIANCE + 2 / NOISE_VARIANCE
    posterior_mean = (PRIOR_MEAN / PRIOR_VARIANCE + x.sum(-1) / NOISE_VARIANCE) / precision
    return log_evidence, posterior_mean


def batch_estimates(batch: ic.BatchPosterior) -> Estimates:
    return batch.log_evidence, batch.ess, batch.mean("z")


def posterior_estimates(posteriors: list[ic.Posterior]) -> Estimates:
    columns = [
        [float(p.log_evidence) for p in posteriors],
        [float(p.ess) for p in posteriors],
        [float(p.mean("z")) for p in posteriors],
    ]
    log_z, ess, mean = (torch.tensor(c, dtype=torch.float64) for c in columns)
    return log_z, ess, mean


def split(data: Data) -> list[Data]:
    count = data["x1"].shape[0]
    return [{"x1": data["x1"][b], "x2": data["x2"][b]} for b in range(count)]


def infcomp_batch_prior(data: Data) -> Estimates:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        return batch_estimates(ic.importance_batch(gaussian, data, NUM_SAMPLES))


def infcomp_loop_prior(data: Data) -> Estimates:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        return posterior_estimates(
            [ic.importance(gaussian, d, num_samples=NUM_SAMPLES) for d in split(data)]
        )


def csis_contenders(csis: ic.CSIS) -> tuple[Contender, Contender]:
    """(batched, loop) inference with a trained CSIS."""

    def batched(data: Data) -> Estimates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ic.InferenceWarning)
            return batch_estimates(csis.run_batch(data, NUM_SAMPLES))

    def loop(data: Data) -> Estimates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ic.InferenceWarning)
            return posterior_estimates([csis.run(d, NUM_SAMPLES) for d in split(data)])

    return batched, loop


def torch_prior(data: Data) -> Estimates:
    """Prior importance sampling for B data sets at once, hand-written: z is (N, B)."""
    count = data["x1"].shape[0]
    z = Normal(PRIOR_MEAN, PRIOR_SCALE).sample((NUM_SAMPLES, count))
    noise = Normal(z, NOISE_SCALE)
    log_w = (noise.log_prob(data["x1"]) + noise.log_prob(data["x2"])).to(torch.float64)
    lse = torch.logsumexp(log_w, dim=0)
    log_evidence = lse - math.log(NUM_SAMPLES)
    ess = torch.exp(2 * lse - torch.logsumexp(2 * log_w, dim=0))
    mean = (torch.exp(log_w - lse) * z.to(torch.float64)).sum(0)
    return log_evidence, ess, mean


def load_pyro() -> tuple[str, Contender] | None:
    """Pyro's version and its per-data-set ``Importance``, or None without Pyro."""
    try:
        import pyro
        import pyro.distributions as pdist
        from pyro.infer import EmpiricalMarginal, Importance
    except ImportError:
        return None

    def model(x1: Tensor, x2: Tensor) -> Tensor:
        z = pyro.sample("z", pdist.Normal(PRIOR_MEAN, PRIOR_SCALE))
        pyro.sample("x1", pdist.Normal(z, NOISE_SCALE), obs=x1)
        pyro.sample("x2", pdist.Normal(z, NOISE_SCALE), obs=x2)
        return z

    def run(data: Data) -> Estimates:
        columns: list[list[float]] = [[], [], []]
        for d in split(data):
            posterior = Importance(model, guide=None, num_samples=NUM_SAMPLES).run(d["x1"], d["x2"])
            columns[0].append(float(posterior.get_log_normalizer()))
            columns[1].append(float(posterior.get_ESS()))
            columns[2].append(float(EmpiricalMarginal(posterior, sites="z").mean))
        log_z, ess, mean = (torch.tensor(c, dtype=torch.float64) for c in columns)
        return log_z, ess, mean

    return pyro.__version__, run


def train_csis(steps: int, batch_size: int, seed: int) -> tuple[ic.CSIS, float]:
    """The automatic network for the Gaussian, trained; and the training time."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    csis = ic.CSIS(gaussian, validation_size=0)
    csis.train(steps, batch_size, progress=False)
    return csis, time.perf_counter() - start


# -- results -----------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    contender: str
    datasets: int
    best_seconds: float
    repeats: int
    median_log_z_error: float
    max_log_z_error: float
    max_mean_error: float
    mean_ess_fraction: float

    @property
    def datasets_per_second(self) -> float:
        return self.datasets / self.best_seconds


@dataclass
class Results:
    """What :func:`collect` measured, for printing here or in ``bench/all.py``."""

    rows: list[Row]
    pyro_version: str | None
    train_seconds: float
    train_steps: int
    train_batch: int

    def row(self, contender: str, datasets: int) -> Row | None:
        for row in self.rows:
            if row.contender == contender and row.datasets == datasets:
                return row
        return None

    def rate(self, contender: str, datasets: int) -> float | None:
        row = self.row(contender, datasets)
        return None if row is None else row.datasets_per_second

    def target(self) -> tuple[str, bool | None]:
        """The check line of the target and whether it is met (None: not measured)."""
        label = (
            f"CSIS.run_batch, {TARGET_DATASETS} data sets x {NUM_SAMPLES} particles with the "
            f"automatic network, in < {TARGET_SECONDS:g} s"
        )
        row = self.row(BATCH_CSIS, TARGET_DATASETS)
        if row is None:
            return f"  {label}: not measured", None
        met = row.best_seconds < TARGET_SECONDS
        verdict = "MET" if met else "NOT MET"
        return (
            f"  {label}: best {row.best_seconds:.3f} s of {row.repeats} runs "
            f"({torch.get_num_threads()} torch threads) -> {verdict}",
            met,
        )


def collect(
    budget: float,
    seed: int = 0,
    pyro: bool = True,
    pyro_max_datasets: int = 10,
    train_steps: int = TRAIN_STEPS,
    train_batch: int = TRAIN_BATCH,
    sizes: tuple[int, ...] = DATASET_SIZES,
    progress: Callable[[list[Row]], None] | None = None,
) -> Results:
    """Train the network, then time every contender at every B (see the docstring);
    ``progress`` gets the rows of each B as soon as they are measured."""
    kit = load_pyro() if pyro else None
    csis, train_seconds = train_csis(train_steps, train_batch, seed)
    csis_batch, csis_loop = csis_contenders(csis)
    pool = simulate_datasets(max(sizes), seed)
    torch.manual_seed(seed)
    rows: list[Row] = []
    for size in sizes:
        data = {name: value[:size] for name, value in pool.items()}
        exact_log_z, exact_mean = exact(data)
        contenders: dict[str, Contender] = {
            BATCH_PRIOR: infcomp_batch_prior,
            LOOP_PRIOR: infcomp_loop_prior,
            TORCH_PRIOR: torch_prior,
            BATCH_CSIS: csis_batch,
            LOOP_CSIS: csis_loop,
        }
        if kit is not None and size <= pyro_max_datasets:
            contenders[PYRO_PRIOR] = kit[1]
        workloads = {BATCH_CSIS: CSIS, LOOP_CSIS: CSIS}
        target = {BATCH_CSIS: TARGET_REPEATS} if size == TARGET_DATASETS else {}
        timings = measure(contenders, data, budget, target)
        group: list[Row] = []
        for name, timing in timings.items():
            assert timing.estimates is not None
            log_z, ess, mean = timing.estimates
            log_z_error = (log_z.double() - exact_log_z).abs()
            row = Row(
                workloads.get(name, PRIOR),
                name,
                size,
                timing.best,
                len(timing.times),
                float(log_z_error.median()),
                float(log_z_error.max()),
                float((mean.double() - exact_mean).abs().max()),
                float(ess.double().mean() / NUM_SAMPLES),
            )
            group.append(row)
        group.sort(key=lambda row: row.workload == CSIS)
        rows += group
        if progress is not None:
            progress(group)
    return Results(
        rows, kit[0] if kit is not None else None, train_seconds, train_steps, train_batch
    )


# -- printing ----------------------------------------------------------------------------

HEADER = (
    f"{'proposal':<28} {'contender':<25} {'B':>5} {'data sets/s':>12} {'particles/s':>12} "
    f"{'best s':>8} {'vs loop':>8} {'vs torch':>9} {'vs pyro':>8} {'ESS/N':>6} "
    f"{'med|dlogZ|':>10} {'max|dlogZ|':>10} {'max|dmean|':>10}"
)


def print_header() -> None:
    common.print_table_header(HEADER)


def print_row(row: Row, rows: list[Row]) -> None:
    """One table line; the ratios are to the other ``rows`` at the same B (vs torch and
    vs pyro: prior rows only)."""

    def rate(contender: str) -> float | None:
        for other in rows:
            if other.contender == contender and other.datasets == row.datasets:
                return other.datasets_per_second
        return None

    prior = row.workload == PRIOR
    loop = rate(LOOP_PRIOR if prior else LOOP_CSIS)
    limit = rate(TORCH_PRIOR) if prior else None
    pyro = rate(PYRO_PRIOR) if prior else None
    ours = row.datasets_per_second

    def cell(other: float | None, width: int) -> str:
        return f"{'-':>{width}}" if other is None else f"{ours / other:>{width}.2f}"

    print(
        f"{row.workload:<28} {row.contender:<25} {row.datasets:>5} {ours:>12.3e} "
        f"{ours * NUM_SAMPLES:>12.3e} {row.best_seconds:>8.4f} {cell(loop, 8)} "
        f"{cell(limit, 9)} {cell(pyro, 8)} "
        f"{row.mean_ess_fraction:>6.3f} {row.median_log_z_error:>10.4f} "
        f"{row.max_log_z_error:>10.4f} {row.max_mean_error:>10.4f}",
        flush=True,
    )


def check_lines(results: Results) -> list[str]:
    line, _ = results.target()
    lines = [line]
    largest = max(row.datasets for row in results.rows)
    for batched, loop in ((BATCH_PRIOR, LOOP_PRIOR), (BATCH_CSIS, LOOP_CSIS)):
        ours, theirs = results.rate(batched, largest), results.rate(loop, largest)
        if ours is not None and theirs is not None:
            lines.append(f"  {batched} / {loop} at B = {largest}: {ours / theirs:.1f}x")
    ours, limit = results.rate(BATCH_PRIOR, largest), results.rate(TORCH_PRIOR, largest)
    if ours is not None and limit is not None:
        lines.append(f"  {BATCH_PRIOR} / {TORCH_PRIOR} at B = {largest}: {ours / limit:.2f}")
    pyro_sizes = [row.datasets for row in results.rows if row.contender == PYRO_PRIOR]
    if pyro_sizes:
        size = max(pyro_sizes)
        ours, theirs = results.rate(BATCH_PRIOR, size), results.rate(PYRO_PRIOR, size)
        assert ours is not None and theirs is not None
        lines.append(f"  {BATCH_PRIOR} / {PYRO_PRIOR} at B = {size}: {ours / theirs:.0f}x")
    for row in results.rows:
        if row.datasets == largest:
            lines.append(
                f"  accuracy at B = {largest}, {row.contender}: |log Ẑ - log p(x)| median "
                f"{row.median_log_z_error:.4f}, max {row.max_log_z_error:.4f}; mean ESS/N "
                f"{row.mean_ess_fraction:.3f}"
            )
    return lines


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Data sets per second of batched importance sampling on the Gaussian "
        "model (prior and trained CSIS network): infcomp batched vs its loop vs "
        "hand-written torch vs Pyro."
    )
    parser.add_argument("--no-pyro", action="store_true", help="do not run Pyro at all")
    parser.add_argument(
        "--pyro-max-datasets",
        type=int,
        default=10,
        help="run Pyro only up to B = this (default 10; it loops over data sets and particles)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="seconds of timed runs per contender per B (default 1.0; at least 3 repeats "
        "unless a single run takes longer than this)",
    )
    parser.add_argument(
        "--train-steps", type=int, default=TRAIN_STEPS, help="CSIS training steps (default 300)"
    )
    parser.add_argument(
        "--train-batch", type=int, default=TRAIN_BATCH, help="CSIS training batch (default 256)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data, training and runs")
    common.add_threads_argument(parser)
    args = parser.parse_args(argv)
    common.check_budget_and_threads(parser, args)
    if args.train_steps < 1 or args.train_batch < 1:
        parser.error("--train-steps and --train-batch must be positive")
    return args


def header_line(pyro: str | None, budget: float) -> str:
    return (
        f"Batched inference on z ~ N(1, √5); x1, x2 ~ N(z, √2): B data sets x N = "
        f"{NUM_SAMPLES} particles\n" + common.versions_line(pyro, budget, per="B")
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    common.set_threads(args.threads)
    print(header_line(None if args.no_pyro else common.pyro_version(), args.budget))
    print(
        f"CSIS: ic.CSIS(gaussian) (automatic network), trained {args.train_steps} steps of "
        f"batch {args.train_batch} before the timing; vs loop/torch/pyro: ratios of "
        f"data sets/s at the same B",
        flush=True,
    )
    print_header()

    def show(group: list[Row]) -> None:
        for row in group:
            print_row(row, group)

    results = collect(
        args.budget,
        args.seed,
        pyro=not args.no_pyro,
        pyro_max_datasets=args.pyro_max_datasets,
        train_steps=args.train_steps,
        train_batch=args.train_batch,
        progress=show,
    )
    print(f"\nCSIS training took {results.train_seconds:.1f} s (not in the table)")
    common.print_checks(check_lines(results))
    common.print_pyro_note(args.no_pyro, results.pyro_version)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
