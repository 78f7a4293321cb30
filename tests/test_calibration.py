"""Simulation-based calibration and coverage: a correct posterior passes, an
overconfident one fails, by the amounts the theory predicts.

The Gaussian's posterior is N(m(x), s) with s = √(5/6) (examples/gaussian.py), so the
exact guide is known. A guide of scale s/2 used *without reweighting* covers θ* with a
central interval of nominal level a only when |Z| < z_a / 2, i.e. with probability
2Φ(z_a / 2) - 1 (0.589 at a = 0.9): that is what the coverage must show.
"""

import math

import pytest
import torch
from torch.distributions import Normal

import infcomp as ic
from infcomp.calibration import calibrate, expected_counts_band
from infcomp.examples.gaussian import gaussian

B, N = 200, 1000
STANDARD_NORMAL = Normal(0.0, 1.0)


def exact_guide(observations, scale=1.0):
    """The Gaussian's exact posterior, its scale multiplied by ``scale``."""
    precision = 1 / 5 + 2 / 2
    mean = (1 / 5 + (observations["x1"] + observations["x2"]) / 2) / precision
    return ic.sample("z", Normal(mean, scale * precision**-0.5))


def shrunk_guide(observations):
    return exact_guide(observations, scale=0.5)


def widened_guide(observations):
    return exact_guide(observations, scale=2.0)


def unweighted_shrunk(datasets, num_particles):
    """The shrunk guide's samples taken as the posterior: all log weights equal."""
    batch = ic.importance_batch(gaussian, datasets, num_particles, guide=shrunk_guide)
    return ic.BatchPosterior(torch.zeros_like(batch.log_weights), trace=batch.trace)


def assert_coverage_near(result, expected):
    """Each level's coverage within 4 binomial standard errors of ``expected``."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    stderr = (expected * (1 - expected) / result.num_datasets).sqrt()
    deviation = (result.coverage[:, 0] - expected).abs()
    assert bool((deviation < 4 * stderr).all()), (result.coverage[:, 0], expected)


@pytest.mark.parametrize("guide", [exact_guide, widened_guide], ids=["exact", "widened"])
def test_a_correct_weighted_posterior_is_calibrated(guide):
    # A guide twice too wide, reweighted (bounded weights), is a correct posterior too.
    # (The shrunk guide reweighted is not, at N = 1000: its weights are heavy-tailed,
    # k-hat > 0.7, and the tails are missed: 95 % intervals cover about 85 %.)
    result = calibrate(gaussian, B, N, guide=guide)
    assert result.names == ["z"] and result.ranks.shape == (B, 1)
    assert bool(((result.ranks >= 0) & (result.ranks <= result.num_draws)).all())
    # Uniform ranks: the p-value is uniform, so p > 0.001 fails one seed in a thousand.
    assert float(result.p_values[0]) > 1e-3 and result.passed()
    assert_coverage_near(result, result.levels)
    assert "no latent fails" in result.summary()


def test_an_overconfident_posterior_fails_by_the_predicted_amount():
    result = calibrate(gaussian, B, N, inference=unweighted_shrunk)
    # Too narrow: the truth falls in the outer bins far more often than 1/bins.
    counts = result.histogram()[:, 0]
    _, high = expected_counts_band(B, result.num_bins, mass=0.999)
    assert counts[0] > high and counts[-1] > high
    assert float(result.p_values[0]) < 1e-6 and not result.passed()
    z = STANDARD_NORMAL.icdf((1 + torch.tensor(result.levels)) / 2)  # nominal half-widths
    predicted = (2 * STANDARD_NORMAL.cdf(z / 2) - 1).tolist()  # half as wide an interval
    assert predicted[2] == pytest.approx(0.589, abs=1e-3)
    assert_coverage_near(result, predicted)
    assert "not calibrated: z" in result.summary()


def test_prior_importance_sampling_calibrates_with_discrete_latents_too():
    # A Poisson latent: ranks with ties, broken at random, stay uniform.
    def counts():
        rate = ic.sample("rate", torch.distributions.Poisson(torch.tensor(4.0)))
        ic.observe("y", Normal(rate, 1.0))

    result = calibrate(counts, B, N)
    assert float(result.p_values[0]) > 1e-3
    # Closed intervals of a discrete latent hold their endpoints' whole mass: they cover
    # at least their level (here 0.75 at 50 %), never 4 standard errors less.
    stderr = result.coverage_stderr
    assert bool((result.coverage[:, 0] > torch.tensor(result.levels) - 4 * stderr).all())
    assert float(result.coverage[0, 0]) > 0.6


def test_the_rank_band_is_the_binomial_central_interval():
    low, high = expected_counts_band(200, 10, mass=0.99)
    # Binomial(200, 0.1): mean 20, sd sqrt(18) = 4.24; 99 % within about ±2.58 sd.
    assert low == pytest.approx(20 - 2.58 * math.sqrt(18), abs=2)
    assert high == pytest.approx(20 + 2.58 * math.sqrt(18), abs=2)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_draws = k"):
        calibrate(gaussian, 10, 10, num_draws=100)
    with pytest.raises(ValueError, match="levels must lie in"):
        calibrate(gaussian, 10, 10, levels=[0.5, 1.0])
    with pytest.raises(ValueError, match="not both"):
        calibrate(gaussian, 10, 10, guide=exact_guide, inference=unweighted_shrunk)
    with pytest.raises(ic.ModelError, match="'w' is not a latent site"):
        calibrate(gaussian, 10, 10, sites=["w"])
    with pytest.raises(ValueError, match="num_datasets"):
        calibrate(gaussian, 1, 10)


@pytest.mark.slow
def test_the_compiled_gaussian_is_calibrated():
    csis = ic.CSIS(gaussian)
    csis.train(num_steps=300, batch_size=256, progress=False)
    result = calibrate(gaussian, B, N, guide=csis)
    assert float(result.p_values[0]) > 1e-3
    assert_coverage_near(result, result.levels)


def test_the_p_value_is_the_chi_square_survival_function():
    scipy_stats = pytest.importorskip("scipy.stats")
    result = calibrate(gaussian, 50, 100, num_bins=5, num_draws=49)
    assert float(result.chi2[0]) == pytest.approx(
        scipy_stats.chisquare(result.histogram()[:, 0].numpy()).statistic
    )
    assert float(result.p_values[0]) == pytest.approx(
        scipy_stats.chi2.sf(float(result.chi2[0]), 4), rel=1e-9
    )


@pytest.mark.parametrize(
    "inference, expected_low",
    [
        (None, False),  # the exact guide
        (unweighted_shrunk, True),  # 90 % intervals cover 59 %
        ("reweighted", True),  # heavy-tailed weights miss the tails: 95 % covers ~85 %
    ],
    ids=["exact", "shrunk-unweighted", "shrunk-reweighted"],
)
def test_passed_also_checks_coverage_3_standard_errors_below_the_level(inference, expected_low):
    torch.manual_seed(3)
    if inference is None:
        result = calibrate(gaussian, B, N, guide=exact_guide)
    elif inference == "reweighted":
        result = calibrate(gaussian, B, N, guide=shrunk_guide)
    else:
        result = calibrate(gaussian, B, N, inference=inference)
    low = result.undercovered()
    threshold = torch.tensor(result.levels)[:, None] - 3 * result.coverage_stderr[:, None]
    assert torch.equal(low, result.coverage < threshold)
    assert bool(low.any()) is expected_low
    if expected_low:
        assert not result.passed() and "cover less than their level" in result.summary()
        assert "!" in result.summary()
    else:
        assert result.passed() and "!" not in result.summary()


def test_a_csis_guide_brings_its_arguments_and_explicit_ones_serve_both_sides():
    # Compiled at prior mean 5 (untrained: its heads start at the prior of the call's
    # arguments). By default the simulations use the CSIS's arguments: the true z of
    # B = 200 data sets average 5 ± √5/√200 = 0.16. With args=(1.0,), both the
    # simulations and the inference use prior mean 1 (they used to infer with 5).
    csis = ic.CSIS(gaussian, args=(5.0,))
    torch.manual_seed(0)
    default = calibrate(gaussian, B, N, guide=csis)
    assert abs(float(default.true_values.mean()) - 5.0) < 5 * math.sqrt(5 / B)
    torch.manual_seed(0)
    explicit = calibrate(gaussian, B, N, guide=csis, args=(1.0,))
    assert abs(float(explicit.true_values.mean()) - 1.0) < 5 * math.sqrt(5 / B)
    for result in (default, explicit):
        assert float(result.p_values[0]) > 1e-3
        assert_coverage_near(result, result.levels)
