"""Data-parallel compilation: two processes under torchrun (gloo) train the network that
one process trains on the same global batches, and stay identical after every step."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import infcomp as ic
from infcomp.examples.gaussian import DATA, gaussian
from infcomp.inference.dataset import DatasetShare, TraceDataset
from infcomp.inference.distributed import DataParallel, launched_group, scaled_learning_rate

STEPS, BATCH, CHUNK, LEARNING_RATE, SEED = 100, 256, 64, 3e-3, 0
SRC = Path(__file__).resolve().parents[1] / "src"


def torchrun(
    *arguments: object, module: str = "infcomp.distributed", cwd: Path | None = None
) -> str:
    """``torchrun --standalone --nproc-per-node 2 -m MODULE ARGUMENTS`` (gloo on CPU) with
    this tree's sources and ``distributed_models`` importable; returns its stdout."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", module, *map(str, arguments),
    ]  # fmt: skip
    path = os.pathsep.join([str(SRC), str(Path(__file__).parent)])
    environment = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    result = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=300, check=False, cwd=cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def last_report(stdout: str) -> dict[str, Any]:
    """The JSON summary that rank 0 prints last (``--report``)."""
    report: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return report


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
    stdout = torchrun(
        "gaussian", "--num-steps", STEPS, "--batch-size", BATCH, "--chunk-size", CHUNK,
        "--learning-rate", LEARNING_RATE, "--seed", SEED, "--output", artifact,
        "--check-in-sync", "--report",
    )  # fmt: skip
    report = last_report(stdout)
    # Rank 1's parameters equalled rank 0's after every step (else it raised).
    assert report["world_size"] == 2 and report["checked_steps"] == STEPS
    assert report["num_simulations"] == STEPS * BATCH  # both ranks' simulations counted

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
    stdout = torchrun(
        "distributed_models:rare_branch", "--num-steps", 30, "--batch-size", 256, "--seed",
        SEED, "--output", artifact, "--check-in-sync", "--report",
    )  # fmt: skip
    report = last_report(stdout)
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


# -- training on a simulation budget ----------------------------------------------------------

#: A budget run that stops early within a few epochs: 1024 simulations (16 chunks of 64),
#: 922 for training in 15 minibatches of 64 an epoch, a short
#: parameter average and a patience of 2 epochs (with seed 0 it stops at epoch 8 of 40).
BUDGET = {
    "num_simulations": 1024,
    "batch_size": 64,
    "max_epochs": 40,
    "patience": 2,
    "average_decay": 0.9,
}
BUDGET_LEARNING_RATE = 1e-3


def z_values(batch: Any) -> torch.Tensor:
    return torch.cat([trace["z"].value for trace in batch.traces] or [torch.zeros(0)])


def test_shares_make_the_whole_datasets_split_and_minibatches() -> None:
    """Two ranks' shares (uneven: every third row and the rest), given the same
    generator, hold between them exactly the whole dataset's validation set and each of
    its minibatches."""
    torch.manual_seed(0)
    whole = ic.CSIS(gaussian).simulate(100)
    third = torch.arange(100) % 3 == 1
    parts = whole.partition(third)
    shares = [
        DatasetShare(part, torch.arange(100)[mask], total=100)
        for part, mask in zip(parts, (~third, third))
    ]
    generator = torch.Generator().manual_seed(3)
    training, validation = whole.split(0.2, generator)
    expected = [z_values(batch) for batch in training.batches(16, generator)]
    held_out, minibatches = [], []
    for share in shares:
        generator = torch.Generator().manual_seed(3)
        share_training, share_validation = share.split(0.2, generator)
        assert (len(share_training), len(share_validation)) == (80, 20)
        held_out.append(torch.cat([z_values(b) for b in share_validation.batches(7)]))
        minibatches.append([z_values(b) for b in share_training.batches(16, generator)])
    whole_held_out = torch.cat([z_values(b) for b in validation.batches(7)])
    assert torch.equal(torch.cat(held_out).sort().values, whole_held_out.sort().values)
    assert len(minibatches[0]) == len(minibatches[1]) == len(expected) == 5
    for batch, first, second in zip(expected, *minibatches, strict=True):
        assert torch.equal(torch.cat([first, second]).sort().values, batch.sort().values)


def test_budget_on_too_few_simulations_is_refused() -> None:
    trainer = DataParallel(ic.CSIS(gaussian), chunk_size=64)
    with pytest.raises(ValueError, match="world_size × chunk_size = 1 × 64"):
        trainer.train(num_simulations=50, progress=False)
    with pytest.raises(TypeError, match="needs one of num_steps="):
        trainer.train(num_steps=5, num_simulations=500, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no CUDA device"), launched_group("cuda"):
        pass
    from infcomp import cli

    out = str(tmp_path / "m.pt")
    arguments = ["compile", "infcomp.examples.gaussian:gaussian", "--steps", "1", "--out", out]
    assert cli.main([*arguments, "--device", "cuda"]) == 2


def assert_same_budget_training(single: ic.CSIS, report: dict[str, Any], artifact: Path) -> None:
    """The 2-rank run (its report and artifact) stopped at the epoch of ``single``, with
    the same validation losses and kept weights to 1e-5."""
    assert report["num_steps"] == single.num_steps  # the same stopping epoch
    for (step, loss), (step_two, loss_two) in zip(
        single.validation_history, report["validation_history"], strict=True
    ):
        assert step == step_two and math.isclose(loss, loss_two, rel_tol=1e-5)
    two = ic.CSIS.load(artifact, gaussian)
    for (name, a), b in zip(single.guide.state_dict().items(), two.guide.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-5), name


@pytest.mark.slow  # 10-16 s; the online torchrun test stays in the default suite
def test_budget_on_two_ranks_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    """Budget training on 2 ranks: the ranks' parameters, steps and validation counts are
    equal after every step and at the end (``--check-in-sync`` raises otherwise), and the
    run matches one process's on the same simulations (``DataParallel`` at world size 1:
    the same seeded chunks, split and minibatches, the Gaussian having one structure).

    Tolerance: the two runs differ only by the order of float32 sums (two half-batch
    gradients added, two half validation sums), a few units of float32's 6e-8 relative
    rounding per step; after the 120 Adam steps the measured differences were 8e-8
    (relative) in the validation losses and 1.2e-7 in the kept parameters, so 1e-5 is
    asked of both, and the stopping epoch (the number of steps) must be the same. (With
    a learning rate of 1e-2 the runs drift apart by 1e-3 within 4 epochs: Adam's
    normalized steps amplify rounding where gradients are near zero.)"""
    artifact = tmp_path / "budget.pt"
    options = [f"--{name.replace('_', '-')}={value}" for name, value in BUDGET.items()]
    stdout = torchrun(
        "gaussian", *options, "--learning-rate", BUDGET_LEARNING_RATE, "--seed", SEED,
        "--chunk-size", CHUNK, "--output", artifact, "--check-in-sync", "--report",
    )  # fmt: skip
    report = last_report(stdout)
    assert report["world_size"] == 2 and report["checked_steps"] == report["num_steps"]

    torch.manual_seed(SEED)
    single = ic.CSIS(gaussian, learning_rate=BUDGET_LEARNING_RATE)
    DataParallel(single, CHUNK).train(**BUDGET, progress=False)  # type: ignore[arg-type]
    assert len(single.validation_history) < BUDGET["max_epochs"]  # it stopped early
    assert report["num_simulations"] == single.num_simulations == BUDGET["num_simulations"]
    assert_same_budget_training(single, report, artifact)


def test_budget_on_one_rank_is_csis_budget_training() -> None:
    """At world size 1 a share is the whole dataset: training on it is CSIS.train on the
    same dataset, step for step (the same split, minibatches and kept weights)."""
    torch.manual_seed(SEED)
    share = DataParallel(ic.CSIS(gaussian), CHUNK).simulate(512)
    assert torch.equal(share.positions, torch.arange(512))
    runs = []
    for dataset in (share, TraceDataset(share.traces, share.sizes)):
        torch.manual_seed(SEED)
        csis = ic.CSIS(gaussian, learning_rate=BUDGET_LEARNING_RATE)
        csis.train(dataset=dataset, batch_size=64, max_epochs=4, progress=False)
        runs.append(csis)
    assert runs[0].validation_history == runs[1].validation_history
    for a, b in zip(runs[0].guide.parameters(), runs[1].guide.parameters()):
        assert torch.equal(a, b)


def budget_from_shards(folder: Path) -> ic.CSIS:
    """One process's budget training on the shards in ``folder`` (DataParallel, world size 1)."""
    torch.manual_seed(SEED)
    csis = ic.CSIS(gaussian, learning_rate=BUDGET_LEARNING_RATE)
    trainer = DataParallel(csis, CHUNK)
    options = {k: v for k, v in BUDGET.items() if k != "num_simulations"}
    trainer.train(dataset=trainer.read_shards(folder), **options, progress=False)  # type: ignore[arg-type]
    return csis


def test_budget_on_shards_reads_the_whole_dataset_in_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    whole = ic.CSIS(gaussian).simulate(1000)
    whole.save(tmp_path, shard_size=300)
    trainer = DataParallel(ic.CSIS(gaussian))
    share = trainer.read_shards(tmp_path)
    assert len(share) == 1000 and torch.equal(share.positions, torch.arange(1000))
    assert torch.equal(share.traces[0]["z"].value, whole.traces[0]["z"].value)
    with pytest.raises(TypeError, match="must be a DatasetShare"):
        trainer.train(dataset=whole, progress=False)  # type: ignore[arg-type]
    csis = budget_from_shards(tmp_path)
    assert len(csis.validation_history) < BUDGET["max_epochs"]


@pytest.mark.slow
def test_budget_on_shards_on_two_ranks_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    """Rank r reads shards r, r + 2, ...; the rows are numbered shard by shard, so the
    split and minibatches are one process's (tolerances as for simulated budgets)."""
    torch.manual_seed(0)
    ic.CSIS(gaussian).simulate(1024).save(tmp_path / "shards", shard_size=200)
    artifact = tmp_path / "shards.pt"
    options = [f"--{k.replace('_', '-')}={v}" for k, v in BUDGET.items() if k != "num_simulations"]
    stdout = torchrun(
        "gaussian", "--shards", tmp_path / "shards", *options, "--learning-rate",
        BUDGET_LEARNING_RATE, "--seed", SEED, "--chunk-size", CHUNK, "--output", artifact,
        "--check-in-sync", "--report",
    )  # fmt: skip
    report = last_report(stdout)
    assert report["world_size"] == 2 and report["checked_steps"] == report["num_steps"]
    single = budget_from_shards(tmp_path / "shards")
    assert_same_budget_training(single, report, artifact)


@pytest.mark.slow
def test_infcomp_compile_under_torchrun_writes_an_artifact_info_and_infer_accept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``torchrun -m infcomp compile`` trains on 2 processes; rank 0 alone prints and
    writes; ``infcomp info`` and ``infcomp infer`` take the artifact."""
    from infcomp import cli

    stdout = torchrun(
        "compile", "infcomp.examples.gaussian:gaussian", "--simulations", 1024,
        "--out", "model.pt", "--no-progress", module="infcomp", cwd=tmp_path,
    )  # fmt: skip
    assert stdout.count("compiled infcomp.examples.gaussian:gaussian") == 1
    assert "a budget of 1,024 simulations on 2 processes" in stdout
    artifact = str(tmp_path / "model.pt")
    assert cli.main(["info", artifact]) == 0
    assert "on 2 processes" in capsys.readouterr().out
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"x1": 8.0, "x2": 9.0}))
    assert cli.main(["infer", artifact, str(data), "--particles", "500"]) == 0
    assert "ESS" in capsys.readouterr().out


def test_errors_are_printed_once_under_torchrun_and_warnings_by_rank_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from infcomp.cli import UsageError, report_error

    monkeypatch.setenv("RANK", "1")  # another rank: the arguments' errors are rank 0's to print
    assert report_error("infcomp", UsageError("--steps: bad")) == 2
    assert report_error("infcomp", ValueError("device 'tpu': expected 'cpu' or 'cuda'")) == 2
    assert capsys.readouterr().err == ""
    report_error("infcomp", ic.ModelError("model 'm' raised on this rank"))  # not lost
    assert capsys.readouterr().err == "infcomp: error (rank 1): model 'm' raised on this rank\n"
    monkeypatch.setenv("RANK", "0")
    report_error("infcomp", UsageError("--steps: bad"))
    assert capsys.readouterr().err == "infcomp: error: --steps: bad\n"
    with (
        pytest.raises(ValueError, match="device 'tpu': expected 'cpu' or 'cuda'"),
        launched_group("tpu"),
    ):
        pass
    monkeypatch.setenv("WORLD_SIZE", "1")  # as under torchrun (the group's start faked)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(dist, "init_process_group", lambda backend: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with launched_group("cpu"):
            warnings.warn("every rank would print this", ic.InferenceWarning, stacklevel=1)
    assert caught == []
