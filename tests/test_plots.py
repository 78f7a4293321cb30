"""The plots: each draws a figure and writes a PNG; none is imported with infcomp."""

import subprocess
import sys

import pytest
import torch
from torch.distributions import Normal

import infcomp as ic
from infcomp import plots
from infcomp.calibration import calibrate
from infcomp.examples.gaussian import DATA, gaussian

pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


def test_import_infcomp_imports_neither_matplotlib_nor_arviz():
    code = "import sys, infcomp; print(sorted({'matplotlib', 'arviz'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_weights_and_marginals_figures(tmp_path):
    post = ic.importance(gaussian, DATA, 2000)
    figure = plots.weights(post, tmp_path / "weights.png")
    left, right = figure.axes
    assert "ESS" in left.get_title() and "k-hat" in right.get_title()
    assert len(right.get_lines()) == 2  # the tail and its fit
    # The title's k-hat (with its prior) and the legend's raw fit are labelled apart.
    assert f"k-hat = {float(post.khat):.2f}" in right.get_title()
    assert "raw k = " in right.get_legend().get_texts()[1].get_text()
    assert (tmp_path / "weights.png").read_bytes()[:8] == PNG
    prior = {"z": ic.JointSimulator(gaussian)(2000).traces[0]["z"].value}
    figure = plots.marginals(post, prior, path=tmp_path / "marginals.png")
    assert figure.axes[0].get_xlabel() == "z"
    assert (tmp_path / "marginals.png").read_bytes()[:8] == PNG
    # One site by name, as summary() takes it (a name of several letters, not letters).
    two = ic.importance(
        lambda: ic.observe("y", Normal(ic.sample("z_0", Normal(0, 1)), 1)), {"y": 0.5}, 100
    )
    assert [axis.get_xlabel() for axis in plots.marginals(two, sites="z_0").axes] == ["z_0"]
    # A file name where the prior's draws go is refused, not taken for draws by site.
    for where in ("marginals.png", tmp_path / "marginals.png"):
        with pytest.raises(TypeError, match=r"marginals's prior argument .* path="):
            plots.marginals(post, where)
    with pytest.raises(TypeError, match=r"ess_trace's num_particles argument .* path="):
        plots.ess_trace([100, 40], "ess.png")


def test_loss_curve_ess_trace_and_calibration_figures(tmp_path):
    csis = ic.CSIS(gaussian, validation_size=64)
    csis.train(num_steps=20, batch_size=16, validate_every=5, progress=False)
    figure = plots.loss_curve(csis, tmp_path / "loss.png")  # path positional, as elsewhere
    assert len(figure.axes[0].get_lines()) == 3  # training, validation, best step
    with pytest.raises(ValueError, match="loss_curve needs"):
        plots.loss_curve()
    plots.ess_trace([100, 40, 100, 30], 100, [False, True, False, False], tmp_path / "ess.png")
    result = calibrate(gaussian, 40, 100, num_bins=5, num_draws=49)
    figure = result.plot(tmp_path / "sbc.png")
    assert len(figure.axes) == 2
    for name in ("loss.png", "ess.png", "sbc.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_a_weightless_posterior_has_no_tail_to_fit():
    post = ic.Posterior([ic.Trace(batch_ndim=1)], [10], torch.zeros(10))
    figure = plots.weights(post)
    assert figure.axes[1].texts[0].get_text() == "no tail to fit"
