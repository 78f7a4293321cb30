"""All the benchmarks in one process, with one summary table and every target's verdict.

Runs the four benchmarks of this folder with a reduced budget (by default ~0.5 s of
timed runs per contender per row instead of 1 s, importance sampling up to N = 10⁶
instead of 10⁷, one training seed for CSIS quality instead of 5), so that the whole run
takes a few minutes (at most ~6 on a 2-core machine):

1. **importance** (``bench/importance.py``): prior importance sampling on the Gaussian,
   particles/s of infcomp, hand-written torch and Pyro (Pyro up to N = 10⁴).
2. **csis** (``bench/csis.py``): CSIS training traces/s (infcomp with the batch-capable
   guide, hand-written torch, Pyro's ``CSIS.step`` at batch 10), inference samples/s
   with a trained guide, and the quality of one training seed (median ESS of 50).
3. **rws** (``bench/rws.py``): reweighted wake-sleep steps/s on the Gaussian mixture.
4. **batched** (``bench/batched.py``): data sets/s of batched importance sampling (prior
   and the trained automatic CSIS network), B = 10 to 1,000, N = 1,000.

Each section prints its rows as it measures them, with the method of its own script
(warm-up, interleaved repeats, best time; one torch thread by default). At the end one
table gives one row per measurement: section, workload, infcomp's, torch's and Pyro's
rate and the ratios infcomp/torch and infcomp/pyro; then each target of the issue and
whether it is met. ``--markdown PATH`` also writes that summary as Markdown.

The sections reuse the functions of the other scripts (imported from this folder);
``python bench/importance.py`` etc. give each benchmark in full. Run with
``python bench/all.py`` (``make bench``); ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import infcomp as ic
from infcomp.examples.gaussian import gaussian

sys.path.insert(0, str(Path(__file__).resolve().parent))

import batched as batched_bench
import common
import csis as csis_bench
import importance as importance_bench
import rws as rws_bench
from common import eng, measure, ratio

SECTIONS = ("importance", "csis", "rws", "batched")


@dataclass
class Row:
    """One measurement of the summary: rates in ``unit`` (None: not measured)."""

    section: str
    workload: str
    unit: str
    infcomp: float | None
    torch: float | None = None
    pyro: float | None = None


@dataclass
class Target:
    """One target of the issue and its verdict (None: not measured)."""

    section: str
    text: str
    met: bool | None


def fixed(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("MET" if met else "NOT MET")


# -- the sections ------------------------------------------------------------------------


def importance_section(args: argparse.Namespace) -> tuple[list[Row], list[Target]]:
    """Prior importance sampling, particles/s (see bench/importance.py)."""
    run_pyro = None if args.no_pyro else importance_bench.make_pyro_contender()
    rows: list[Row] = []
    print(f"{'N':>9} {'infcomp/s':>11} {'torch/s':>11} {'pyro/s':>11}")
    for exponent in range(importance_bench.MIN_EXPONENT, args.max_exponent + 1):
        n = 10**exponent
        contenders: dict[str, Callable[[int], Any]] = {
            "infcomp": importance_bench.run_infcomp,
            "torch": importance_bench.run_torch,
        }
        if run_pyro is not None and n <= 10**args.pyro_max_exponent:
            contenders["pyro"] = run_pyro
        timings = measure(contenders, n, args.budget)
        rates = {name: n / timing.best for name, timing in timings.items()}
        rows.append(
            Row(
                "importance",
                f"prior IS, Gaussian, N = {n:.0e}",
                "particles/s",
                rates["infcomp"],
                rates.get("torch"),
                rates.get("pyro"),
            )
        )
        print(
            f"{n:>9.0e} {eng(rates['infcomp']):>11} {eng(rates.get('torch')):>11} "
            f"{eng(rates.get('pyro')):>11}",
            flush=True,
        )

    def at(n: int) -> Row | None:
        return next((r for r in rows if r.workload.endswith(f"N = {n:.0e}")), None)

    targets = []
    torch_n, torch_target = importance_bench.TORCH_TARGET
    row = at(torch_n)
    value = ratio(row.infcomp, row.torch) if row else None
    targets.append(
        Target(
            "importance",
            f"infcomp/torch >= {torch_target:g} at N = {torch_n:.0e}: {fixed(value)}",
            None if value is None else value >= torch_target,
        )
    )
    pyro_n, pyro_target = importance_bench.PYRO_TARGET
    row = at(pyro_n)
    value = ratio(row.infcomp, row.pyro) if row else None
    targets.append(
        Target(
            "importance",
            f"infcomp/pyro >= {pyro_target:g} at N = {pyro_n:.0e}: {fixed(value)}",
            None if value is None else value >= pyro_target,
        )
    )
    return rows, targets


def csis_section(args: argparse.Namespace) -> tuple[list[Row], list[Target]]:
    """CSIS training, inference and quality (see bench/csis.py)."""
    kit = None if args.no_pyro else csis_bench.load_pyro()
    rows: list[Row] = []
    targets: list[Target] = []

    # Training throughput.
    trainers = []
    if kit is not None:
        kit.clear_param_store()
        pyro_csis = kit.new_csis(kit.new_guide(), 1, csis_bench.PYRO_TRAINING_BATCH)
        prior_mean = kit.prior_mean
        trainers.append(
            csis_bench.Trainer(
                "pyro", csis_bench.PYRO_TRAINING_BATCH, lambda: pyro_csis.step(prior_mean)
            )
        )
    for size in csis_bench.INFCOMP_BATCH_SIZES:
        trained = ic.CSIS(
            gaussian,
            csis_bench.Guide(),
            learning_rate=csis_bench.LEARNING_RATE,
            validation_size=0,
        )
        step = lambda trained=trained, size=size: trained.step(size)  # noqa: E731
        trainers.append(csis_bench.Trainer("infcomp", size, step))
    for size in csis_bench.TORCH_BATCH_SIZES:
        trainers.append(csis_bench.Trainer("torch", size, csis_bench.torch_training_step(size)))
    csis_bench.measure_training(trainers, args.budget)
    pyro_rate = trainers[0].traces_per_second if kit is not None else None
    rates = {(t.name, t.size): t.traces_per_second for t in trainers}
    print(f"{'training batch':>14} {'infcomp/s':>11} {'torch/s':>11} {'pyro/s (batch 10)':>18}")
    for size in csis_bench.INFCOMP_BATCH_SIZES:
        row = Row(
            "csis",
            f"training, Gaussian, batch {size} (pyro: batch {csis_bench.PYRO_TRAINING_BATCH})",
            "traces/s",
            rates[("infcomp", size)],
            rates.get(("torch", size)),
            pyro_rate,
        )
        rows.append(row)
        print(f"{size:>14} {eng(row.infcomp):>11} {eng(row.torch):>11} {eng(pyro_rate):>18}")
    if pyro_rate is None:
        targets.append(Target("csis", "training: infcomp >= 50x pyro traces/s", None))
    else:
        speedups = {
            size: rates[("infcomp", size)] / pyro_rate for size in csis_bench.INFCOMP_BATCH_SIZES
        }
        met = [size for size, s in speedups.items() if s >= csis_bench.TRAINING_TARGET]
        listed = ", ".join(f"{s:.1f}x at {size}" for size, s in speedups.items())
        where = f" (at batch >= {min(met)})" if met else ""
        targets.append(
            Target(
                "csis",
                f"training: infcomp Guide >= {csis_bench.TRAINING_TARGET:g}x pyro traces/s: "
                f"{listed}{where}",
                bool(met),
            )
        )

    # Inference throughput with a trained guide.
    torch.manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        compiled = csis_bench.compile_gaussian(
            csis_bench.QUALITY_STEPS, csis_bench.QUALITY_BATCH, seed=args.seed
        )
    contenders: dict[str, Callable[[int], Any]] = {
        "infcomp": lambda n: csis_bench.infcomp_infer(compiled, n)
    }
    if kit is not None:
        kit.clear_param_store()
        pyro_guide = kit.new_guide()
        pyro_guide.load_state_dict(compiled.guide.state_dict())
        contenders["pyro"] = lambda n: csis_bench.pyro_infer(kit, pyro_guide, n)
    print(f"\n{'inference N':>14} {'infcomp/s':>11} {'pyro/s':>11}")
    for n in csis_bench.INFCOMP_INFERENCE_SIZES:
        if n > 10**args.max_exponent:
            break
        active = {
            k: v for k, v in contenders.items() if k != "pyro" or n <= 10**args.pyro_max_exponent
        }
        timings = measure(active, n, args.budget)
        rates_n = {name: n / min(t.times) for name, t in timings.items()}
        rows.append(
            Row(
                "csis",
                f"inference, trained guide, N = {n:.0e}",
                "samples/s",
                rates_n["infcomp"],
                None,
                rates_n.get("pyro"),
            )
        )
        print(
            f"{n:>14.0e} {eng(rates_n['infcomp']):>11} {eng(rates_n.get('pyro')):>11}", flush=True
        )

    # Quality, for the first --seeds training seeds.
    qualities: dict[str, list[float]] = {"infcomp": [], "pyro": []}
    for seed in range(args.seeds):
        qualities["infcomp"].append(csis_bench.quality_infcomp(seed).median_ess)
        if kit is not None:
            qualities["pyro"].append(csis_bench.quality_pyro(kit, seed).median_ess)
    for library, medians in qualities.items():
        if not medians:
            continue
        good = sum(m >= csis_bench.ESS_TARGET for m in medians)
        print(f"quality {library}: median ESS of {csis_bench.QUALITY_SAMPLES} per seed {medians}")
        targets.append(
            Target(
                "csis",
                f"quality ({library}): median ESS >= {csis_bench.ESS_TARGET:g} of "
                f"{csis_bench.QUALITY_SAMPLES} for {good} of {len(medians)} seeds "
                f"(medians {', '.join(f'{m:.1f}' for m in medians)})",
                good == len(medians),
            )
        )
    return rows, targets


def rws_section(args: argparse.Namespace) -> tuple[list[Row], list[Target]]:
    """Reweighted wake-sleep steps/s (see bench/rws.py)."""
    results = rws_bench.collect(args.budget, args.seed, pyro=not args.no_pyro)
    rws_bench.print_table(results)
    for line in rws_bench.check_lines(results)[1:]:
        print(line)
    rows = []
    for size in rws_bench.MINIBATCH_SIZES:
        limit = results.rate(rws_bench.TORCH, size)
        pyro = results.rate(rws_bench.PYRO, size)
        for name, label in (
            (rws_bench.INFCOMP, "MLP guide"),
            (rws_bench.INFCOMP_AUTO, "auto network"),
        ):
            rows.append(
                Row(
                    "rws",
                    f"mixture, {label}, minibatch {size}, K = {rws_bench.NUM_PARTICLES}",
                    "steps/s",
                    results.rate(name, size),
                    limit,
                    pyro,
                )
            )
    speedups = {}
    for size in rws_bench.MINIBATCH_SIZES:
        value = ratio(results.rate(rws_bench.INFCOMP, size), results.rate(rws_bench.PYRO, size))
        if value is not None:
            speedups[size] = value
    _, met = results.target()
    listed = ", ".join(f"{v:.2f}x at minibatch {size}" for size, v in speedups.items())
    where = [size for size, v in speedups.items() if v >= rws_bench.STEP_TARGET]
    text = (
        f"infcomp RWS step <= 1/{rws_bench.STEP_TARGET:g} of a vectorized Pyro RWS step "
        f"(same model and MLP guide, K = {rws_bench.NUM_PARTICLES}): {listed or 'no Pyro'}"
        + (f" (met at minibatch {', '.join(map(str, where))})" if where else "")
    )
    return rows, [Target("rws", text, met)]


def batched_section(args: argparse.Namespace) -> tuple[list[Row], list[Target]]:
    """Batched inference, data sets/s (see bench/batched.py)."""
    batched_bench.print_header()

    def show(group: list[batched_bench.Row]) -> None:
        for row in group:
            batched_bench.print_row(row, group)

    results = batched_bench.collect(args.budget, args.seed, pyro=not args.no_pyro, progress=show)
    rows = []
    for size in batched_bench.DATASET_SIZES:
        limit = results.rate(batched_bench.TORCH_PRIOR, size)
        pyro = results.rate(batched_bench.PYRO_PRIOR, size)
        n = batched_bench.NUM_SAMPLES
        rows += [
            Row(
                "batched",
                f"prior, importance_batch, B = {size}, N = {n}",
                "data sets/s",
                results.rate(batched_bench.BATCH_PRIOR, size),
                limit,
                pyro,
            ),
            Row(
                "batched",
                f"prior, loop of importance, B = {size}, N = {n}",
                "data sets/s",
                results.rate(batched_bench.LOOP_PRIOR, size),
                limit,
                pyro,
            ),
            Row(
                "batched",
                f"trained CSIS network, run_batch, B = {size}, N = {n}",
                "data sets/s",
                results.rate(batched_bench.BATCH_CSIS, size),
            ),
            Row(
                "batched",
                f"trained CSIS network, loop of run, B = {size}, N = {n}",
                "data sets/s",
                results.rate(batched_bench.LOOP_CSIS, size),
            ),
        ]
    _, met = results.target()
    row = results.row(batched_bench.BATCH_CSIS, batched_bench.TARGET_DATASETS)
    text = (
        f"CSIS.run_batch, {batched_bench.TARGET_DATASETS} data sets x "
        f"{batched_bench.NUM_SAMPLES} particles (trained auto network) in < "
        f"{batched_bench.TARGET_SECONDS:g} s: "
        + ("-" if row is None else f"best {row.best_seconds:.3f} s of {row.repeats} runs")
    )
    return rows, [Target("batched", text, met)]


# -- the summary -------------------------------------------------------------------------

COLUMNS = (
    "section",
    "workload",
    "unit",
    "infcomp",
    "torch",
    "pyro",
    "infcomp/torch",
    "infcomp/pyro",
)


def cells(row: Row) -> list[str]:
    return [
        row.section,
        row.workload,
        row.unit,
        eng(row.infcomp),
        eng(row.torch),
        eng(row.pyro),
        fixed(ratio(row.infcomp, row.torch)),
        fixed(ratio(row.infcomp, row.pyro)),
    ]


def text_table(rows: list[Row]) -> str:
    table = [list(COLUMNS)] + [cells(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    left = {0, 1, 2}

    def render(line: list[str]) -> str:
        return " ".join(
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths))
        )

    lines = [render(table[0]), "-" * (sum(widths) + len(widths) - 1)]
    lines += [render(line) for line in table[1:]]
    return "\n".join(lines)


def markdown(rows: list[Row], targets: list[Target], header: str, seconds: float) -> str:
    out = ["# infcomp benchmarks", "", header.replace("\n", "  \n"), ""]
    out.append("| " + " | ".join(COLUMNS) + " |")
    out.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(COLUMNS) - 3)) + "|")
    for row in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(row)) + " |")
    out += ["", "## Targets", "", "| section | target | verdict |", "|---|---|---|"]
    for target in targets:
        text = target.text.replace("|", "\\|")
        out.append(f"| {target.section} | {text} | {verdict(target.met)} |")
    out += ["", f"Total time: {seconds:.0f} s.", ""]
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Every benchmark (importance, csis, rws, batched) with a reduced budget, "
        "one summary table and the targets."
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.5,
        help="seconds of timed runs per contender per row (default 0.5; the scripts' own is 1)",
    )
    parser.add_argument(
        "--max-exponent",
        type=int,
        default=6,
        help="largest N of prior importance sampling and CSIS inference is 10**this (default 6)",
    )
    parser.add_argument(
        "--pyro-max-exponent",
        type=int,
        default=4,
        help="run Pyro's importance sampling only up to N = 10**this (default 4)",
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="training seeds for CSIS quality (default 1)"
    )
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        action="append",
        help="run only this section (repeatable; default: all)",
    )
    parser.add_argument("--no-pyro", action="store_true", help="do not run Pyro at all")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default 0)")
    common.add_threads_argument(
        parser, "torch.set_num_threads for all contenders (default 1; 0 keeps torch's choice)"
    )
    parser.add_argument(
        "--markdown", type=Path, default=None, help="also write the summary as Markdown here"
    )
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error("--budget must be positive")
    if args.max_exponent < importance_bench.MIN_EXPONENT:
        parser.error(f"--max-exponent must be at least {importance_bench.MIN_EXPONENT}")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.threads < 0:
        parser.error("--threads must be 0 (torch's choice) or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    common.set_threads(args.threads)
    pyro = None if args.no_pyro else common.pyro_version()
    versions = f"torch {torch.__version__}, infcomp {ic.__version__}"
    versions += f", pyro {pyro}" if pyro else ", Pyro not run"
    header = (
        f"Python {platform.python_version()}, {versions}, {torch.get_num_threads()} torch "
        f"threads; best of interleaved repeats, ~{args.budget:g} s per contender per row"
    )
    print(header, flush=True)
    runners = {
        "importance": importance_section,
        "csis": csis_section,
        "rws": rws_section,
        "batched": batched_section,
    }
    rows: list[Row] = []
    targets: list[Target] = []
    for name in SECTIONS:
        if args.only and name not in args.only:
            continue
        section_start = time.perf_counter()
        print(f"\n== {name} ==", flush=True)
        torch.manual_seed(args.seed)
        section_rows, section_targets = runners[name](args)
        rows += section_rows
        targets += section_targets
        print(f"({name}: {time.perf_counter() - section_start:.0f} s)", flush=True)

    seconds = time.perf_counter() - started
    print("\n== summary ==\n")
    print(text_table(rows))
    print("\ntargets:")
    for target in targets:
        print(f"  [{target.section}] {target.text} -> {verdict(target.met)}")
    print(f"\ntotal {seconds:.0f} s")
    if args.markdown is not None:
        args.markdown.write_text(markdown(rows, targets, header, seconds), encoding="utf-8")
        print(f"markdown summary: {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
