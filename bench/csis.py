"""Benchmark: compiled importance sampling (CSIS), infcomp vs Pyro's ``pyro.infer.CSIS``.

The model is the Gaussian with unknown mean of :mod:`infcomp.examples.gaussian`,
z ~ N(1, √5); x1, x2 ~ N(z, √2), with data x1 = 8, x2 = 9 (posterior N(7.25, √(5/6))).
The guide is the CSIS seed notebook's: an MLP 2→10→20→10→5→2 with ReLU whose two outputs
are the mean and log-std of a Normal proposal for z, trained with Adam (lr 1e-3).
infcomp uses :class:`infcomp.examples.csis_gaussian.Guide` (it broadcasts over a leading
batch dimension, so one step is one vectorized pass and one backward) or
``SingleTraceGuide`` (the notebook's per-trace form, ``.view(1, 1)``, which infcomp
detects and calls trace by trace). Pyro gets the same per-trace guide written as in
Pyro's CSIS tutorial (``pyro.module("guide", self)``, ``pyro.sample``) and the model
written with ``obs=observations["x1"]``, ``obs=observations["x2"]``. All guides build
their network with :func:`infcomp.examples.csis_gaussian.guide_network`, so that the same
seed gives the same initial weights and a state dict fits any of them.

Three sections, one table each:

1. **Training throughput**, joint traces per second: Pyro's ``csis.step(prior_mean)``
   with ``training_batch_size=10`` (it simulates, replays and differentiates trace by
   trace in Python); infcomp's ``CSIS.step(batch_size)`` with the batch-capable guide at
   batch sizes 10 to 10⁴ and with ``SingleTraceGuide`` at 10; and, as the practical
   limit, the same training step hand-written in plain torch (draw z, x1, x2, run the
   MLP on the batch, minus the mean log q, backward, Adam). infcomp runs with
   ``validation_size=0``, so no validation cost is counted. Each contender is warmed up
   (probe runs, the trace-by-trace fallback of ``SingleTraceGuide`` and its once-only
   notice, Adam's lazily created state) and then timed in blocks of consecutive steps of
   about 50 ms; traces/s is batch size × steps in a block / best block time. The target
   (of the issue): infcomp with the batch-capable guide at ≥ 50× Pyro's traces/s.
2. **Inference throughput**, samples per second, with a *trained* guide: the
   batch-capable guide trained by infcomp with the seed notebook's settings
   (``compile_gaussian(seed=--seed)``: 2,000 steps of batch 10), its weights then copied
   into Pyro's guide, so that both libraries sample the same proposal (their ESS and
   posterior means must then agree). infcomp runs ``csis.run(DATA, num_samples=N)`` and
   asks the posterior for ``ess`` and ``mean("z")`` (``InferenceWarning`` silenced inside
   the timing); Pyro runs ``CSIS(..., num_inference_samples=N).run(prior_mean,
   observations=DATA)``, then ``get_ESS()`` and ``EmpiricalMarginal(posterior, "z").mean``,
   as its tutorial does (no ``torch.no_grad``). Each is timed end to end. Pyro loops over
   the samples in Python (about 1,500/s), so it is run only up to N = 10⁴.
3. **Quality** with the seed notebook's settings, for training seeds 0..S-1
   (``--seeds``): infcomp trains the batch-capable guide with
   ``compile_gaussian(seed=s)`` (2,000 steps of batch 10, Adam 1e-3, with its default
   validation batch of 256 every 100 steps); Pyro, after ``torch.manual_seed(s)`` and
   ``pyro.clear_param_store()``, takes 2,000 ``csis.step(prior_mean)`` with
   ``training_batch_size=10``. Both guides start from the same initial weights. Then 20
   inference runs of 50 samples each at (8, 9): the table gives the median ESS over the
   runs, the mean over the runs of the weighted posterior mean and std of z (exact: 7.25
   and √(5/6) = 0.9129) and the training time (one run, not a best-of). The target (of
   the issue): median ESS ≥ 35 of 50. ``--no-quality`` skips this section (Pyro's
   training takes about 15 s a seed).

Method, as in ``bench/importance.py``: contenders are interleaved (a block or run of each
in turn) so that a burst of load from elsewhere hits them alike, each repeated until
about ``--budget`` seconds of its runs are spent (at least 3 repeats unless a single run
takes longer than the budget), and the best (minimum) time is reported. All contenders
run with one torch thread by default (``--threads``; 0 keeps torch's own choice), since
torch's multi-threaded kernels stall on a busy machine.

Run with ``python bench/csis.py``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Normal

import infcomp as ic
from infcomp.examples.csis_gaussian import Guide, SingleTraceGuide, compile_gaussian, guide_network
from infcomp.examples.gaussian import DATA, exact_posterior, gaussian

# isort: split
# Helpers shared by the scripts of this folder (python bench/X.py puts it on sys.path).
import common
from common import Timing, eng, measure, ratio

PRIOR_MEAN = 1.0
PRIOR_SCALE = math.sqrt(5.0)
NOISE_SCALE = math.sqrt(2.0)
LEARNING_RATE = 1e-3

# Section 1.
PYRO_TRAINING_BATCH = 10
INFCOMP_BATCH_SIZES = (10, 100, 1000, 10000)
TORCH_BATCH_SIZES = (10, 1000)
SINGLE_TRACE_BATCH = 10
TRAINING_TARGET = 50.0
# Section 2.
INFCOMP_INFERENCE_SIZES = (10**2, 10**3, 10**4, 10**5, 10**6)
PYRO_INFERENCE_MAX = 10**4
# Section 3.
QUALITY_STEPS = 2000
QUALITY_BATCH = 10
QUALITY_RUNS = 20
QUALITY_SAMPLES = 50
ESS_TARGET = 35.0

# (ESS, weighted mean of z, weighted std of z) as Python floats.
Estimates = tuple[float, float, float]


# -- the contenders ----------------------------------------------------------------------


@dataclass
class PyroKit:
    """Pyro's side: the tutorial's model and guide, and how to run its CSIS."""

    version: str
    new_guide: Callable[[], nn.Module]
    new_csis: Callable[[nn.Module, int, int], Any]
    clear_param_store: Callable[[], None]
    empirical_moments: Callable[[Any], tuple[float, float]]
    prior_mean: Tensor


def load_pyro() -> PyroKit | None:
    """Pyro's model, guide and CSIS, or ``None`` when Pyro is not installed."""
    try:
        import pyro
        import pyro.distributions as pdist
        from pyro.infer import CSIS as PyroCSIS  # noqa: N811
        from pyro.infer import EmpiricalMarginal
        from pyro.optim import Adam
    except ImportError:
        return None

    no_data: Mapping[str, Tensor] = {"x1": torch.tensor(0.0), "x2": torch.tensor(0.0)}
    prior_scale = torch.tensor(PRIOR_SCALE)
    noise_scale = torch.tensor(NOISE_SCALE)

    def model(prior_mean: Tensor, observations: Mapping[str, Tensor] = no_data) -> Tensor:
        z = pyro.sample("z", pdist.Normal(prior_mean, prior_scale))
        pyro.sample("x1", pdist.Normal(z, noise_scale), obs=observations["x1"])
        pyro.sample("x2", pdist.Normal(z, noise_scale), obs=observations["x2"])
        return z

    class PyroGuide(nn.Module):
        """The tutorial's guide: one trace at a time, parameters registered with Pyro."""

        def __init__(self) -> None:
            super().__init__()
            self.network = guide_network()

        def forward(
            self, prior_mean: Tensor, observations: Mapping[str, Tensor] = no_data
        ) -> Tensor:
            pyro.module("guide", self)
            inputs = torch.cat(
                (observations["x1"].view(1, 1), observations["x2"].view(1, 1)), dim=1
            )
            outputs = self.network(inputs)
            return pyro.sample("z", pdist.Normal(outputs[0, 0], outputs[0, 1].exp()))

    def new_csis(guide: nn.Module, num_inference_samples: int, training_batch_size: int) -> Any:
        return PyroCSIS(
            model,
            guide,
            Adam({"lr": LEARNING_RATE}),
            num_inference_samples=num_inference_samples,
            training_batch_size=training_batch_size,
        )

    def empirical_moments(posterior: Any) -> tuple[float, float]:
        marginal = EmpiricalMarginal(posterior, sites="z")
        return marginal.mean.item(), marginal.variance.sqrt().item()

    return PyroKit(
        version=pyro.__version__,
        new_guide=PyroGuide,
        new_csis=new_csis,
        clear_param_store=pyro.clear_param_store,
        empirical_moments=empirical_moments,
        prior_mean=torch.tensor(PRIOR_MEAN),
    )


def pyro_infer(kit: PyroKit, guide: nn.Module, num_samples: int) -> Estimates:
    """Pyro: CSIS inference at the data, then its ESS and the weighted moments of z."""
    csis = kit.new_csis(guide, num_samples, PYRO_TRAINING_BATCH)
    posterior = csis.run(kit.prior_mean, observations=DATA)
    ess = float(csis.get_ESS())
    mean, std = kit.empirical_moments(posterior)
    return ess, mean, std


def infcomp_infer(csis: ic.CSIS, num_samples: int) -> Estimates:
    """infcomp: CSIS inference at the data, then its ESS and the weighted moments of z."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        post = csis.run(DATA, num_samples=num_samples)
        return float(post.ess), float(post.mean("z")), float(post.std("z"))


def torch_training_step(batch_size: int) -> Callable[[], float]:
    """The training step hand-written in plain torch: the practical limit."""
    network = guide_network()
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    prior = Normal(torch.tensor(PRIOR_MEAN), torch.tensor(PRIOR_SCALE))

    def step() -> float:
        with torch.no_grad():
            z = prior.sample((batch_size,))
            noise = Normal(z, NOISE_SCALE)
            inputs = torch.stack([noise.sample(), noise.sample()], dim=-1)
        outputs = network(inputs)
        loss = -Normal(outputs[:, 0], outputs[:, 1].exp()).log_prob(z).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


# -- timing ------------------------------------------------------------------------------


class Trainer(common.Trainer):
    """One training contender at one batch size (``size``)."""

    @property
    def traces_per_second(self) -> float:
        return self.size * self.steps_per_block / min(self.times)


def warm_up(trainer: common.Trainer) -> None:
    """One step, for the probe runs and Adam's lazily created state."""
    with warnings.catch_warnings():
        # SingleTraceGuide's once-only fallback notice belongs to the warm-up.
        warnings.simplefilter("ignore", ic.VectorizationNotice)
        trainer.step()


def measure_training(trainers: list[Trainer], budget: float) -> None:
    common.measure_blocks(trainers, budget, warm_up)


# -- formatting --------------------------------------------------------------------------


def fixed(value: float | None, digits: int, missing: str = "-") -> str:
    return missing if value is None else f"{value:.{digits}f}"


# -- the sections ------------------------------------------------------------------------


def training_section(kit: PyroKit | None, budget: float, missing: str) -> list[str]:
    """Section 1; returns its check lines."""
    print("\n1. Training throughput: joint traces per second of CSIS training steps")
    trainers: list[Trainer] = []
    if kit is not None:
        kit.clear_param_store()
        pyro_csis = kit.new_csis(kit.new_guide(), 1, PYRO_TRAINING_BATCH)
        prior_mean = kit.prior_mean
        trainers.append(
            Trainer("pyro CSIS.step", PYRO_TRAINING_BATCH, lambda: pyro_csis.step(prior_mean))
        )
    for batch_size in INFCOMP_BATCH_SIZES:
        csis = ic.CSIS(gaussian, Guide(), learning_rate=LEARNING_RATE, validation_size=0)
        trainers.append(Trainer("infcomp Guide", batch_size, _bound_step(csis, batch_size)))
    single = ic.CSIS(gaussian, SingleTraceGuide(), learning_rate=LEARNING_RATE, validation_size=0)
    trainers.append(
        Trainer(
            "infcomp SingleTraceGuide", SINGLE_TRACE_BATCH, _bound_step(single, SINGLE_TRACE_BATCH)
        )
    )
    for batch_size in TORCH_BATCH_SIZES:
        trainers.append(
            Trainer("torch (hand-written)", batch_size, torch_training_step(batch_size))
        )

    measure_training(trainers, budget)
    pyro_rate = trainers[0].traces_per_second if kit is not None else None
    common.print_table_header(
        f"{'contender':<26} {'batch':>6} {'traces/s':>10} {'ratio to pyro':>14} "
        f"{'steps/s':>9} {'ms/step':>8}"
    )
    for trainer in trainers:
        rate = trainer.traces_per_second
        steps = rate / trainer.size
        print(
            f"{trainer.name:<26} {trainer.size:>6} {eng(rate):>10} "
            f"{fixed(ratio(rate, pyro_rate), 1, missing):>14} {steps:>9.0f} {1e3 / steps:>8.3f}"
        )

    rates = {t.size: t.traces_per_second for t in trainers if t.name == "infcomp Guide"}
    torch_rates = {t.size: t.traces_per_second for t in trainers if t.name.startswith("torch")}
    lines = []
    if pyro_rate is None:
        lines.append(f"  infcomp Guide >= {TRAINING_TARGET:g}x pyro traces/s: not measured")
    else:
        met = [size for size, rate in rates.items() if rate / pyro_rate >= TRAINING_TARGET]
        ratios = ", ".join(f"{rate / pyro_rate:.1f}x at {size}" for size, rate in rates.items())
        verdict = (
            f"MET at batch size >= {min(met)}" if met else "NOT MET at any measured batch size"
        )
        lines.append(
            f"  infcomp Guide >= {TRAINING_TARGET:g}x pyro traces/s (pyro at batch "
            f"{PYRO_TRAINING_BATCH}): {ratios} -> {verdict}"
        )
        if met and min(met) != min(rates):
            lines.append(
                f"    (not at batch {min(rates)}, the seed notebook's: "
                f"{rates[min(rates)] / pyro_rate:.1f}x)"
            )
    for size, torch_rate in torch_rates.items():
        if size in rates:
            lines.append(
                f"  infcomp Guide / hand-written torch at batch {size}: "
                f"{rates[size] / torch_rate:.2f}"
            )
    return lines


def _bound_step(csis: ic.CSIS, batch_size: int) -> Callable[[], float]:
    return lambda: csis.step(batch_size)


def inference_section(kit: PyroKit | None, budget: float, seed: int, missing: str) -> list[str]:
    """Section 2; returns its check lines."""
    print("\n2. Inference throughput: samples per second of CSIS inference at (8, 9)")
    torch.manual_seed(seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        trained = compile_gaussian(QUALITY_STEPS, QUALITY_BATCH, seed=seed)
    train_seconds = time.perf_counter() - start
    print(
        f"   guide: trained by infcomp, compile_gaussian(seed={seed}) ({QUALITY_STEPS} steps of "
        f"batch {QUALITY_BATCH}, {train_seconds:.1f} s)"
        + ("; Pyro's guide gets the same weights" if kit is not None else "")
    )
    contenders: dict[str, Callable[[int], Estimates]] = {
        "infcomp": lambda n: infcomp_infer(trained, n)
    }
    if kit is not None:
        kit.clear_param_store()
        pyro_guide = kit.new_guide()
        pyro_guide.load_state_dict(trained.guide.state_dict())
        contenders["pyro"] = lambda n: pyro_infer(kit, pyro_guide, n)

    common.print_table_header(
        f"{'N':>7} {'infcomp/s':>10} {'pyro/s':>10} {'infcomp/pyro':>13} "
        f"{'ESS/N infcomp':>14} {'ESS/N pyro':>11} {'mean z infcomp':>15} {'mean z pyro':>12}"
    )
    rows: dict[int, dict[str, Timing]] = {}
    for n in INFCOMP_INFERENCE_SIZES:
        active = {
            name: run
            for name, run in contenders.items()
            if name != "pyro" or n <= PYRO_INFERENCE_MAX
        }
        timings = measure(active, n, budget)
        rows[n] = timings
        rates = {name: n / min(timing.times) for name, timing in timings.items()}
        estimates = {name: timing.estimates for name, timing in timings.items()}
        pyro_missing = missing if kit is None else "-"
        ic_est, pyro_est = estimates["infcomp"], estimates.get("pyro")
        assert ic_est is not None
        print(
            f"{n:>7.0e} {eng(rates['infcomp']):>10} {eng(rates.get('pyro'), pyro_missing):>10} "
            f"{eng(ratio(rates['infcomp'], rates.get('pyro')), pyro_missing):>13} "
            f"{ic_est[0] / n:>14.3f} "
            f"{fixed(pyro_est[0] / n if pyro_est else None, 3, pyro_missing):>11} "
            f"{ic_est[1]:>15.4f} {fixed(pyro_est[1] if pyro_est else None, 4, pyro_missing):>12}",
            flush=True,
        )

    lines = []
    largest = max(rows)
    ic_est = rows[largest]["infcomp"].estimates
    exact = exact_posterior()
    assert ic_est is not None
    lines.append(
        f"  infcomp at N = {largest:.0e}: mean z = {ic_est[1]:.4f}, std z = {ic_est[2]:.4f} "
        f"(exact {float(exact.mean):.4f}, {float(exact.stddev):.4f}), ESS/N = "
        f"{ic_est[0] / largest:.3f}"
    )
    if kit is not None:
        top = max(n for n in rows if "pyro" in rows[n])
        timings = rows[top]
        speedup = min(timings["pyro"].times) / min(timings["infcomp"].times)
        pyro_est = timings["pyro"].estimates
        ic_top = timings["infcomp"].estimates
        assert pyro_est is not None and ic_top is not None
        lines.append(
            f"  infcomp/pyro samples/s at N = {top:.0e}: {speedup:.3g}x; same proposal, "
            f"ESS/N {ic_top[0] / top:.3f} vs {pyro_est[0] / top:.3f}, mean z "
            f"{ic_top[1]:.4f} vs {pyro_est[1]:.4f}"
        )
    return lines


@dataclass
class Quality:
    """One library's result for one training seed."""

    train_seconds: float
    ess: list[float]
    means: list[float]
    stds: list[float]

    @property
    def median_ess(self) -> float:
        return statistics.median(self.ess)


def quality_runs(infer: Callable[[int], Estimates], train_seconds: float) -> Quality:
    results = [infer(QUALITY_SAMPLES) for _ in range(QUALITY_RUNS)]
    return Quality(
        train_seconds,
        [r[0] for r in results],
        [r[1] for r in results],
        [r[2] for r in results],
    )


def quality_infcomp(seed: int) -> Quality:
    start = time.perf_counter()
    csis = compile_gaussian(QUALITY_STEPS, QUALITY_BATCH, seed=seed)
    seconds = time.perf_counter() - start
    return quality_runs(lambda n: infcomp_infer(csis, n), seconds)


def quality_pyro(kit: PyroKit, seed: int) -> Quality:
    start = time.perf_counter()
    torch.manual_seed(seed)
    kit.clear_param_store()
    guide = kit.new_guide()
    csis = kit.new_csis(guide, QUALITY_SAMPLES, QUALITY_BATCH)
    for _ in range(QUALITY_STEPS):
        csis.step(kit.prior_mean)
    seconds = time.perf_counter() - start
    return quality_runs(lambda n: pyro_infer(kit, guide, n), seconds)


def same_initial_weights(kit: PyroKit, seed: int) -> bool:
    """Whether infcomp's Guide and Pyro's guide start from the same weights at ``seed``."""
    torch.manual_seed(seed)
    ours = Guide().state_dict()
    torch.manual_seed(seed)
    theirs = kit.new_guide().state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def quality_section(kit: PyroKit | None, seeds: int, missing: str) -> list[str]:
    """Section 3; returns its check lines."""
    exact = exact_posterior()
    print(
        f"\n3. Quality: {QUALITY_STEPS} steps of batch {QUALITY_BATCH} (Adam {LEARNING_RATE:g}), "
        f"then {QUALITY_RUNS} runs of {QUALITY_SAMPLES} samples at (8, 9); exact mean z = "
        f"{float(exact.mean):.4f}, std z = {float(exact.stddev):.4f}"
    )
    header = (
        f"{'seed':>4} {'library':<8} {'train s':>8} {'median ESS':>11} {'min ESS':>8} "
        f"{'mean z':>8} {'std z':>7} {f'ESS >= {ESS_TARGET:g}':>10}"
    )
    common.print_table_header(header)
    results: dict[str, list[Quality]] = {"infcomp": [], "pyro": []}
    same_init: list[bool] = []
    for seed in range(seeds):
        if kit is not None:
            same_init.append(same_initial_weights(kit, seed))
        runs: dict[str, Quality | None] = {"infcomp": quality_infcomp(seed), "pyro": None}
        if kit is not None:
            runs["pyro"] = quality_pyro(kit, seed)
        for library, quality in runs.items():
            if quality is None:
                print(f"{seed:>4} {library:<8} {missing:>8}")
                continue
            results[library].append(quality)
            verdict = "yes" if quality.median_ess >= ESS_TARGET else "NO"
            print(
                f"{seed:>4} {library:<8} {quality.train_seconds:>8.1f} "
                f"{quality.median_ess:>11.1f} {min(quality.ess):>8.1f} "
                f"{statistics.fmean(quality.means):>8.4f} {statistics.fmean(quality.stds):>7.4f} "
                f"{verdict:>10}",
                flush=True,
            )

    lines = []
    for library, qualities in results.items():
        if not qualities:
            lines.append(
                f"  {library}: median ESS >= {ESS_TARGET:g} of {QUALITY_SAMPLES}: {missing}"
            )
            continue
        good = sum(q.median_ess >= ESS_TARGET for q in qualities)
        medians = [q.median_ess for q in qualities]
        verdict = "MET" if good == len(qualities) else "NOT MET"
        lines.append(
            f"  {library}: median ESS >= {ESS_TARGET:g} of {QUALITY_SAMPLES} for {good} of "
            f"{len(qualities)} seeds (medians {min(medians):.1f}-{max(medians):.1f}; "
            f"mean z {statistics.fmean(statistics.fmean(q.means) for q in qualities):.4f}, "
            f"train {statistics.fmean(q.train_seconds for q in qualities):.1f} s/seed) "
            f"-> {verdict}"
        )
    if kit is not None and results["pyro"]:
        both = [
            seed
            for seed, (ours, theirs) in enumerate(zip(results["infcomp"], results["pyro"]))
            if ours.median_ess < ESS_TARGET and theirs.median_ess < ESS_TARGET
        ]
        lines.append(
            f"  same initial weights for both libraries: {sum(same_init)} of {len(same_init)} "
            f"seeds; seeds failing for both: {both if both else 'none'}"
            + (" (then the initial weights, not the library, are the likely cause)" if both else "")
        )
    return lines


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="CSIS on the Gaussian model: training and inference throughput and "
        "quality, infcomp vs Pyro."
    )
    parser.add_argument("--no-pyro", action="store_true", help="do not run Pyro at all")
    parser.add_argument(
        "--no-quality",
        action="store_true",
        help="skip section 3 (training per seed; Pyro's takes about 15 s a seed)",
    )
    parser.add_argument(
        "--seeds", type=int, default=5, help="training seeds 0..SEEDS-1 in section 3 (default 5)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="seconds of timed runs per contender per row in sections 1 and 2 (default 1.0; "
        "at least 3 repeats unless a single run takes longer than this)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the timing runs and of section 2's guide"
    )
    common.add_threads_argument(parser)
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error("--budget must be positive")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.threads < 0:
        parser.error("--threads must be 0 (torch's choice) or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    common.set_threads(args.threads)
    torch.manual_seed(args.seed)

    notes: list[str] = []
    kit = None
    if args.no_pyro:
        notes.append("Pyro not run (--no-pyro): its cells are n/a.")
    else:
        kit = load_pyro()
        if kit is None:
            notes.append("Pyro is not importable: its cells are n/a (pip install pyro-ppl).")
    missing = "n/a"

    print(
        "CSIS on z ~ N(1, √5); x1, x2 ~ N(z, √2) | x1 = 8, x2 = 9; guide MLP 2-10-20-10-5-2\n"
        + common.versions_line(None if kit is None else kit.version, args.budget, per="row")
    )

    checks = ["training (section 1):", *training_section(kit, args.budget, missing)]
    torch.manual_seed(args.seed)
    checks += [
        "inference (section 2):",
        *inference_section(kit, args.budget, args.seed, missing),
    ]
    if args.no_quality:
        notes.append("Section 3 (quality) skipped (--no-quality).")
    else:
        checks += ["quality (section 3):", *quality_section(kit, args.seeds, missing)]

    common.print_checks(checks)
    for note in notes:
        print(f"note: {note}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
