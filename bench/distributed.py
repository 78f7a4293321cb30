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
4. **Budget training** (``--part budget``): ``DataParallel(csis).train(num_simulations=N)``
   on the Gaussian under ``torchrun --nproc-per-node P`` for P = 1 and 2 (this script is
   each rank's program, ``--part budget-rank``; Adam's learning rate 10⁻³·√(B/256) for
   the global batch B): the wall time, from the start of
   simulation, until the validation loss (after an epoch) first reaches ``--target``
   (the exact posterior's entropy, the loss's floor, is 1.3278), with the time to
   simulate the budget given apart. The seeded chunks make the validation losses the
   same for P = 1 and 2 (to float rounding), so only the times differ.

Run ``python bench/distributed.py --part simulate --num-simulations 100000``.
The machine's load (``os.getloadavg``) is printed with each measurement: the cores are
shared, so read the numbers with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from typing import Any

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


def budget(num_simulations: int, batch_size: int, target: float, max_epochs: int) -> None:
    """``torchrun`` this script as ``--part budget-rank`` with P = 1 and 2 processes."""
    results = {}
    for processes in (1, 2):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={processes}", __file__, "--part", "budget-rank",
            "--num-simulations", str(num_simulations), "--batch-size", str(batch_size),
            "--max-epochs", str(max_epochs),
        ]  # fmt: skip
        before = load()
        start = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        result = results[processes] = json.loads(done.stdout.strip().splitlines()[-1])
        reached = [(s, v, t) for s, v, t in result["validation"] if v <= target]
        at = f"step {reached[0][0]}, {reached[0][2]:.1f} s" if reached else "not reached"
        print(
            f"{processes} process(es): simulating {result['simulate_seconds']:.1f} s, "
            f"{len(result['validation'])} epochs of {result['steps_per_epoch']} steps in "
            f"{result['seconds']:.1f} s; validation <= {target}: {at}; best "
            f"{min(v for _, v, _ in result['validation']):.4f}; CPU s by rank (with start-up) "
            f"{', '.join(f'{c:.1f}' for c in result['cpu_seconds'])}; command {wall:.1f} s "
            f"(start-up included); before: {before}, after: {load()}"
        )
    one, two = ([v for _, v, _ in results[p]["validation"]] for p in (1, 2))
    print(f"largest difference of the epochs' validation losses, 1 vs 2: "
          f"{max(abs(a - b) for a, b in zip(one, two)):.2e}")  # fmt: skip


def budget_rank(num_simulations: int, batch_size: int, max_epochs: int) -> None:
    """One rank of ``--part budget``: rank 0 prints a JSON line with the validation losses
    and the seconds (from the start of simulation) at which each was known."""
    from infcomp.examples.gaussian import gaussian
    from infcomp.inference.dataset import DatasetShare
    from infcomp.inference.distributed import (
        DataParallel,
        launched_group,
        scaled_learning_rate,
    )

    with launched_group("cpu"):
        torch.set_num_threads(1)
        torch.manual_seed(0)
        csis = ic.CSIS(gaussian, learning_rate=scaled_learning_rate(batch_size))
        trainer = DataParallel(csis)
        stamps: list[float] = []
        validation_loss = csis.dataset_loss
        simulate = trainer.simulate

        def timed_validation(dataset: ic.TraceDataset, batch_size: int = 256) -> float:
            loss = validation_loss(dataset, batch_size)
            stamps.append(time.perf_counter() - start)
            return loss

        def timed_simulation(num_simulations: int) -> DatasetShare:
            share = simulate(num_simulations)
            stamps.append(time.perf_counter() - start)
            return share

        csis.dataset_loss = timed_validation  # type: ignore[method-assign]
        trainer.simulate = timed_simulation  # type: ignore[method-assign]
        start = time.perf_counter()
        trainer.train(
            num_simulations=num_simulations,
            batch_size=batch_size,
            max_epochs=max_epochs,
            progress=False,
        )
        seconds = time.perf_counter() - start
        # Each rank's CPU time (this process's, start-up included): with P ranks sharing
        # fewer than P free cores, CPU / wall time per rank falls below 1.
        cpu: list[Any] = [time.process_time()]
        if trainer.distributed:
            cpu = [None] * trainer.world_size
            torch.distributed.all_gather_object(cpu, time.process_time())
        if trainer.rank == 0:
            history = csis.validation_history
            result = {
                "world_size": trainer.world_size,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "simulate_seconds": stamps[0],
                "steps_per_epoch": history[0][0],
                "validation": [(s, v, t) for (s, v), t in zip(history, stamps[1:])],
            }
            sys.stdout.write(json.dumps(result) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--part",
        choices=["simulate", "importance", "train", "budget", "budget-rank"],
        default="simulate",
    )
    parser.add_argument("--num-simulations", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--particles", type=int, default=4_000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--target", type=float, default=1.34, help="budget: validation loss")
    parser.add_argument("--max-epochs", type=int, default=30, help="budget")
    options = parser.parse_args()
    if options.part == "simulate":
        simulate(options.num_simulations, options.chunk_size, options.rounds)
    elif options.part == "importance":
        importance(options.particles, options.rounds)
    elif options.part == "train":
        train(options.steps, options.batch_size)
    elif options.part == "budget":
        budget(options.num_simulations, options.batch_size, options.target, options.max_epochs)
    else:
        budget_rank(options.num_simulations, options.batch_size, options.max_epochs)


if __name__ == "__main__":
    main()
