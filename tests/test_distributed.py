"""Data-parallel compilation: two processes under torchrun (gloo) train the network that
one process trains on the same global batches, and stay identical after every step."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import infcomp as ic
from infcomp.examples.gaussian import DATA, gaussian
from infcomp.inference.distributed import DataParallel, scaled_learning_rate

STEPS, BATCH, CHUNK, LEARNING_RATE, SEED = 100, 256, 64, 3e-3, 0
SRC = Path(__file__).resolve().parents[1] / "src"


def ess_runs(csis: ic.CSIS, runs: int = 10, particles: int = 1000) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.tensor([float(csis.run(DATA, num_particles=particles).ess) for _ in range(runs)])


def test_square_root_rule() -> None:
    assert math.isclose(scaled_learning_rate(256 * 16, 1e-3, 256), 4e-3)
    with pytest.raises(ValueError, match="global_batch_size"):
        scaled_learning_rate(0)


def test_batch_must_be_whole_chunks() -> None:
    trainer = DataParallel(ic.CSIS(gaussian), chunk_size=64)
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        trainer.train(num_steps=1, batch_size=100, progress=False)


def test_two_ranks_under_torchrun_match_one_process(tmp_path: Path) -> None:
    artifact = tmp_path / "gaussian.pt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "infcomp.distributed", "gaussian", "--num-steps", str(STEPS),
        "--batch-size", str(BATCH), "--chunk-size", str(CHUNK),
        "--learning-rate", str(LEARNING_RATE), "--seed", str(SEED),
        "--output", str(artifact), "--check-in-sync", "--report",
    ]  # fmt: skip
    environment = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    result = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Rank 1's parameters equalled rank 0's after every step (else it raised).
    assert report["world_size"] == 2 and report["checked_steps"] == STEPS

    # One process, the same seed and global batches (world size 1, in this process).
    torch.manual_seed(SEED)
    single = ic.CSIS(gaussian, learning_rate=LEARNING_RATE)
    losses = DataParallel(single, CHUNK).train(STEPS, BATCH, progress=False)
    assert math.isclose(losses[-1], report["final_loss"], rel_tol=1e-3)
    two = ic.CSIS.load(artifact, gaussian)
    # The same batches: the networks differ only by the floating-point order of the sums.
    for (name, a), b in zip(single.guide.state_dict().items(), two.guide.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-3), name

    # The ESS (of 1000 particles, 10 runs each) agrees within its Monte Carlo error, and
    # is high: the proposal is close to the exact posterior N(7.25, √(5/6)).
    ess_single, ess_two = ess_runs(single), ess_runs(two)
    error = math.sqrt(ess_single.var() / 10 + ess_two.var() / 10)
    assert abs(float(ess_single.mean() - ess_two.mean())) < 4 * error + 1e-6
    assert float(ess_two.mean()) > 800


@pytest.mark.slow
def test_ranks_agree_on_modules_grown_during_training(tmp_path: Path) -> None:
    """A site first met by one rank mid-training gets the same module on both ranks."""
    from distributed_models import rare_branch

    torch.manual_seed(SEED)
    probe_families = {f.base for f in ic.CSIS(rare_branch).network.families.values()}
    assert probe_families == {"z"}  # the probe (this seed) did not meet 'extra'
    artifact = tmp_path / "rare.pt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "infcomp.distributed", "distributed_models:rare_branch", "--num-steps", "30",
        "--batch-size", "256", "--seed", str(SEED), "--output", str(artifact),
        "--check-in-sync", "--report",
    ]  # fmt: skip
    path = os.pathsep.join([str(SRC), str(Path(__file__).parent)])
    environment = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    result = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["checked_steps"] == 30
    network = ic.CSIS.load(artifact, rare_branch).network
    assert {f.base for f in network.families.values()} == {"z", "extra"}


def test_training_on_shards_reads_them_in_turn(tmp_path: Path) -> None:
    torch.manual_seed(0)
    csis = ic.CSIS(gaussian, learning_rate=LEARNING_RATE, validation_size=0)
    csis.simulate(3000).save(tmp_path, shard_size=1000)
    trainer = DataParallel(csis)
    # 100 steps of 256 go over the 3 shards more than 8 times.
    losses = trainer.train_on_shards(tmp_path, num_steps=100, batch_size=256, progress=False)
    assert len(losses) == 100 and csis.num_steps == 100
    assert float(ess_runs(csis).mean()) > 800  # of 1000: close to N(7.25, √(5/6))


def test_shards_of_another_model_are_refused(tmp_path: Path) -> None:
    from infcomp.errors import ModelError
    from infcomp.examples.coin import coin

    torch.manual_seed(0)
    ic.CSIS(coin).simulate(200).save(tmp_path, shard_size=100)
    trainer = DataParallel(ic.CSIS(gaussian))
    with pytest.raises(ModelError, match="not of model"):
        trainer.train_on_shards(tmp_path, num_steps=1, batch_size=10, progress=False)
