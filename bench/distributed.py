"""Scaling out: seeded parallel simulation and data-parallel training, 1 vs 2 processes.

1. **Simulation** (``--part simulate``): N joint traces of the Marsaglia model (which does
   not vectorize: one trace at a time) with ``CSIS.simulate(N, workers=P)`` for P = 1 and
   2, in one run; the 2-worker time includes starting the pool (spawned processes) and
   is also given with a pool already started. Target: ≥ 1.6× for N = 10⁵.
2. **Training** (``--part train``): online data-parallel training of the Gaussian's
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

import torch

import infcomp as ic
from infcomp.examples.marsaglia import marsaglia


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def simulate(num_simulations: int, chunk_size: int) -> None:
    torch.set_num_threads(1)
    csis = ic.CSIS(marsaglia, vectorize=False)
    print(f"N = {num_simulations}, chunk_size = {chunk_size}, {os.cpu_count()} cores; {load()}")
    times = {}
    for workers in (1, 2):
        torch.manual_seed(0)
        start = time.perf_counter()
        dataset = csis.simulate(num_simulations, chunk_size, workers=workers)
        times[workers] = time.perf_counter() - start
        print(
            f"workers={workers}: {times[workers]:.1f} s ({num_simulations / times[workers]:,.0f} "
            f"traces/s, pool start included), {len(dataset)} traces; {load()}"
        )
    torch.manual_seed(0)
    start = time.perf_counter()
    csis.simulate(num_simulations, chunk_size, workers=2)
    warm = time.perf_counter() - start
    csis.close()
    print(f"workers=2, pool already started: {warm:.1f} s; {load()}")
    print(f"speed-up: {times[1] / times[2]:.2f}x (cold pool), {times[1] / warm:.2f}x (warm pool)")


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
    parser.add_argument("--part", choices=["simulate", "train"], default="simulate")
    parser.add_argument("--num-simulations", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=2_000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=512)
    options = parser.parse_args()
    if options.part == "simulate":
        simulate(options.num_simulations, options.chunk_size)
    else:
        train(options.steps, options.batch_size)


if __name__ == "__main__":
    main()
