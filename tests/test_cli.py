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
    ],
)
def test_each_bad_input_is_one_line_and_status_2(compiled, capsys, monkeypatch, args, message):
    monkeypatch.chdir(compiled)
    (compiled / "bad.json").write_text("{x1: 8")
    (compiled / "list.json").write_text("[8, 9]")
    (compiled / "wrong.json").write_text('{"x1": 8, "y": 1}')
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
