"""The quality benchmark (bench/quality.py): a smoke run of its quick mode, and the switch
of the infcomp contender to ``CSIS.train(num_simulations=...)`` when CSIS has it."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import infcomp as ic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import quality

pytestmark = [
    pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning"),
    pytest.mark.filterwarnings("ignore::infcomp.VectorizationNotice"),
]


def test_quick_mode_runs_one_task_and_reports_every_figure(tmp_path, capsys):
    path = tmp_path / "quality.json"
    argv = ["--quick", "--tasks", "gaussian", "--no-sbi", "--budgets", "100", "--json", str(path)]
    assert quality.main(argv) == 0
    (row,) = json.loads(path.read_text())
    assert (row["task"], row["budget"]) == ("gaussian", 100)
    assert set(row["figures"]) == {"infcomp", "prior"}
    for name, figures in row["figures"].items():
        assert 0 < figures["ess"] <= 1 and 0 < figures["median_ess"] <= 1, name
        for key in ("mean_error", "std_error", "log_z_error", "infer_seconds"):
            assert math.isfinite(figures[key]), (name, key)
    assert figures["train_seconds"] is None and figures["train_steps"] is None  # the prior
    assert row["figures"]["infcomp"]["train_seconds"] > 0
    # The steps are those of CSIS.train on the same budget and seed.
    task = quality.TASKS["gaussian"]
    torch.manual_seed(0)
    csis = ic.CSIS(task.model, args=task.args, validation_size=0)
    csis.train(num_simulations=100, progress=False)
    assert row["figures"]["infcomp"]["train_steps"] == csis.num_steps
    table = capsys.readouterr().out
    assert "| gaussian | 1e2 |" in table and "infcomp ESS/N" in table


def test_several_seeds_give_the_median_and_each_seeds_figures(tmp_path, capsys):
    path = tmp_path / "quality.json"
    argv = ["--quick", "--tasks", "gaussian", "--no-sbi", "--budgets", "100"]
    assert quality.main([*argv, "--seeds", "0,1,2", "--json", str(path)]) == 0
    (row,) = json.loads(path.read_text())
    runs = row["seeds"]["infcomp"]
    assert len(runs) == 3 and len({run["ess"] for run in runs}) == 3  # three trainings
    assert row["figures"]["infcomp"]["ess"] == sorted(run["ess"] for run in runs)[1]
    cells = " ".join(quality.harness.number(run["ess"]) for run in runs)
    table = capsys.readouterr().out.split("| gaussian | 1e2 |")[1].splitlines()[0]
    assert f"[{cells.replace(' ', ', ')}]" in table
    # Each seed alone gives the figures listed for it.
    assert quality.main([*argv, "--seeds", "2", "--json", str(path)]) == 0
    (alone,) = json.loads(path.read_text())
    assert alone["figures"]["infcomp"]["ess"] == runs[2]["ess"]
    assert len(alone["seeds"]["infcomp"]) == 1


def test_bad_options_are_named(capsys):
    with pytest.raises(SystemExit):
        quality.main(["--tasks", "gaussian,nope"])
    assert "unknown task(s) ['nope']" in capsys.readouterr().err
    # Nothing to run, or a budget that is not a whole number, is an error, not an empty
    # table or a rounded budget.
    for option, value in [
        ("--budgets", "1e3,x"),
        ("--budgets", "1.5"),
        ("--seeds", ""),
        ("--seeds", ","),
    ]:
        with pytest.raises(SystemExit):
            quality.main([option, value])
        assert "expected whole numbers separated by commas" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--tasks", ""])
    assert "expected task names" in capsys.readouterr().err


def test_the_exact_answers_are_those_of_the_examples():
    data = quality.TASKS["gaussian"].observation()
    answer = quality.TASKS["gaussian"].exact(data)
    assert float(answer.mean) == pytest.approx(7.25)
    assert float(answer.std) == pytest.approx(math.sqrt(5 / 6))
    hmm = quality.TASKS["hmm"]
    answer = hmm.exact(hmm.observation())
    assert answer.mean.shape == (16,) and ((answer.mean >= 0) & (answer.mean <= 2)).all()


def test_fit_infcomp_trains_on_exactly_the_budget(monkeypatch):
    calls = []
    train = ic.CSIS.train

    def recording(self, *args, **kwargs):
        calls.append(kwargs.get("num_simulations"))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(ic.CSIS, "train", recording)
    run = quality.fit_infcomp(quality.TASKS["gaussian"], 200, seed=0)
    assert calls == [200]
    assert run(quality.TASKS["gaussian"].observation(), 10).num_particles == 10


@pytest.mark.slow  # sbi's training: tens of seconds
def test_sbi_contender_on_the_gaussian_and_slcp():
    pytest.importorskip("sbi")
    for name in ("gaussian", "slcp"):
        task = quality.TASKS[name]
        run = quality.fit_sbi(task, 500, seed=0)
        post = run(task.observation(), 300)
        assert post.num_particles == 300 and float(post.ess) > 1, name
    assert quality.fit_sbi(quality.TASKS["hmm"], 500, seed=0) is None


def test_sbi_steps_are_its_optimizer_steps(monkeypatch):
    pytest.importorskip("sbi")
    steps = 0
    step = torch.optim.Adam.step

    def counted(self, *args, **kwargs):
        nonlocal steps
        steps += 1
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counted)
    # 450 simulations: 405 for training, 2 full minibatches of 200 per epoch.
    runner = quality.fit_sbi(quality.TASKS["gaussian_linear"], 450, seed=0)
    assert runner is not None and runner.train_steps == steps > 0
