"""Scaling out: seeded parallel simulation and data-parallel training, 1 vs 2 processes.

1. **Simulation** (``--part simulate``): N joint traces of the Marsaglia model (which does
   not vectorize: one trace at a time) with ``CSIS.simulate(N / R, workers=P)`` for P = 1
   and 2, interleaved over R rounds in one run (so that the shared machine's changing
   load hits both alike); the time to start the 2-worker pool (spawned processes) is
   measured once and given with and without. Target: ≥ 1.6× for N = 10⁵.
2. **Importance sampling** (``--part importance``): ``importance(marsaglia, DATA, 4000,
   workers=P)`` for P = 1 and 2, interleaved over R rounds; the engine keeps its worker
   pool between calls, so its start is measured once and given apart. Target: 2 workers
   faster than 1.
3. **Training** (``--part train``): online data-parallel training of the Gaussian's
   automatic network with ``torchrun --nproc-per-node P -m infcomp.distributed`` for
   P = 1 and 2 at the same global batch: traces/s of training and the steps to a target
   validation loss (see ``infcomp.inference.distributed``).

Run ``python bench/distributed.py --part simulate --num-simulations 100000``.
The machine's load (``os.getloadavg``) is printed with each measurement: the cores are
shared, so read the numbers with it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings

import torch

import infcomp as ic
from infcomp.examples.marsaglia import DATA, marsaglia


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of this process and of the processes ``pids`` so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for pid in pids:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def simulate(num_simulations: int, chunk_size: int, rounds: int) -> None:
    """Interleaved: ``rounds`` rounds, each timing ``num_simulations / rounds`` simulations
    with 1 then 2 workers, so that a change of the machine's load hits both alike."""
    torch.set_num_threads(1)
    csis = ic.CSIS(marsaglia, vectorize=False)
    share = num_simulations // rounds
    print(f"N = {share * rounds} in {rounds} rounds, chunk_size = {chunk_size}; {load()}")
    start = time.perf_counter()
    csis.simulate(2 * chunk_size, chunk_size, workers=2)  # starts the pool (2 chunks)
    pool_start = time.perf_counter() - start
    print(f"starting the 2-worker pool (and simulating 2 chunks): {pool_start:.1f} s")
    pool = csis._simulation_pool
    assert pool is not None
    pids = list(pool._executor._processes)  # type: ignore[attr-defined]
    totals = {1: 0.0, 2: 0.0}
    cpu = {1: 0.0, 2: 0.0}
    for round_ in range(rounds):
        for workers in (1, 2):
            torch.manual_seed(round_)
            start, used = time.perf_counter(), cpu_seconds(pids)
            csis.simulate(share, chunk_size, workers=workers)
            totals[workers] += time.perf_counter() - start
            cpu[workers] += cpu_seconds(pids) - used
        so_far = f"1 worker {totals[1]:.1f} s, 2 workers {totals[2]:.1f} s"
        print(f"round {round_}: {so_far} so far; {load()}")
    csis.close()
    for workers in (1, 2):
        rate = share * rounds / totals[workers]
        print(
            f"workers={workers}: {totals[workers]:.1f} s, {rate:,.0f} traces/s, "
            f"{cpu[workers]:.1f} CPU s ({cpu[workers] / totals[workers]:.2f} cores busy)"
        )
    print(
        f"speed-up: {totals[1] / totals[2]:.2f}x with the pool started, "
        f"{totals[1] / (totals[2] + pool_start):.2f}x counting its start; {load()}"
    )


def importance(num_particles: int, rounds: int) -> None:
    """Interleaved: ``rounds`` calls of ``importance`` with 1 then 2 workers."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ic.InferenceWarning)  # prior proposals: k-hat > 0.7
    print(f"N = {num_particles} particles, {rounds} rounds; {load()}")
    start = time.perf_counter()
    ic.importance(marsaglia, DATA, 2 * 64, workers=2, vectorize=False)  # starts the engine's pool
    print(f"starting the 2-worker pool: {time.perf_counter() - start:.1f} s")
    totals = {1: 0.0, 2: 0.0}
    for round_ in range(rounds):
        for workers in (1, 2):
            torch.manual_seed(round_)
            start = time.perf_counter()
            ic.importance(marsaglia, DATA, num_particles, workers=workers, vectorize=False)
            totals[workers] += time.perf_counter() - start
        print(f"round {round_}: 1 worker {totals[1]:.2f} s, 2 workers {totals[2]:.2f} s; {load()}")
    print(f"speed-up (pool started): {totals[1] / totals[2]:.2f}x; {load()}")


def train(steps: int, batch_size: int) -> None:
    for processes in (1, 2):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={processes}", "-m", "infcomp.distributed", "gaussian",
            "--num-steps", str(steps), "--batch-size", str(batch_size), "--seed", "0",
            "--report",
        ]  # fmt: skip
        print(f"{processes} process(es); {load()}")
        start = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"  wall time {time.perf_counter() - start:.1f} s (start-up included); {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["simulate", "importance", "train"], default="simulate")
    parser.add_argument("--num-simulations", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--particles", type=int, default=4_000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=512)
    options = parser.parse_args()
    if options.part == "simulate":
        simulate(options.num_simulations, options.chunk_size, options.rounds)
    elif options.part == "importance":
        importance(options.particles, options.rounds)
    else:
        train(options.steps, options.batch_size)


if __name__ == "__main__":
    main()
