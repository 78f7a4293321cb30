"""Seeded joint simulation in chunks, in this process or in a pool of worker processes.

A budget of N simulations is cut into chunks of a fixed size; chunk i runs with torch's
random stream seeded by ``chunk_seed(base, i)``, where ``base`` is one draw from the
global stream. The chunks are joined in their order, so the simulations are the same for
a given seed whatever the number of processes that ran them (workers send back traces,
and receive only seeds and counts). The pool of workers lives as long as its
:class:`SimulationPool`, so that a second budget does not pay the processes' start again.

Seeds are derived with SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom
number generators", OOPSLA 2014): consecutive chunk indices give unrelated seeds.
"""

from __future__ import annotations

import multiprocessing
import pickle
import warnings
import weakref
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from infcomp.errors import ModelError, VectorizationNotice
from infcomp.inference.common import check_positive_int, untouched_random_state
from infcomp.inference.particles import Job, JointBatch, OnError
from infcomp.inference.particles import _check_importable as check_importable
from infcomp.inference.simulation import JointSimulator

__all__ = ["SimulationPool", "chunk_seed", "simulate_chunks"]

_MASK = (1 << 64) - 1


def chunk_seed(base: int, index: int) -> int:
    """The seed of chunk ``index``: SplitMix64's output for state ``base + (index + 1)·γ``
    (γ = 0x9E3779B97F4A7C15), reduced to 63 bits (``torch.manual_seed``'s range).

    Example:
        >>> chunk_seed(0, 0) == chunk_seed(0, 0) != chunk_seed(0, 1)
        True
    """
    z = (base + (index + 1) * 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) >> 1


def chunk_sizes(num_simulations: int, chunk_size: int) -> list[int]:
    """``num_simulations`` cut into chunks of ``chunk_size`` (the last may be smaller)."""
    full, rest = divmod(num_simulations, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def run_chunk(simulator: JointSimulator, size: int, seed: int) -> JointBatch:
    """``size`` joint simulations from the random stream seeded with ``seed`` (the global
    stream is left as it was)."""
    with untouched_random_state():
        torch.manual_seed(seed)
        return simulator(size)


def warm_up(simulator: JointSimulator) -> None:
    """Decide, once and off the random stream, whether the model vectorizes: after this
    a chunk's simulations depend only on its seed, not on which chunk came first."""
    with untouched_random_state(), warnings.catch_warnings():
        warnings.simplefilter("ignore", VectorizationNotice)
        simulator(2)


class SimulationPool:
    """Worker processes (spawned) that each hold a copy of ``simulator`` and run chunks of
    simulations from seeds. Close it (or use it as a context manager) to stop them; it is
    also closed when garbage-collected.

    Raises:
        ModelError: the model or its arguments cannot be pickled, or its module cannot
            be imported by the workers (a model defined in an interactive session).
    """

    def __init__(self, simulator: JointSimulator, workers: int) -> None:
        self.workers = check_positive_int("workers", workers)
        self.simulator = simulator
        warm_up(simulator)  # so that the workers need not find out again
        job = self._job = simulator.engine.job
        options = (job, simulator.vectorize, simulator.prior_inflation, simulator.on_error)
        try:
            pickle.dumps(options)
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise ModelError(
                f"workers > 1 runs the model in other processes, so the model and its "
                f"arguments must be picklable (defined at module level): {error}"
            ) from error
        check_importable(job)
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=options,
        )
        self._finalizer = weakref.finalize(self, self._executor.shutdown, cancel_futures=True)

    def fits(self, simulator: JointSimulator, workers: int) -> bool:
        """Whether this pool runs ``simulator``'s job with ``workers`` processes."""
        return (
            workers == self.workers
            and simulator is self.simulator
            and simulator.engine.job is self._job
            and self._finalizer.alive
        )

    def map(self, sizes: list[int], seeds: list[int]) -> list[JointBatch]:
        """The chunks' batches, in the chunks' order."""
        try:
            futures = [
                self._executor.submit(_worker_chunk, size, seed) for size, seed in zip(sizes, seeds)
            ]
            return [future.result() for future in futures]
        except BrokenProcessPool as error:
            self.close()
            raise ModelError(
                "a simulation worker process died; a script run directly must make its "
                "calls under `if __name__ == '__main__':` (each worker imports the script "
                "again), or use workers=1"
            ) from error

    def close(self) -> None:
        """Stop the worker processes."""
        self._finalizer()

    def __enter__(self) -> SimulationPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def simulate_chunks(
    simulator: JointSimulator,
    num_simulations: int,
    chunk_size: int,
    pool: SimulationPool | None = None,
    check_first: Callable[[JointBatch], None] | None = None,
) -> list[JointBatch]:
    """``num_simulations`` joint simulations in seeded chunks of ``chunk_size``, run by
    ``pool``'s workers or (None) in this process; the same for a given global seed
    either way. One number is drawn from the global stream (the base seed).

    ``check_first`` sees the first chunk's batch before the rest of the budget is spent
    (in this process only: a pool runs the chunks at once).
    """
    num_simulations = check_positive_int("num_simulations", num_simulations)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    base = int(torch.randint(2**62, ()))
    sizes = chunk_sizes(num_simulations, chunk_size)
    seeds = [chunk_seed(base, index) for index in range(len(sizes))]
    if pool is not None:
        return pool.map(sizes, seeds)
    warm_up(simulator)
    batches = []
    for size, seed in zip(sizes, seeds):
        batches.append(run_chunk(simulator, size, seed))
        if check_first is not None and len(batches) == 1:
            check_first(batches[0])
    return batches


# -- in the worker processes ---------------------------------------------------------------

_SIMULATOR: JointSimulator | None = None


def _start_worker(job: Job, vectorize: bool | None, prior_inflation: float, on_error: Any) -> None:
    global _SIMULATOR  # one simulator per worker process
    torch.set_num_threads(1)
    on_error_value: OnError = on_error
    _SIMULATOR = JointSimulator(
        job.program, job.args, job.kwargs, vectorize, prior_inflation, on_error_value
    )
    warm_up(_SIMULATOR)


def _worker_chunk(size: int, seed: int) -> JointBatch:
    assert _SIMULATOR is not None, "the worker was not started by SimulationPool"
    return run_chunk(_SIMULATOR, size, seed)
