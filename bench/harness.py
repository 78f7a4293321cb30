"""The benchmark harness: every script of this folder is a :class:`Section` plugged into it.

A section declares *cases*. A case is one side-by-side measurement: named contenders
(infcomp, hand-written torch, Pyro, ...) that are timed interleaved, a run of each in
turn, so that a burst of load from elsewhere hits them alike; or, for figures that are
not times (peak memory, ESS), a function that returns its values. Each case then reports
:class:`Row` s of the summary table: a workload, a unit, and which contender (or function
of the measured rates) fills the infcomp, torch and Pyro columns.

Timing: each contender is warmed up, then timed until about ``--budget`` seconds of its
runs are spent (at least 3, at most 200 repeats; 1-2 for a run longer than the budget),
and the best (minimum) time counts: the least disturbed run. A rate is the contender's
work per call (particles, traces, data sets) divided by that time. Training steps are
timed in blocks of consecutive steps of about 50 ms. One torch thread by default:
torch's multi-threaded kernels stall when other jobs busy the cores.

The section scripts import this module as ``harness`` (``python bench/X.py`` puts this
folder first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import infcomp as ic

MAX_REPEATS = 200
BLOCK_SECONDS = 0.05  # blocks of training steps last about this long
COLUMNS = ("infcomp", "torch", "pyro")

# A cell: the name of a contender (its rate), or a function of all rates of the case.
Cell = str | Callable[[dict[str, float]], float] | None


@dataclass
class Row:
    """One line of the summary table."""

    workload: str
    unit: str
    infcomp: Cell = "infcomp"
    torch: Cell = "torch"
    pyro: Cell = "pyro"
    higher_is_better: bool = True
    # (column or ratio, ">=" or "<=", threshold), e.g. ("infcomp/torch", ">=", 0.3).
    target: tuple[str, str, float] | None = None


@dataclass
class Case:
    """Contenders measured side by side, and the rows they fill."""

    rows: list[Row]
    contenders: dict[str, Callable[[], Any]] = field(default_factory=dict)
    work: float | dict[str, float] = 1.0  # units of work per call, per contender
    blocks: bool = False  # time blocks of ~50 ms of calls (training steps), not single calls
    warm_up: int = 0  # untimed calls before calibration (the first timed call plans repeats)
    min_repeats: dict[str, int] = field(default_factory=dict)
    values: Callable[[], dict[str, float]] | None = None  # for figures that are not times
    describe: Callable[[dict[str, Any]], str] | None = None  # last result of each contender


@dataclass
class Section:
    name: str
    title: str
    cases: Callable[[argparse.Namespace], Iterator[Case]]


# -- timing ------------------------------------------------------------------------------


def planned_repeats(seconds: float, budget: float) -> int:
    if seconds > 2 * budget:
        return 1
    if seconds > budget:
        return 2
    return min(max(math.ceil(budget / max(seconds, 1e-9)), 3), MAX_REPEATS)


def measure(case: Case, budget: float) -> tuple[dict[str, float], dict[str, Any]]:
    """Rates (work per second, best time) and the last result of every contender."""
    plans: dict[str, tuple[int, int]] = {}  # name -> (calls per timed block, repeats)
    last: dict[str, Any] = {}
    for name, run in case.contenders.items():
        for _ in range(case.warm_up):
            run()
        count, start = 0, time.perf_counter()
        while True:
            last[name] = run()
            count += 1
            elapsed = time.perf_counter() - start
            if not case.blocks or (count >= 2 and elapsed >= BLOCK_SECONDS):
                break
        calls = max(1, round(BLOCK_SECONDS * count / elapsed)) if case.blocks else 1
        repeats = planned_repeats(elapsed / count * calls, budget)
        plans[name] = calls, max(repeats, case.min_repeats.get(name, 1))
    best = dict.fromkeys(plans, math.inf)
    for round_index in range(max((r for _, r in plans.values()), default=0)):
        for name, run in case.contenders.items():
            calls, repeats = plans[name]
            if round_index < repeats:
                start = time.perf_counter()
                for _ in range(calls):
                    last[name] = run()
                best[name] = min(best[name], (time.perf_counter() - start) / calls)
    work = case.work
    rates = {n: (work[n] if isinstance(work, dict) else work) / t for n, t in best.items()}
    return rates, last


def cell(value: Cell, rates: dict[str, float]) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return rates.get(value)
    try:
        return value(rates)
    except KeyError:  # a contender it needs did not run
        return None


# -- results -----------------------------------------------------------------------------


@dataclass
class Result:
    section: str
    row: Row
    values: dict[str, float | None]  # column -> value
    key: str  # the infcomp figure's identity, for bench/compare.py

    def ratio(self, column: str) -> float | None:
        ours, theirs = self.values["infcomp"], self.values[column]
        return None if ours is None or theirs is None or theirs == 0 else ours / theirs

    def get(self, column: str) -> float | None:
        return self.ratio(column.split("/")[1]) if "/" in column else self.values[column]

    def verdict(self) -> str | None:
        if self.row.target is None:
            return None
        column, sign, threshold = self.row.target
        value = self.get(column)
        if value is None:
            return f"{column} {sign} {threshold:g}: not measured"
        met = value >= threshold if sign == ">=" else value <= threshold
        return f"{column} {sign} {threshold:g}: {value:.3g} -> {'MET' if met else 'NOT MET'}"


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if 1 <= abs(value) < 10:
        return f"{value:.2f}"
    if value == 0 or 0.01 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.2e}"


def table(results: list[Result], markdown: bool = False) -> str:
    head = ["section", "workload", "unit", *COLUMNS, "infcomp/torch", "infcomp/pyro"]
    lines = [
        [r.section, r.row.workload, r.row.unit]
        + [number(r.values[c]) for c in COLUMNS]
        + [number(r.ratio("torch")), number(r.ratio("pyro"))]
        for r in results
    ]
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]

    def render(line: list[str]) -> str:
        return " ".join(
            x.ljust(w) if i < 3 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths))
        ).rstrip()

    return "\n".join([render(head), "-" * (sum(widths) + len(widths) - 1), *map(render, lines)])


def run_section(section: Section, options: argparse.Namespace) -> Iterable[Result]:
    seen: set[tuple[int, str]] = set()
    for index, case in enumerate(section.cases(options)):
        torch.manual_seed(options.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-N ESS warnings, fallback notices, Pyro's
            if case.values is not None:
                rates, last = case.values(), {}
            else:
                rates, last = measure(case, options.budget)
        for row in case.rows:
            values = {c: cell(getattr(row, c), rates) for c in COLUMNS}
            # Rows that repeat one infcomp contender count once in a comparison.
            key = f"{section.name}: {row.workload} [{row.unit}]"
            if isinstance(row.infcomp, str):
                key = "" if (index, row.infcomp) in seen else key
                seen.add((index, row.infcomp))
            result = Result(section.name, row, values, key)
            cells = ", ".join(f"{c} {number(v)}" for c, v in values.items() if v is not None)
            print(f"  {row.workload} ({row.unit}): {cells}", flush=True)
            yield result
        if case.describe is not None and last:
            print(f"    {case.describe(last)}", flush=True)


# -- main --------------------------------------------------------------------------------


def versions(pyro: bool) -> str:
    line = f"Python {platform.python_version()}, torch {torch.__version__}, "
    line += f"infcomp {ic.__version__} ({Path(ic.__file__).parent})"
    if pyro:
        try:
            import pyro as pyro_module

            line += f", pyro {pyro_module.__version__}"
        except ImportError:
            line += ", Pyro not installed"
    return line


def main(sections: list[Section], budget: float = 1.0, long: bool = True) -> int:
    """Parse the options, run ``sections`` and print (or write) the summary table."""
    names = [s.name for s in sections]
    parser = argparse.ArgumentParser(description=", ".join(s.title for s in sections))
    parser.add_argument(
        "--budget", type=float, default=budget, help=f"seconds per contender per row ({budget:g})"
    )
    parser.add_argument(
        "--long",
        action=argparse.BooleanOptionalAction,
        default=long,
        help="larger sizes and more seeds (the section scripts' default)",
    )
    parser.add_argument("--only", choices=names, action="append", help="run only this section")
    parser.add_argument("--no-pyro", action="store_true", help="do not run Pyro")
    parser.add_argument("--no-peers", action="store_true", help="infcomp only (no torch, Pyro)")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed of every case")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--json", type=Path, help="write infcomp's figures as JSON here")
    options = parser.parse_args()
    if options.budget <= 0 or options.threads < 0:
        parser.error("--budget must be positive and --threads at least 0")
    options.torch = not options.no_peers
    options.pyro = not (options.no_peers or options.no_pyro)
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    header = (
        f"{versions(options.pyro)}; {torch.get_num_threads()} torch threads; best of "
        f"interleaved repeats, ~{options.budget:g} s per contender per row"
    )
    print(header, flush=True)
    started = time.perf_counter()
    results: list[Result] = []
    for section in sections:
        if options.only and section.name not in options.only:
            continue
        print(f"\n== {section.name}: {section.title} ==", flush=True)
        section_start = time.perf_counter()
        results += run_section(section, options)
        print(f"({section.name}: {time.perf_counter() - section_start:.0f} s)", flush=True)
    seconds = time.perf_counter() - started
    print("\n" + table(results))
    checks = [f"  [{r.section}] {r.row.workload}: {v}" for r in results if (v := r.verdict())]
    if checks:
        print("\ntargets:\n" + "\n".join(checks))
    print(f"\ntotal {seconds:.0f} s")
    if options.markdown:
        text = f"# infcomp benchmarks\n\n{header}\n\n{table(results, markdown=True)}\n\n"
        text += "## Targets\n\n" + "\n".join(f"- {c.strip()}" for c in checks)
        options.markdown.write_text(text + f"\n\nTotal time: {seconds:.0f} s.\n", encoding="utf-8")
    if options.json:
        figures = {
            r.key: [r.values["infcomp"], r.row.higher_is_better]
            for r in results
            if r.key and r.values["infcomp"] is not None
        }
        options.json.write_text(json.dumps({"infcomp": ic.__file__, "figures": figures}))
    return 0


def run_alone(section: Section) -> None:
    sys.exit(main([section]))
