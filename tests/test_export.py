"""Posterior.to_arviz: ArviZ's InferenceData, checked against ArviZ's own functions."""

import sys
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import Normal

import infcomp as ic
from infcomp import diagnostics
from infcomp.examples.gaussian import DATA, exact_posterior, gaussian

az = pytest.importorskip("arviz")


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("n", [100, 2000])
def test_khat_agrees_with_arviz_psis_on_the_same_log_weights(scale, n):
    # Log weights of a Student-t target under a Normal(0, scale) proposal (and vice versa):
    # tails from light (k < 0) to infinite variance (k > 0.5).
    generator = torch.Generator().manual_seed(n + int(10 * scale))
    x = torch.randn(n, 8, generator=generator, dtype=torch.float64) * scale
    target = torch.distributions.StudentT(3.0).log_prob(x)
    proposal = torch.distributions.Normal(0.0, scale).log_prob(x)
    log_weights = target - proposal
    ours = diagnostics.pareto_khat(log_weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about k > 0.7
        theirs = [float(az.psislw(log_weights[:, j].numpy())[1]) for j in range(8)]
    # The same estimator (Zhang & Stephens fit, the same tail, the same prior): equal to
    # rounding; the spread of k over columns is far larger than the tolerance.
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-8, atol=1e-10)
    assert float(ours.max() - ours.min()) > 1e-3


def test_to_arviz_holds_equally_weighted_draws_all_log_weights_and_the_data():
    post = ic.importance(gaussian, DATA, 20_000)
    data = post.to_arviz()
    draws = data.posterior["z"].values
    assert draws.shape == (1, 20_000)
    # Resampled draws estimate the weighted mean: within 4 Monte Carlo errors (weighted
    # estimate's error plus the resampling's, sd/sqrt(N) for systematic resampling at most).
    error = float(post.mcse("z")) + float(post.std("z")) / 20_000**0.5
    assert abs(draws.mean() - float(post.mean("z"))) < 4 * error
    assert abs(draws.mean() - float(exact_posterior().mean)) < 4 * error + 4 * float(post.mcse("z"))
    log_weights = data.sample_stats["log_weight"].values
    assert log_weights.shape == (1, 20_000)
    np.testing.assert_array_equal(log_weights[0], post.log_weights.numpy())
    source = data.sample_stats["source_particle"].values[0]
    np.testing.assert_array_equal(draws[0], post.values("z").numpy()[source])
    assert data.observed_data["x1"].values.tolist() == [8.0]  # ArviZ stores scalars as (1,)
    assert data.observed_data["x2"].values.tolist() == [9.0]
    attributes = data.posterior.attrs
    assert attributes["num_particles"] == 20_000
    assert attributes["ess"] == pytest.approx(float(post.ess))
    assert attributes["pareto_khat"] == pytest.approx(float(post.khat))
    assert attributes["log_evidence"] == pytest.approx(float(post.log_evidence))


def test_arviz_summary_plots_and_netcdf_accept_the_output(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = ic.importance(gaussian, DATA, 5000).to_arviz(num_draws=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one chain: no r_hat
        summary = az.summary(data, kind="stats")
    assert list(summary.index) == ["z"]
    assert abs(summary.loc["z", "mean"] - 7.25) < 0.3
    axes = az.plot_posterior(data, var_names=["z"])
    assert np.ravel(axes)[0].get_title() == "z"
    az.plot_trace(data)
    plt.close("all")
    data.to_netcdf(tmp_path / "posterior.nc")
    again = az.from_netcdf(tmp_path / "posterior.nc")
    np.testing.assert_array_equal(again.posterior["z"].values, data.posterior["z"].values)


def test_to_arviz_vector_sites_and_bad_arguments():
    def model():
        w = ic.sample("w", torch.distributions.Independent(Normal(torch.zeros(3), 1.0), 1))
        ic.observe("y", Normal(w.sum(-1), 1.0), value=torch.tensor(1.0))

    data = ic.importance(model, {}, 100).to_arviz(num_draws=10)
    assert data.posterior["w"].shape == (1, 10, 3)
    with pytest.raises(ValueError, match="num_draws must be a positive integer"):
        ic.importance(model, {}, 100).to_arviz(num_draws=0)


def test_to_arviz_names_the_sites_some_particles_lack(tmp_path):
    def branching():
        b = ic.sample("b", torch.distributions.Bernoulli(0.5))
        name = "a" if bool(b) else "c"
        z = ic.sample(name, Normal(0.0, 1.0))
        ic.observe("y", Normal(z, 1.0), value=torch.tensor(0.5))

    torch.manual_seed(0)
    post = ic.importance(branching, {}, 200)
    data = post.to_arviz()
    assert list(data.posterior.data_vars) == ["b"]
    assert set(data.posterior.attrs["sites_not_in_every_particle"].split(", ")) == {"a", "c"}
    data.to_netcdf(tmp_path / "post.nc")  # the attribute is a string: netCDF holds it
    plain = ic.importance(
        lambda: ic.observe("y", Normal(ic.sample("z", Normal(0, 1)), 1)), {"y": 0.5}, 50
    )
    assert plain.to_arviz().posterior.attrs["sites_not_in_every_particle"] == ""


def test_to_arviz_without_arviz_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)  # import arviz raises ImportError
    with pytest.raises(ImportError, match=r"infcomp\[arviz\]"):
        ic.importance(gaussian, DATA, 100).to_arviz()
