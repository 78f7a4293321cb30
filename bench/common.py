"""Helpers shared by the benchmark scripts of this folder (not a benchmark itself).

Timing: :func:`measure` warms each contender up once and then times the contenders
interleaved, a run of each in turn, so that a burst of load from elsewhere hits them
alike; :func:`measure_blocks` does the same for training steps, timed in blocks of
consecutive steps of about ``BLOCK_SECONDS``. Each contender is repeated until about
``budget`` seconds of its runs are spent (:func:`planned_repeats`), and the best
(minimum) time is what the scripts report.

The rest is what every script prints alike: numbers, table headers, the check section,
the versions line, and the ``--threads`` option.

The scripts import this module as ``common``: ``python bench/X.py`` puts this folder
first on ``sys.path``, and ``bench/all.py`` inserts it.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import infcomp as ic

MIN_REPEATS = 3
# Never more than this many timed runs of one contender in one row, however fast it is.
MAX_REPEATS = 200
# Training steps are timed in blocks of consecutive steps of about this many seconds,
# sized by timing steps for about CALIBRATION_SECONDS after the warm-up.
BLOCK_SECONDS = 0.05
CALIBRATION_SECONDS = 0.05

THREADS_HELP = (
    "torch.set_num_threads for all contenders (default 1, steady on a shared "
    "machine; 0 keeps torch's own choice, one thread per core)"
)


def planned_repeats(run_seconds: float, budget: float) -> int:
    """Repeats that spend about ``budget`` seconds: at least 3, or 1-2 for a slow run."""
    if run_seconds > 2 * budget:
        return 1
    if run_seconds > budget:
        return 2
    wanted = math.ceil(budget / max(run_seconds, 1e-9))
    return min(max(wanted, MIN_REPEATS), MAX_REPEATS)


# -- whole runs --------------------------------------------------------------------------


@dataclass
class Timing:
    """The timed runs of one contender in one row, and what its last run returned."""

    repeats: int
    times: list[float] = field(default_factory=list)
    estimates: Any = None

    @property
    def best(self) -> float:
        return min(self.times)


def time_once(run: Callable[[Any], Any], argument: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    estimates = run(argument)
    return time.perf_counter() - start, estimates


def measure(
    contenders: Mapping[str, Callable[[Any], Any]],
    argument: Any,
    budget: float,
    min_repeats: dict[str, int] | None = None,
) -> dict[str, Timing]:
    """Warm up each contender once on ``argument``, then time them interleaved (at least
    ``min_repeats[name]`` times where given)."""
    timings: dict[str, Timing] = {}
    for name, run in contenders.items():
        warmup, _ = time_once(run, argument)
        repeats = planned_repeats(warmup, budget)
        timings[name] = Timing(repeats=max(repeats, (min_repeats or {}).get(name, 1)))
    for round_index in range(max(timing.repeats for timing in timings.values())):
        for name, run in contenders.items():
            timing = timings[name]
            if round_index < timing.repeats:
                elapsed, timing.estimates = time_once(run, argument)
                timing.times.append(elapsed)
    return timings


# -- blocks of training steps ------------------------------------------------------------


@dataclass
class Trainer:
    """One training contender at one batch size: a step function and its timed blocks."""

    name: str
    size: int
    step: Callable[[], object]
    steps_per_block: int = 1
    repeats: int = 0
    times: list[float] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.steps_per_block / min(self.times)


def calibrate(trainer: Trainer, budget: float) -> None:
    """After the warm-up: size the timed blocks (about BLOCK_SECONDS) and their number."""
    count = 0
    start = time.perf_counter()
    while True:
        trainer.step()
        count += 1
        elapsed = time.perf_counter() - start
        if count >= 2 and elapsed >= CALIBRATION_SECONDS:
            break
    per_step = elapsed / count
    trainer.steps_per_block = max(1, round(BLOCK_SECONDS / per_step))
    trainer.repeats = planned_repeats(per_step * trainer.steps_per_block, budget)


def time_block(trainer: Trainer) -> float:
    step = trainer.step
    start = time.perf_counter()
    for _ in range(trainer.steps_per_block):
        step()
    return time.perf_counter() - start


def measure_blocks(
    trainers: Sequence[Trainer], budget: float, warm_up: Callable[[Trainer], None]
) -> None:
    """Warm up and calibrate every trainer in turn, then time their blocks interleaved."""
    for trainer in trainers:
        warm_up(trainer)
        calibrate(trainer, budget)
    for round_index in range(max(trainer.repeats for trainer in trainers)):
        for trainer in trainers:
            if round_index < trainer.repeats:
                trainer.times.append(time_block(trainer))


# -- printing ----------------------------------------------------------------------------


def eng(value: float | None, missing: str = "-") -> str:
    """Engineering-style number, e.g. 1.23e+06; ``missing`` for a missing value."""
    return missing if value is None else f"{value:.2e}"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    return numerator / denominator


def print_table_header(header: str) -> None:
    print()
    print(header)
    print("-" * len(header))


def print_checks(lines: Iterable[str]) -> None:
    print()
    print("check (targets):")
    for line in lines:
        print(line)


def print_pyro_note(no_pyro: bool, pyro: str | None) -> None:
    """The note after the checks where Pyro's cells are n/a: why Pyro did not run."""
    if no_pyro:
        print("note: Pyro not run (--no-pyro).")
    elif pyro is None:
        print("note: Pyro is not importable: its cells are n/a (pip install pyro-ppl).")


def pyro_version() -> str | None:
    """Pyro's version, or ``None`` when Pyro is not installed."""
    try:
        import pyro
    except ImportError:
        return None
    return str(pyro.__version__)


def versions_line(pyro: str | None, budget: float, per: str, runs: str = "repeats") -> str:
    """Python, torch, infcomp (and Pyro) versions, torch threads and the timing method."""
    versions = f"torch {torch.__version__}, infcomp {ic.__version__}"
    if pyro is not None:
        versions += f", pyro {pyro}"
    return (
        f"Python {platform.python_version()}, {versions}, {torch.get_num_threads()} torch "
        f"threads; best of interleaved {runs}, ~{budget:g} s per contender per {per}"
    )


# -- torch threads -----------------------------------------------------------------------


def add_threads_argument(parser: argparse.ArgumentParser, help_text: str = THREADS_HELP) -> None:
    parser.add_argument("--threads", type=int, default=1, help=help_text)


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)``; 0 keeps torch's own choice."""
    if threads > 0:
        torch.set_num_threads(threads)


def check_budget_and_threads(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.budget <= 0:
        parser.error("--budget must be positive")
    if args.threads < 0:
        parser.error("--threads must be 0 (torch's choice) or more")
