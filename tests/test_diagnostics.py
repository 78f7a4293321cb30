"""Tests for infcomp.diagnostics.

Tolerances are either floating-point rounding tolerances (for deterministic identities and
comparisons with an independent float64 numpy computation) or are derived from the Monte Carlo
error of the quantity being tested; each statistical test says how.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from infcomp.diagnostics import (
    MIN_ESS_FRACTION,
    _gpd_fit_zhang_stephens,
    effective_sample_size,
    khat_threshold,
    log_evidence,
    log_evidence_stderr,
    mcse_mean,
    mcse_sd,
    normalized_weights,
    pareto_khat,
    weight_problems,
    weighted_mean,
    weighted_quantile,
    weighted_variance,
)

# Deterministic float64 computations done in two different ways agree to rounding error; with
# N <= 10^4 summands the accumulated relative rounding error is far below 1e-10.
RTOL_ROUNDING = 1e-10

PRIOR_WEIGHT = 10.0  # pseudo-observations of the k-hat prior (Vehtari et al., 2024)


def tail_length(n: int) -> int:
    return math.ceil(min(0.2 * n, 3.0 * math.sqrt(n)))


def undo_khat_prior(khat: float, n: int) -> float:
    """Invert k = (M k_ZS + 10 * 0.5) / (M + 10) to recover the raw Zhang-Stephens estimate."""
    m = tail_length(n)
    return (khat * (m + PRIOR_WEIGHT) - PRIOR_WEIGHT * 0.5) / m


def gpd_sample(rng: np.random.Generator, xi: float, size: int, sigma: float = 1.0) -> np.ndarray:
    """Exact GPD(xi, sigma) draws by the inverse CDF x = sigma (U^-xi - 1) / xi."""
    u = rng.random(size)
    return sigma * (u ** (-xi) - 1.0) / xi


def random_log_weights(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Spread of several nats, so that the weights are genuinely unequal.
    return 3.0 * torch.randn(shape, generator=gen, dtype=torch.float64) - 7.0


# ----------------------------------------------------------------------------------------------
# ESS, log evidence, stderr, normalized weights: exact comparisons and identities
# ----------------------------------------------------------------------------------------------


def numpy_reference(lw: np.ndarray) -> dict[str, np.ndarray]:
    """Direct float64 numpy versions of the four weight summaries (reduction over axis 0)."""
    n = lw.shape[0]
    mx = lw.max(axis=0)
    w = np.exp(lw - mx)
    s1 = w.sum(axis=0)
    s2 = (w**2).sum(axis=0)
    ess = s1**2 / s2
    return {
        "log_evidence": np.log(s1) + mx - np.log(n),
        "ess": ess,
        "stderr": np.sqrt(1.0 / ess - 1.0 / n),
        "normalized": w / s1,
    }


@pytest.mark.parametrize("shape", [(1000,), (500, 4), (300, 2, 3)])
def test_summaries_match_numpy(shape: tuple[int, ...]) -> None:
    lw = random_log_weights(0, shape)
    ref = numpy_reference(lw.numpy())
    np.testing.assert_allclose(log_evidence(lw).numpy(), ref["log_evidence"], rtol=RTOL_ROUNDING)
    np.testing.assert_allclose(effective_sample_size(lw).numpy(), ref["ess"], rtol=RTOL_ROUNDING)
    np.testing.assert_allclose(log_evidence_stderr(lw).numpy(), ref["stderr"], rtol=RTOL_ROUNDING)
    np.testing.assert_allclose(normalized_weights(lw).numpy(), ref["normalized"], rtol=1e-10)
    assert log_evidence(lw).shape == shape[1:]
    assert normalized_weights(lw).shape == shape


def test_ess_matches_logsumexp_formula() -> None:
    lw = random_log_weights(1, (2000, 3))
    expected = torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))
    torch.testing.assert_close(effective_sample_size(lw), expected, rtol=RTOL_ROUNDING, atol=0)


def test_results_are_float64() -> None:
    lw = random_log_weights(2, (100, 2)).to(torch.float32)
    for fn in (log_evidence, effective_sample_size, log_evidence_stderr, pareto_khat):
        assert fn(lw).dtype == torch.float64
    assert normalized_weights(lw).dtype == torch.float64


def test_input_not_modified() -> None:
    lw = random_log_weights(3, (200,))
    copy = lw.clone()
    for fn in (log_evidence, effective_sample_size, log_evidence_stderr, pareto_khat):
        fn(lw)
    assert torch.equal(lw, copy)


@pytest.mark.parametrize("c", [0.0, -3.7, 812.5, -1e4])
def test_equal_weights(c: float) -> None:
    n = 257
    lw = torch.full((n,), c, dtype=torch.float64)
    assert effective_sample_size(lw).item() == pytest.approx(n, rel=1e-14)
    assert log_evidence(lw).item() == pytest.approx(c, rel=1e-14, abs=1e-12)
    assert log_evidence_stderr(lw).item() == 0.0
    torch.testing.assert_close(
        normalized_weights(lw), torch.full((n,), 1.0 / n, dtype=torch.float64)
    )


def test_one_huge_weight() -> None:
    lw = random_log_weights(4, (1000,))
    lw[17] = 200.0  # every other weight is smaller by a factor of at least e^150
    assert effective_sample_size(lw).item() == pytest.approx(1.0, abs=1e-12)
    n = lw.shape[0]
    assert log_evidence_stderr(lw).item() == pytest.approx(math.sqrt(1.0 - 1.0 / n), abs=1e-12)
    assert log_evidence(lw).item() == pytest.approx(200.0 - math.log(n), abs=1e-12)
    assert normalized_weights(lw)[17].item() == pytest.approx(1.0, abs=1e-12)


def test_ess_bounds() -> None:
    lw = random_log_weights(5, (400, 50))
    ess = effective_sample_size(lw)
    assert bool(((ess >= 1.0) & (ess <= 400.0)).all())


@pytest.mark.parametrize("c", [123.4, -500.0])
def test_shift_invariance(c: float) -> None:
    torch.manual_seed(6)
    lw = torch.log(torch.rand(5000, dtype=torch.float64)) * -0.6  # Pareto-like, k about 0.6
    lw_shift = lw + c
    # Adding c rounds each log weight by up to ~|c| * 1e-16, hence the slightly loose tolerances.
    torch.testing.assert_close(
        effective_sample_size(lw_shift), effective_sample_size(lw), rtol=1e-9, atol=0
    )
    torch.testing.assert_close(pareto_khat(lw_shift), pareto_khat(lw), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(
        log_evidence_stderr(lw_shift), log_evidence_stderr(lw), rtol=1e-8, atol=0
    )
    torch.testing.assert_close(log_evidence(lw_shift), log_evidence(lw) + c, rtol=1e-12, atol=0)


def test_batched_equals_column_by_column() -> None:
    torch.manual_seed(7)
    n = 3000
    lw = torch.randn(n, 2, 3, dtype=torch.float64) * torch.tensor([0.5, 1.0, 2.0])
    for fn in (
        log_evidence,
        effective_sample_size,
        log_evidence_stderr,
        pareto_khat,
        normalized_weights,
    ):
        batched = fn(lw)
        for i in range(2):
            for j in range(3):
                torch.testing.assert_close(batched[..., i, j], fn(lw[:, i, j]), rtol=1e-12, atol=0)


def test_khat_batched_large_batch_is_chunked_consistently() -> None:
    # With N = 10^4 the tail is M = 300 points and the grid m = 47, so at most
    # 2^24 // (47 * 300) = 1189 columns fit in one internal block: 1200 columns take two chunks.
    torch.manual_seed(8)
    lw = torch.randn(10_000, 1200, dtype=torch.float64)
    batched = pareto_khat(lw)
    for j in (0, 599, 1199):
        torch.testing.assert_close(batched[j], pareto_khat(lw[:, j]), rtol=1e-12, atol=0)


def test_minus_inf_log_weights_are_zero_weights() -> None:
    lw = random_log_weights(9, (1000,))
    lw[::3] = -torch.inf
    ref = numpy_reference(lw.numpy())
    assert log_evidence(lw).item() == pytest.approx(float(ref["log_evidence"]), rel=1e-12)
    assert effective_sample_size(lw).item() == pytest.approx(float(ref["ess"]), rel=1e-12)
    assert normalized_weights(lw)[::3].abs().max().item() == 0.0


def test_invalid_shapes_raise() -> None:
    for fn in (
        log_evidence,
        effective_sample_size,
        log_evidence_stderr,
        pareto_khat,
        normalized_weights,
    ):
        with pytest.raises(ValueError):
            fn(torch.tensor(1.0))
        with pytest.raises(ValueError):
            fn(torch.empty(0, 3))


# ----------------------------------------------------------------------------------------------
# stderr calibration on a problem with known evidence
# ----------------------------------------------------------------------------------------------


def test_stderr_calibration_known_evidence() -> None:
    # Target gamma(x) = 3 N(x; 1, 1) (so Z = 3), proposal q = N(0, 1.5^2).
    # chi^2(p || q) = int p^2/q - 1 with p = N(1, 1) is, in closed form for s = 1.5,
    # s / sqrt(2 a) exp(1/a - 1) - 1 with a = 1 - 1/(2 s^2), which is about 0.6004.
    n, reps = 1000, 4000
    s = 1.5
    a = 1.0 - 1.0 / (2 * s * s)
    chi2 = s / math.sqrt(2 * a) * math.exp(1.0 / a - 1.0) - 1.0
    true_sd = math.sqrt(chi2 / n)  # delta-method sd of log Z_hat, about 0.0245

    torch.manual_seed(10)
    x = torch.randn(n, reps, dtype=torch.float64) * s
    target = torch.distributions.Normal(torch.tensor(1.0, dtype=torch.float64), 1.0)
    proposal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), s)
    lw = math.log(3.0) + target.log_prob(x) - proposal.log_prob(x)

    log_z = log_evidence(lw)
    se = log_evidence_stderr(lw)
    empirical_sd = log_z.std().item()
    mean_se = se.mean().item()

    # The sample sd over R replications of a near-normal quantity has relative standard error
    # 1/sqrt(2R) = 1.1% for R = 4000; allow 4 of those.
    assert abs(empirical_sd / mean_se - 1.0) < 4.0 / math.sqrt(2 * reps)
    # The reported stderr varies by ~2.4% between replications, so its mean over R = 4000 has
    # ~0.04% Monte Carlo error; 1% leaves room for the O(1/N) bias of the plug-in variance.
    assert mean_se == pytest.approx(true_sd, rel=0.01)
    # log Z_hat is unbiased up to the Jensen term -Var/2 (about -3e-4); its mean over R
    # replications has standard error sd/sqrt(R) (about 3.9e-4); allow 4 of those.
    expected_mean = math.log(3.0) - 0.5 * true_sd**2
    assert abs(log_z.mean().item() - expected_mean) < 4.0 * true_sd / math.sqrt(reps)


# ----------------------------------------------------------------------------------------------
# Pareto k-hat
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("xi", [0.2, 0.5, 0.8])
def test_khat_recovers_gpd_shape(xi: float) -> None:
    n = 10**6
    rng = np.random.default_rng(int(1000 * xi))
    lw = torch.from_numpy(np.log(gpd_sample(rng, xi, n)))  # a draw may be 0 -> log w = -inf
    khat = pareto_khat(lw).item()
    # The tail above any threshold of a GPD is again GPD with the same shape, so the fit of the
    # M = 3000 tail points is unbiased for xi with asymptotic sd (1 + xi)/sqrt(M) (0.022-0.033);
    # the prior moves the estimate by 10/(M+10) |0.5 - xi| <= 0.001 towards 0.5.
    m = tail_length(n)
    shrink = PRIOR_WEIGHT / (m + PRIOR_WEIGHT) * abs(0.5 - xi)
    tol = 3.0 * (1.0 + xi) / math.sqrt(m) + shrink
    assert abs(khat - xi) < tol


@pytest.mark.parametrize(("xi", "seed"), [(0.3, 11), (0.7, 12), (-0.2, 13)])
def test_gpd_fit_matches_scipy_mle(xi: float, seed: int) -> None:
    n = 10**5
    m = tail_length(n)  # 949 tail points
    rng = np.random.default_rng(seed)
    w = gpd_sample(rng, xi, n, sigma=2.5)
    khat = pareto_khat(torch.from_numpy(np.log(w))).item()

    # The same exceedances, computed independently in numpy.
    u = np.sort(w / w.max())[::-1]
    exceedances = np.sort(u[:m] - u[m])
    c_mle, _, scale_mle = stats.genpareto.fit(exceedances, floc=0)

    # Zhang-Stephens' posterior mean and the MLE are both asymptotically efficient: they differ
    # by O(1/M), not by the O(1/sqrt(M)) sampling error.  Over 40 repetitions at M = 425 and
    # M = 949 the difference scaled like 1/M and stayed below 6/M for these shapes (largest for
    # negative xi), in both k and log(sigma).  The tolerance 10/M (about 0.011) is well below the
    # asymptotic sd of k-hat, (1 + xi)/sqrt(M) = 0.026-0.055, so a wrong fit would be detected.
    tol = 10.0 / m
    assert abs(undo_khat_prior(khat, n) - c_mle) < tol

    k_zs, sigma_zs = _gpd_fit_zhang_stephens(torch.from_numpy(exceedances)[None, :])
    assert abs(k_zs.item() - c_mle) < tol
    assert abs(math.log(sigma_zs.item() / scale_mle)) < tol
    # The prior (M k + 10 * 0.5)/(M + 10) is applied exactly (up to the rounding difference
    # between numpy's w / max(w) and exp(log w - max log w)).
    expected = (m * k_zs.item() + PRIOR_WEIGHT * 0.5) / (m + PRIOR_WEIGHT)
    assert khat == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("n", [5, 6, 40, 425, 3000])
def test_gpd_fit_matches_pyro(n: int) -> None:
    # pyro.ops.stats.fit_generalized_pareto is an independent implementation of the same
    # estimator (same grid size 30 + floor(sqrt(n)), same quartile, same prior), so the results
    # agree to rounding.  Pyro is an optional dependency, hence importorskip.
    pyro_stats = pytest.importorskip("pyro.ops.stats")
    rng = np.random.default_rng(20 + n)
    for xi in (-0.4, 0.1, 0.6, 1.2):
        x = torch.from_numpy(np.sort(gpd_sample(rng, xi, n, sigma=0.3)))
        k_pyro, sigma_pyro = pyro_stats.fit_generalized_pareto(x)
        k_raw_pyro = (k_pyro * (n + PRIOR_WEIGHT) - PRIOR_WEIGHT * 0.5) / n
        k, sigma = _gpd_fit_zhang_stephens(x[None, :])
        assert k.item() == pytest.approx(k_raw_pyro, abs=1e-12)
        assert sigma.item() == pytest.approx(sigma_pyro, rel=1e-12)


def test_khat_light_tail_bounded_weights() -> None:
    # Target N(0, 1), proposal N(0, 2^2): log w = -3 x^2 / 8 + const is bounded above, so the
    # weights have a finite upper endpoint and the true GPD shape is negative (about -2 for
    # this endpoint behaviour).  Empirically k-hat is about -1.7 here; check < 0 < 0.5.
    torch.manual_seed(14)
    x = 2.0 * torch.randn(10_000, 8, dtype=torch.float64)
    lw = torch.distributions.Normal(0.0, 1.0).log_prob(x) - torch.distributions.Normal(
        0.0, 2.0
    ).log_prob(x)
    khat = pareto_khat(lw)
    assert bool((khat < 0.0).all())
    assert bool((khat < 0.5).all())


def test_khat_normal_proposal_wider_target() -> None:
    # q = N(0, 1), p = N(0, 2) (variance 2): w = p/q is proportional to exp(x^2/4), so
    # P(w > t) ~ t^-2 / sqrt(log t) and the true tail index is k = 1 - 1/sigma_p^2 = 0.5.  The
    # slowly varying factor 1/sqrt(log t) makes k-hat converge slowly (mean about 0.48 at
    # N = 10^5 in 20 repetitions); the sampling sd per column is about (1 + k)/sqrt(M) = 0.049
    # with M = 949.  Each column must lie in 0.5 +- 0.2 (about 4 sd), and the mean of the
    # 10 columns (sd about 0.015) in 0.5 +- 0.08 (bias plus about 4 sd).
    torch.manual_seed(15)
    n, cols = 10**5, 10
    x = torch.randn(n, cols, dtype=torch.float64)
    lw = torch.distributions.Normal(0.0, math.sqrt(2.0)).log_prob(x) - torch.distributions.Normal(
        0.0, 1.0
    ).log_prob(x)
    khat = pareto_khat(lw)
    assert bool(((khat > 0.3) & (khat < 0.7)).all())
    assert abs(khat.mean().item() - 0.5) < 0.08


def test_khat_too_few_samples_is_nan() -> None:
    # M = ceil(min(0.2 N, 3 sqrt N)) reaches 5 tail points first at N = 21.
    gen = torch.Generator().manual_seed(16)
    lw = torch.randn(21, generator=gen, dtype=torch.float64)
    assert torch.isnan(pareto_khat(lw[:20]))
    assert torch.isfinite(pareto_khat(lw))
    assert torch.isnan(pareto_khat(torch.zeros(3)))


def test_khat_flat_tail_is_minus_inf() -> None:
    assert pareto_khat(torch.full((1000,), 4.2)).item() == -math.inf
    # Not all equal, but the M + 1 = 96 largest are equal (N = 1000 -> M = 95).
    lw = torch.linspace(-5.0, 0.0, 1000, dtype=torch.float64)
    lw[-200:] = 0.0
    assert pareto_khat(lw).item() == -math.inf
    # Exactly the M = 95 largest are equal and the threshold is lower: all exceedances are equal
    # and positive, a point mass (the k -> -inf limit of the GPD), also reported as -inf.
    lw = torch.linspace(-5.0, -1.0, 1000, dtype=torch.float64)
    lw[-95:] = 0.0
    assert pareto_khat(lw).item() == -math.inf


def test_khat_heavily_tied_tail_is_nan() -> None:
    # Most of the tail ties with the threshold (zero exceedances, zero first quartile): only 3
    # of the M = 20 tail points exceed it.  Not a GPD-like tail; NaN as in posterior::gpdfit.
    lw = torch.zeros(100, dtype=torch.float64)
    lw[:3] = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert torch.isnan(pareto_khat(lw))
    # Weights with three distinct values: 1% at 4, 9% at 2, 90% at 1 (N = 1000, M = 95).
    rng = np.random.default_rng(19)
    lw = torch.from_numpy(rng.choice(np.log([1.0, 2.0, 4.0]), size=1000, p=[0.9, 0.09, 0.01]))
    assert torch.isnan(pareto_khat(lw))
    # A few ties in an otherwise continuous tail are fine.
    lw = torch.from_numpy(np.log(gpd_sample(rng, 0.3, 1000)))
    lw[:5] = lw.max()
    assert torch.isfinite(pareto_khat(lw))


def test_khat_nan_and_inf() -> None:
    gen = torch.Generator().manual_seed(17)
    base = torch.randn(500, 5, generator=gen, dtype=torch.float64)
    base[3, 1] = torch.nan
    base[7, 2] = torch.inf
    base[8, 3] = torch.inf
    base[9, 3] = torch.nan  # NaN takes precedence over +inf
    base[:, 4] = 1.5  # flat
    khat = pareto_khat(base)
    assert torch.isfinite(khat[0])
    assert torch.isnan(khat[1])
    assert khat[2].item() == math.inf
    assert torch.isnan(khat[3])
    assert khat[4].item() == -math.inf
    assert khat[0].item() == pareto_khat(base[:, 0]).item()


def test_khat_minus_inf_log_weights_are_legitimate() -> None:
    # exp(-1e4 - max) underflows to exactly 0, so -inf and -1e4 give identical weights.
    rng = np.random.default_rng(18)
    lw = torch.from_numpy(np.log(gpd_sample(rng, 0.4, 5000)))
    lw[::4] = -torch.inf
    finite_version = torch.where(torch.isneginf(lw), -1e4, lw)
    khat = pareto_khat(lw)
    assert torch.isfinite(khat)
    assert khat.item() == pareto_khat(finite_version).item()
    # All weights zero: the normalised weights are undefined.
    assert torch.isnan(pareto_khat(torch.full((100,), -torch.inf)))


def test_khat_threshold() -> None:
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(1000) == pytest.approx(1.0 - 1.0 / 3.0)
    assert khat_threshold(10**4) == 0.7
    assert khat_threshold(10**6) == 0.7
    # 1 - 1/log10(N) = 0.7 at N = 10^(10/3), about 2154.
    assert khat_threshold(2154) < 0.7
    assert khat_threshold(2155) == 0.7
    assert khat_threshold(1) == -math.inf
    with pytest.raises(ValueError):
        khat_threshold(0)


# ----------------------------------------------------------------------------------------------
# Weighted statistics: against float64 numpy, batch column by batch column
# ----------------------------------------------------------------------------------------------


def np_weights(log_weights: np.ndarray) -> np.ndarray:
    w = np.exp(log_weights - log_weights.max())
    return w / w.sum()


def np_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The smallest value v with sum_{x_i <= v} w_i >= q sum w (weights rescaled by the max)."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(
        values[order][min(np.searchsorted(cumulative, q * cumulative[-1]), len(values) - 1)]
    )


def test_weighted_moments_match_numpy_per_batch_column() -> None:
    log_weights = random_log_weights(30, (200, 3))
    values = torch.randn(200, 3, 2, generator=torch.Generator().manual_seed(31)).float()
    mean, variance = weighted_mean(values, log_weights), weighted_variance(values, log_weights)
    assert mean.dtype == variance.dtype == torch.float64
    assert mean.shape == variance.shape == (3, 2)
    for b in range(3):
        w = np_weights(log_weights[:, b].numpy())
        for e in range(2):
            x = values[:, b, e].double().numpy()
            m = float(np.sum(w * x))
            assert float(mean[b, e]) == pytest.approx(m, rel=RTOL_ROUNDING)
            v = float(np.sum(w * (x - m) ** 2))
            assert float(variance[b, e]) == pytest.approx(v, rel=RTOL_ROUNDING)
    # a known mean gives the same variance
    assert torch.equal(weighted_variance(values, log_weights, mean), variance)


def test_weighted_moments_of_equal_weights_are_the_plain_ones() -> None:
    values = torch.arange(10, dtype=torch.float64)
    assert float(weighted_mean(values, torch.zeros(10))) == pytest.approx(4.5, rel=RTOL_ROUNDING)
    assert float(weighted_variance(values, torch.full((10,), -3.0))) == pytest.approx(
        float(values.var(unbiased=False)), rel=RTOL_ROUNDING
    )


def test_weighted_statistics_check_shapes() -> None:
    with pytest.raises(ValueError, match="do not start with"):
        weighted_mean(torch.zeros(5, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="do not start with"):
        weighted_quantile(torch.zeros(5), torch.zeros(5, 2), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        weighted_quantile(torch.zeros(5), torch.zeros(5), [0.5, 1.5])


def test_weighted_quantile_matches_the_definition_per_batch_column() -> None:
    log_weights = random_log_weights(32, (150, 4))
    values = torch.randn(150, 4, 3, generator=torch.Generator().manual_seed(33))
    levels = [0.0, 0.05, 0.37, 0.5, 0.95, 1.0]
    result = weighted_quantile(values, log_weights, levels)
    assert result.shape == (6, 4, 3)
    for b in range(4):
        w = np.exp(log_weights[:, b].numpy() - log_weights[:, b].numpy().max())
        for e in range(3):
            expected = [np_quantile(values[:, b, e].numpy(), w, q) for q in levels]
            assert result[:, b, e].tolist() == expected


def test_weighted_quantile_is_exact_at_equal_weights() -> None:
    # With equal weights the q quantile is the ceil(q N)-th smallest value, with no rounding
    # at levels that fall on a particle (1/2 of 10 particles: the 5th smallest).
    values = torch.tensor([9.0, 2.0, 7.0, 0.0, 5.0, 3.0, 8.0, 1.0, 6.0, 4.0])
    levels = [0.1, 0.2, 0.5, 0.7, 0.71, 1.0]
    result = weighted_quantile(values, torch.full((10,), 0.3), levels)
    assert result.tolist() == [0.0, 1.0, 4.0, 6.0, 7.0, 9.0]
    assert weighted_quantile(values, torch.zeros(10), 0.5).shape == ()


# ----------------------------------------------------------------------------------------------
# The problems report
# ----------------------------------------------------------------------------------------------


def test_no_problems_for_healthy_weights() -> None:
    assert weight_problems(1000, ess=500.0, khat=0.2) == []
    assert weight_problems(1000, ess=torch.tensor([500.0, 800.0]), khat=torch.zeros(2)) == []


def test_nonfinite_weights_end_the_report_and_name_the_sites() -> None:
    problems = weight_problems(
        10, ess=math.nan, khat=math.inf, num_nan=2, num_infinite=1, nonfinite_sites={"x": 3}
    )
    assert problems == [
        "2 NaN and 1 +inf log weights out of 10; estimates are NaN; "
        "sites with non-finite log densities: 'x' (3)"
    ]
    assert "sites" not in weight_problems(10, ess=math.nan, khat=math.nan, num_nan=1)[0]


def test_all_zero_weights_end_the_report() -> None:
    assert weight_problems(30, ess=math.nan, khat=math.nan, num_zero=30) == [
        "all 30 weights are zero: no particle is consistent with the data"
    ]


def test_low_ess_and_high_khat_are_both_reported() -> None:
    n = 5000
    low = MIN_ESS_FRACTION * n
    problems = weight_problems(n, ess=low * 0.99, khat=khat_threshold(n) + 0.01)
    assert len(problems) == 2
    assert problems[0].startswith(f"ESS is {low * 0.99:.1f} of {n} particles (")
    assert problems[1].startswith(f"Pareto k-hat is {khat_threshold(n) + 0.01:.2f} > ")
    # It says what k-hat is fitted to: M = ceil(min(0.2 N, 3 sqrt(N))) = 213 of 5000.
    assert "fitted to the largest 213 of 5000 weights" in problems[1]
    assert weight_problems(n, ess=low, khat=khat_threshold(n)) == []  # both limits allowed


def test_batched_report_counts_each_problem_once() -> None:
    # Columns: healthy, NaN (and +inf), all zero, low ESS and high k-hat, +inf only.  Checks
    # after a non-finite or all-zero column are not counted for it (its k-hat is +inf or NaN).
    n = 1000
    threshold = khat_threshold(n)
    problems = weight_problems(
        n,
        ess=torch.tensor([500.0, math.nan, math.nan, 0.5, math.nan]),
        khat=torch.tensor([0.1, math.nan, math.nan, 0.9, math.inf]),
        num_nan=torch.tensor([0, 3, 0, 0, 0]),
        num_infinite=torch.tensor([0, 1, 0, 0, 2]),
        num_zero=torch.tensor([0, 0, n, 0, 0]),
    )
    assert problems == [
        "2 with NaN or +inf weights",
        "1 with all weights zero",
        f"1 with ESS/N below {MIN_ESS_FRACTION} (or ESS about 1)",
        f"1 with Pareto k-hat above {threshold:.2f}",
    ]


def test_a_collapse_to_one_particle_and_an_unknown_khat_are_reported() -> None:
    # ESS 1.0 of 1000 is above MIN_ESS_FRACTION * N = 1 but is a collapse all the same; a
    # k-hat that cannot be computed (a tied tail, or N < 21) is itself a warning.
    problems = weight_problems(1000, ess=1.0, khat=math.nan)
    assert problems[0].startswith("ESS is 1.0 of 1000 particles")
    assert problems[1].startswith("Pareto k-hat cannot be computed (the largest weights tie")
    assert "as the weights of discrete latents do" in problems[1]  # and what to judge by
    assert "judge by the ESS and by independent runs" in problems[1]
    assert weight_problems(10, ess=9.0, khat=math.nan) == [
        "Pareto k-hat cannot be computed (fewer than 21 particles): how reliable these "
        "estimates are is unknown"
    ]
    assert weight_problems(1, ess=1.0, khat=math.nan)[0].startswith("Pareto k-hat cannot")


def test_quantiles_of_undefined_weights_are_nan_like_the_mean() -> None:
    values = torch.tensor([3.0, 1.0, 2.0, 4.0])
    for log_weights in (
        torch.tensor([0.0, math.nan, 0.0, 0.0]),
        torch.tensor([0.0, math.inf, 0.0, 0.0]),
        torch.full((4,), -math.inf),
    ):
        assert torch.isnan(weighted_quantile(values, log_weights, [0.1, 0.9])).all()
    mixed = weighted_quantile(
        torch.stack([values, values], 1), torch.tensor([[0.0, math.nan]] * 4), 0.5
    )
    assert mixed[0] == 2.0 and torch.isnan(mixed[1])


# ---------------------------------------------------------------------------------------
# Monte Carlo standard errors (the statistical checks are in test_posterior.py)
# ---------------------------------------------------------------------------------------


def test_mcse_mean_and_sd_match_their_formulas_in_numpy():
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(50, 2, 3, generator=gen)
    log_weights = torch.randn(50, 2, generator=gen)
    mean_error, sd_error = mcse_mean(values, log_weights), mcse_sd(values, log_weights)
    assert mean_error.shape == sd_error.shape == (2, 3)
    for b in range(2):
        lw = log_weights[:, b].double().numpy()
        w = np.exp(lw - lw.max())
        w /= w.sum()
        for e in range(3):
            f = values[:, b, e].double().numpy()
            deviation2 = (f - (w * f).sum()) ** 2
            variance = (w * deviation2).sum()
            expected_mean = math.sqrt((w**2 * deviation2).sum())
            expected_sd = math.sqrt((w**2 * (deviation2 - variance) ** 2).sum()) / (
                2 * math.sqrt(variance)
            )
            assert float(mean_error[b, e]) == pytest.approx(expected_mean, rel=1e-12)
            assert float(sd_error[b, e]) == pytest.approx(expected_sd, rel=1e-12)


def test_mcse_with_equal_weights_is_the_iid_standard_error_and_zero_for_a_constant():
    values = torch.tensor([1.0, 2.0, 4.0, 7.0])
    equal = torch.zeros(4)
    # sqrt(sum (1/N)^2 (f - mean)^2) = sqrt(plug-in variance / N)
    expected = math.sqrt(float(values.var(unbiased=False)) / 4)
    assert float(mcse_mean(values, equal)) == pytest.approx(expected, rel=1e-12)
    constant = torch.full((4,), 3.0)
    assert float(mcse_mean(constant, equal)) == 0.0
    assert float(mcse_sd(constant, equal)) == 0.0  # no 0/0 where the sd is zero


def test_mcse_checks_the_shapes():
    with pytest.raises(ValueError, match="do not start with the log weights' shape"):
        mcse_mean(torch.zeros(3, 2), torch.zeros(2))


def test_mcse_of_the_sd_is_nan_where_the_weights_are_undefined():
    from infcomp.diagnostics import mcse_sd

    values = torch.tensor([0.0, 1.0, 3.0])
    for bad in (torch.full((3,), -math.inf), torch.tensor([0.0, math.nan, 0.0])):
        assert torch.isnan(mcse_sd(values, bad))
    assert mcse_sd(torch.ones(3), torch.zeros(3)) == 0
