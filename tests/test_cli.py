"""The ``infcomp`` command line, each subcommand run as a process (``python -m infcomp``).

The artifact is compiled once for the module (a few online steps on the Gaussian): the
tests check what each command does and says, not the quality of the network.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infcomp import cli

ROOT = Path(__file__).resolve().parent.parent
MODEL = "infcomp.examples.gaussian:gaussian"


def infcomp(*args, cwd):
    """Run ``python -m infcomp ARGS`` with this tree's sources; returns the process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "infcomp", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    done = infcomp("compile", MODEL, "--steps", 20, "--batch-size", 32, "--out", "g.pt", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert "compiled infcomp.examples.gaussian:gaussian on 20 online steps" in done.stdout
    assert "validation loss" in done.stdout
    (folder / "data.json").write_text(json.dumps({"x1": 8.0, "x2": 9.0}))
    return folder


def test_compile_stores_the_model_budget_and_time_and_info_shows_them(compiled):
    saved = torch.load(compiled / "g.pt", weights_only=True)
    metadata = saved["config"]["metadata"]
    assert metadata["entry_point"] == MODEL and "20 online steps" in metadata["budget"]
    assert saved["config"]["training_seconds"] > 0
    done = infcomp("info", "g.pt", cwd=compiled)
    assert done.returncode == 0, done.stderr
    assert "format version 2" in done.stdout and f"model: {MODEL}" in done.stdout
    assert "training: 20 steps, 640 simulations" in done.stdout
    assert "latent   z" in done.stdout and "observe  x" in done.stdout


def test_infer_prints_the_posterior_and_writes_netcdf_and_a_figure(compiled):
    pytest.importorskip("arviz")
    pytest.importorskip("matplotlib")
    done = infcomp(
        "infer",
        "g.pt",
        "data.json",
        "--particles",
        500,
        "--out",
        "p.nc",
        "--plot",
        "w.png",
        cwd=compiled,
    )
    assert done.returncode == 0, done.stderr
    assert "is with 500 particles" in done.stdout and "N = 500, ESS = " in done.stdout
    import arviz

    data = arviz.from_netcdf(compiled / "p.nc")
    assert data.posterior["z"].shape == (1, 500)
    assert abs(float(data.posterior["z"].mean()) - 7.25) < 1.0
    assert (compiled / "w.png").read_bytes()[:4] == b"\x89PNG"


def test_calibrate_reports_sbc_and_coverage(compiled):
    done = infcomp(
        "calibrate",
        "g.pt",
        "--datasets",
        40,
        "--particles",
        200,
        "--bins",
        4,
        "--draws",
        39,
        cwd=compiled,
    )
    # Exit 0 when calibrated, 1 when not: with 200 reweighted particles it should pass.
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SBC of 40 data sets" in done.stdout and "cov 90%" in done.stdout


def test_bad_usage_exits_2_with_one_line(compiled):
    done = infcomp("infer", "g.pt", "data.json", "--particles", "zero", cwd=compiled)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("infcomp: error: argument --particles")


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "the following arguments are required: command"),
        (["compile", "nope", "--steps", "1"], "MODULE:FUNCTION"),
        (["compile", "no_such_module:f", "--steps", "1"], "cannot import the model's module"),
        (["compile", "infcomp.examples.gaussian:nothing", "--steps", "1"], "has no attribute"),
        (["compile", MODEL], "one of the arguments --simulations --steps is required"),
        (["info", "missing.pt"], "artifact 'missing.pt' does not exist"),
        (["infer", "g.pt", "missing.json"], "cannot read the data file"),
        (["infer", "g.pt", "bad.json"], "is not valid JSON"),
        (["infer", "g.pt", "list.json"], "must hold a JSON object"),
        (["infer", "g.pt", "wrong.json"], "'y'"),  # an unknown observation, named
        (["infer", "g.pt", "data.json", "--method", "is-or-smc"], "invalid choice"),
        (["info", "bad.json"], "cannot be read"),
        (["info", "text.pt"], "cannot be read"),  # torch.load's KeyError
        (["info", "folder"], "'folder' is a directory"),
        # Output paths and formats are checked before any training or inference.
        (["infer", "g.pt", "data.json", "--out", "nowhere/p.nc"], "'nowhere' does not exist"),
        (["infer", "g.pt", "data.json", "--plot", "nowhere/w.png"], "'nowhere' does not exist"),
        (["infer", "g.pt", "data.json", "--plot", "w.xyz"], "one of"),
        (["calibrate", "g.pt", "--plot", "sbc"], "got none"),
        (["compile", MODEL, "--steps", "1", "--out", "nowhere/x.pt"], "'nowhere' does not exist"),
        (["compile", "syntax.py:m", "--steps", "1"], "SyntaxError"),
        (["compile", "raises.py:m", "--steps", "1"], "RuntimeError: at import"),
        # The library's ValueErrors, in terms of the options.
        (["compile", MODEL, "--simulations", "1"], "needs at least 2 simulations"),
        (["compile", MODEL, "--simulations", "2.5"], "expected a positive integer (such as"),
        (["compile", MODEL, "--simulations", "1e400"], "expected a positive integer (such as"),
        (["compile", MODEL, "--steps", "0"], "expected a positive integer, got '0'"),
        (["calibrate", "g.pt", "--datasets", "1"], "--datasets must be an integer >= 2"),
        (["calibrate", "g.pt", "--bins", "1000"], "--bins = 1000"),
        (["calibrate", "g.pt", "--draws", "50"], "choose --draws = k * 10 - 1"),
        (["infer", "g.pt", "shape.json"], "'x1' has shape [2]; the model's is scalar ()"),
    ],
)
def test_each_bad_input_is_one_line_and_status_2(compiled, capsys, monkeypatch, args, message):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(compiled)
    (compiled / "bad.json").write_text("{x1: 8")
    (compiled / "list.json").write_text("[8, 9]")
    (compiled / "wrong.json").write_text('{"x1": 8, "y": 1}')
    (compiled / "shape.json").write_text('{"x1": [8, 1], "x2": 9}')
    (compiled / "text.pt").write_text("not an artifact\n")
    (compiled / "folder").mkdir(exist_ok=True)
    (compiled / "syntax.py").write_text("def m(:\n")
    (compiled / "raises.py").write_text("raise RuntimeError('at import')\n")
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("infcomp: error: ") and message in err[0]


def test_infer_with_smc_prints_the_posterior_and_plots_the_ess_trace(compiled, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(compiled)
    assert cli.main(["infer", "g.pt", "data.json", "--method", "smc", "--plot", "ess.png"]) == 0
    out = capsys.readouterr().out
    assert "smc with 1,000 particles" in out and "N = 1000, ESS = " in out
    assert (compiled / "ess.png").read_bytes()[:4] == b"\x89PNG"


def test_the_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    module, _, function = project["scripts"]["infcomp"].partition(":")
    assert (module, function) == ("infcomp.cli", "run")
    assert callable(getattr(cli, function))


def test_infer_out_without_arviz_names_the_extra_before_inferring(compiled, capsys, monkeypatch):
    monkeypatch.chdir(compiled)
    monkeypatch.setitem(sys.modules, "arviz", None)  # as if not installed
    assert cli.main(["infer", "g.pt", "data.json", "--out", "p2.nc"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing was inferred
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "pip install 'infcomp[arviz]'" in err[0]


def test_a_model_failing_when_run_is_one_line_without_python_only_advice(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "failing.py").write_text(
        "import torch, infcomp as ic\n"
        "def m():\n"
        "    ic.sample('z', torch.distributions.Normal(0.0, 1.0))\n"
        "    raise RuntimeError('the simulator broke')\n"
    )
    assert cli.main(["compile", "failing.py:m", "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RuntimeError: the simulator broke" in err[0]
    assert "traceback" not in err[0] and "on_error" not in err[0]


def test_a_model_file_is_stored_by_its_absolute_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "mine.py").write_text(
        "import torch, infcomp as ic\n"
        "def m():\n"
        "    z = ic.sample('z', torch.distributions.Normal(0.0, 1.0))\n"
        "    ic.observe('x', torch.distributions.Normal(z, 1.0))\n"
    )
    (tmp_path / "data.json").write_text('{"x": 1.0}')
    args = ["--steps", "2", "--batch-size", "8", "--out", "m.pt", "--no-progress"]
    assert cli.main(["compile", "mine.py:m", *args]) == 0
    stored = torch.load(tmp_path / "m.pt", weights_only=True)["config"]["metadata"]
    assert stored["entry_point"] == f"{tmp_path / 'mine.py'}:m"
    monkeypatch.chdir(tmp_path / "elsewhere")  # infer from another folder
    assert cli.main(["infer", "../m.pt", "../data.json", "--particles", "50"]) == 0
    assert cli.main(["info", "../m.pt"]) == 0
    out = capsys.readouterr().out
    assert "N = 50, ESS = " in out and "stored by its absolute path" in out
    assert "site families" in out


def test_the_validation_loss_shown_is_the_one_whose_parameters_are_kept():
    history = [(1, 3.0), (2, 2.0), (3, 2.5)]
    assert cli.validation_text(history, online=False).startswith("validation loss 2.0000 (the best")
    assert cli.validation_text(history, online=True).startswith("validation loss 2.5000 (the last")
    assert cli.validation_text(history, online=None) == (
        "validation loss 2.0000 (best), 2.5000 (last)"
    )
    assert cli.validation_text([], online=False) == "validation loss none"


def test_the_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["calibrate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 200)" in out and "(default: 99)" in out and "(default: 1000)" in out


def test_counts_take_the_forms_of_a_whole_number():
    # As bench/quality.py's --budgets 1e3: a float that is a whole number is a count.
    assert [cli.positive(t) for t in ("1000", "10_000", "1e3", "2.5e3", "1000.0")] == [
        1000,
        10_000,
        1000,
        2500,
        1000,
    ]


def test_the_progress_bar_is_on_unless_turned_off(capsys):
    parse = cli.parser().parse_args
    assert parse(["compile", MODEL, "--steps", "1"]).progress
    assert not parse(["compile", MODEL, "--steps", "1", "--no-progress"]).progress
    with pytest.raises(SystemExit):
        cli.main(["compile", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--progress, --no-progress show a progress bar" in out
