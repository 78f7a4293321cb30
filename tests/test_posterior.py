"""Tests for infcomp.posterior: the weighted posterior and what users ask of it.

Deterministic results are compared with independent float64 numpy computations with
softmax weights (rounding tolerances). Statistical tests use fixed seeds and tolerances
derived from the Monte Carlo error; each says how.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Normal

import infcomp as ic
from infcomp import diagnostics
from infcomp.empirical import Empirical
from infcomp.errors import ModelError
from infcomp.posterior import BatchPosterior, EmpiricalMarginal, Posterior, StreamedPosterior
from infcomp.runtime import Site, Trace
from infcomp.traces import group_traces, stack_traces

RTOL = 1e-12  # float64 sums of at most a few thousand terms, computed two ways


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def batched_trace(sites: dict[str, torch.Tensor], return_value=None) -> Trace:
    """A trace with one leading particle dimension holding the given latent values."""
    trace = Trace(batch_ndim=1)
    for name, value in sites.items():
        trace.add(Site(name, "sample", None, value))
    trace.return_value = return_value
    return trace


def make_posterior(sites: dict[str, torch.Tensor], log_weights: torch.Tensor, **kwargs):
    n = log_weights.shape[0]
    return Posterior([batched_trace(sites)], [n], log_weights, **kwargs)


def np_softmax(log_weights: torch.Tensor) -> np.ndarray:
    lw = log_weights.double().numpy()
    w = np.exp(lw - lw.max())
    return w / w.sum()


def np_weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The definition: the smallest v with sum_{x_i <= v} w_i >= q (w normalized)."""
    for v in np.sort(np.unique(values)):
        if weights[values <= v].sum() >= q:
            return float(v)
    raise AssertionError("no level reached")


def random_posterior(seed: int, n: int = 200):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=gen, dtype=torch.float64) * 2 + 1
    b = torch.randn(n, 3, generator=gen)  # float32 vector site
    c = torch.randn(n, 2, 3, generator=gen, dtype=torch.float64)
    log_weights = torch.randn(n, generator=gen, dtype=torch.float64) * 1.5
    return make_posterior({"a": a, "b": b, "c": c}, log_weights), (a, b, c, log_weights)


def loop_model(num_steps: int, ident: int) -> torch.Tensor:
    """A program with a loop of given length: its sites differ between runs."""
    ic.observe("id", Normal(0.0, 1.0), value=float(ident))
    total = torch.tensor(0.0)
    for t in range(num_steps):
        total = total + ic.sample(f"x_{t}", Normal(float(t), 1.0))
    return total


# Loop lengths of the particles, interleaved so that grouping reorders them.
STEPS = [2, 0, 1, 2, 3, 1, 0, 2, 3, 1, 2, 0, 1, 2]


def varying_posterior(seed: int = 0):
    """A posterior over runs of `loop_model` (4 structures), built from unbatched traces."""
    torch.manual_seed(seed)
    traces = [ic.trace(loop_model).get_trace(steps, i) for i, steps in enumerate(STEPS)]
    gen = torch.Generator().manual_seed(seed + 100)
    log_weights = torch.randn(len(STEPS), generator=gen, dtype=torch.float64)
    groups, sizes, order = group_traces(traces)
    ordered = log_weights[order]
    return Posterior(groups, sizes, ordered), traces, log_weights


def ident(trace: Trace) -> torch.Tensor:
    return trace["id"].value


# ---------------------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------------------


def test_constructor_checks_sizes():
    trace = batched_trace({"a": torch.zeros(3)})
    with pytest.raises(ValueError):
        Posterior([trace], [3, 2], torch.zeros(5))  # two sizes, one group
    with pytest.raises(ValueError):
        Posterior([trace], [3], torch.zeros(4))  # 3 particles, 4 weights
    with pytest.raises(ValueError):
        Posterior([trace], [3], torch.zeros(3, 1))  # 2-d log weights


def test_weights_are_softmax_in_float64():
    post, (_, _, _, lw) = random_posterior(0)
    post32 = make_posterior({"a": torch.zeros(200)}, lw.float())
    assert post.num_particles == 200
    assert post32.log_weights.dtype == torch.float64
    np.testing.assert_allclose(post.weights.numpy(), np_softmax(lw), rtol=RTOL)
    np.testing.assert_allclose(post32.weights.numpy(), np_softmax(lw.float()), rtol=RTOL)


# ---------------------------------------------------------------------------------------
# mean, variance, std
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("site", ["a", "b", "c"])
def test_moments_match_numpy(site):
    post, (a, b, c, lw) = random_posterior(1)
    x = {"a": a, "b": b, "c": c}[site].double().numpy()
    w = np_softmax(lw)
    mean = np.tensordot(w, x, axes=1)
    variance = np.tensordot(w, (x - mean) ** 2, axes=1)
    for result in (post.mean(site), post.variance(site), post.std(site)):
        assert result.dtype == torch.float64
        assert result.shape == x.shape[1:]
    np.testing.assert_allclose(post.mean(site).numpy(), mean, rtol=RTOL)
    np.testing.assert_allclose(post.variance(site).numpy(), variance, rtol=RTOL)
    np.testing.assert_allclose(post.std(site).numpy(), np.sqrt(variance), rtol=RTOL)
    np.testing.assert_allclose(post.expectation(site).numpy(), mean, rtol=RTOL)


def test_moments_of_a_function_of_the_trace():
    post, (a, b, _, lw) = random_posterior(2)

    def f(trace: Trace) -> torch.Tensor:
        return trace["a"].value ** 2 + trace["b"].value[:, 0]

    x = (a**2 + b[:, 0].double()).numpy()
    w = np_softmax(lw)
    mean = float(w @ x)
    assert float(post.mean(f)) == pytest.approx(mean, rel=RTOL)
    assert float(post.expectation(f)) == pytest.approx(mean, rel=RTOL)
    assert float(post.variance(f)) == pytest.approx(float(w @ (x - mean) ** 2), rel=RTOL)
    # a vector-valued function
    vector = post.mean(lambda trace: trace["c"].value.sum(-1))
    np.testing.assert_allclose(
        vector.numpy(), np.tensordot(w, post.values("c").sum(-1).numpy(), axes=1), rtol=RTOL
    )


def test_expectation_is_mean():
    assert Posterior.expectation is Posterior.mean


def test_zero_weight_particles_do_not_count():
    values = torch.tensor([1.0, 2.0, 1000.0, 3.0])
    log_weights = torch.tensor([0.0, 0.0, -math.inf, math.log(2.0)], dtype=torch.float64)
    post = make_posterior({"z": values}, log_weights)
    # weights 1/4, 1/4, 0, 1/2
    assert float(post.mean("z")) == pytest.approx(0.25 + 0.5 + 1.5, rel=RTOL)
    assert post.num_zero_weights == 1


# ---------------------------------------------------------------------------------------
# quantiles
# ---------------------------------------------------------------------------------------

# Levels chosen away from the cumulative weights of the fixture (none within 1e-4 of a
# cumulative weight), so that rounding cannot decide the answer.
LEVELS = [0.013, 0.2, 0.37, 0.5, 0.77, 0.951, 0.999]


def test_quantile_matches_definition_scalar_site():
    post, (a, _, _, lw) = random_posterior(3)
    w = np_softmax(lw)
    x = a.numpy()
    cdf = np.cumsum(w[np.argsort(x)])
    assert np.min(np.abs(cdf[:, None] - np.array(LEVELS)[None, :])) > 1e-6
    result = post.quantile("a", LEVELS)
    assert result.shape == (len(LEVELS),)
    expected = [np_weighted_quantile(x, w, q) for q in LEVELS]
    np.testing.assert_array_equal(result.numpy(), expected)
    # a single level gives a value of the site's shape
    assert post.quantile("a", 0.37).shape == ()
    assert float(post.quantile("a", 0.37)) == expected[2]


def test_quantile_is_elementwise_for_vector_sites():
    post, (_, _, c, lw) = random_posterior(4)
    w = np_softmax(lw)
    result = post.quantile("c", LEVELS)
    assert result.shape == (len(LEVELS), 2, 3)
    for i in range(2):
        for j in range(3):
            x = c[:, i, j].numpy()
            expected = [np_weighted_quantile(x, w, q) for q in LEVELS]
            np.testing.assert_array_equal(result[:, i, j].numpy(), expected)


def test_quantile_result_shapes():
    post, _ = random_posterior(5)
    assert post.quantile("b", 0.5).shape == (3,)
    assert post.quantile("b", [0.5]).shape == (1, 3)
    assert post.quantile("b", [0.1, 0.5, 0.9]).shape == (3, 3)
    assert post.quantile("c", torch.tensor([[0.1, 0.2], [0.5, 0.9]])).shape == (2, 2, 2, 3)
    assert post.quantile(lambda t: t["a"].value, (0.25, 0.75)).shape == (2,)
    # levels 0 and 1 give the smallest and the largest value
    a = post.values("a")
    np.testing.assert_array_equal(post.quantile("a", [0.0, 1.0]).numpy(), [a.min(), a.max()])


@pytest.mark.parametrize("n", [4, 8, 12, 20, 40, 48])
def test_quantile_with_equal_weights_is_the_empirical_inverse_cdf(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    post = make_posterior({"x": x}, torch.full((n,), -2.5, dtype=torch.float64))
    ordered = x.sort().values.numpy()
    # Levels k/n that are exact binary fractions (1/4, 1/2, 3/4): the inverse CDF
    # inf{v : F(v) >= k/n} is exactly the k-th smallest value; and levels in the middle
    # of a step, (k - 1/2)/n, which no rounding can move.
    exact = [0.25, 0.5, 0.75]
    middle = [(k - 0.5) / n for k in range(1, n + 1)]
    for levels in (exact, middle):
        expected = np.quantile(x.numpy(), levels, method="inverted_cdf")
        np.testing.assert_array_equal(post.quantile("x", levels).numpy(), expected)
    np.testing.assert_array_equal(
        post.quantile("x", exact).numpy(), [ordered[round(q * n) - 1] for q in exact]
    )


def test_weighted_quantiles_of_importance_samples_match_the_target():
    # Proposal N(0, 2), target N(1, 1), log w = log N(x; 1, 1) - log N(x; 0, 2).
    torch.manual_seed(20)
    n = 20_000
    proposal, target = Normal(0.0, 2.0), Normal(1.0, 1.0)
    x = proposal.sample((n,)).double()
    log_weights = target.log_prob(x) - proposal.log_prob(x)
    post = make_posterior({"x": x}, log_weights)
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    result = post.quantile("x", levels).numpy()
    exact = stats.norm(1.0, 1.0).ppf(levels)
    # Asymptotic standard error of a sample p-quantile, sqrt(p (1 - p) / n) / f(x_p), with
    # n replaced by the ESS for weighted samples. (For this pair of Gaussians, numerical
    # integration of E_q[w^2 (1{x <= x_p} - p)^2] gives the exact delta-method error, which
    # is at most this one at all five levels.) Tolerance: 4 standard errors.
    ess = float(post.ess)
    assert ess > 0.5 * n  # ESS/N = 1/E_q[w^2] = 0.573 for this pair
    p = np.array(levels)
    stderr = np.sqrt(p * (1 - p) / ess) / stats.norm(1.0, 1.0).pdf(exact)
    assert np.all(np.abs(result - exact) <= 4 * stderr), (result, exact, stderr)


@pytest.mark.parametrize("levels", [-0.1, 1.5, [0.5, 1.01], [-1e-9], math.nan, [0.5, math.nan]])
def test_bad_quantile_levels_raise(levels):
    post, _ = random_posterior(6)
    with pytest.raises(ValueError):
        post.quantile("a", levels)


# ---------------------------------------------------------------------------------------
# diagnostics
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 500])
def test_diagnostics_delegate(n):
    gen = torch.Generator().manual_seed(n)
    log_weights = (torch.randn(n, generator=gen) * 2).float()
    post = make_posterior({"a": torch.zeros(n)}, log_weights)
    lw64 = log_weights.double()
    assert torch.equal(post.ess, diagnostics.effective_sample_size(lw64))
    assert torch.equal(post.log_evidence, diagnostics.log_evidence(lw64))
    assert torch.equal(post.log_evidence_stderr, diagnostics.log_evidence_stderr(lw64))
    khat, expected_khat = post.khat, diagnostics.pareto_khat(lw64)
    assert torch.equal(khat, expected_khat) or (khat.isnan() and expected_khat.isnan())
    assert post.khat_threshold == diagnostics.khat_threshold(n)
    # and the numbers are the textbook ones
    w = np.exp(lw64.numpy())
    assert float(post.ess) == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-10)
    assert float(post.log_evidence) == pytest.approx(math.log(w.mean()), rel=1e-10)
    assert float(post.log_evidence_stderr) == pytest.approx(
        math.sqrt(1 / float(post.ess) - 1 / n), rel=1e-10
    )


# ---------------------------------------------------------------------------------------
# problems()
# ---------------------------------------------------------------------------------------


def test_healthy_posterior_reports_nothing():
    gen = torch.Generator().manual_seed(7)
    log_weights = 0.3 * torch.randn(1000, generator=gen, dtype=torch.float64)
    post = make_posterior({"a": torch.zeros(1000)}, log_weights)
    assert float(post.khat) < post.khat_threshold
    assert post.problems() == []
    assert post.num_nan_weights == post.num_infinite_weights == post.num_zero_weights == 0


def test_nan_and_infinite_weights_are_counted_and_named():
    log_weights = torch.tensor(
        [0.0, math.nan, 1.0, math.inf, -math.inf, math.nan, -math.inf, -math.inf, 0.5, 0.2]
    )
    post = make_posterior(
        {"a": torch.zeros(10)}, log_weights, nonfinite_sites={"x": 2, "guide y": 1}
    )
    assert post.num_nan_weights == 2
    assert post.num_infinite_weights == 1
    assert post.num_zero_weights == 3
    problems = post.problems()
    assert len(problems) == 1
    assert "2 NaN" in problems[0]
    assert "1 +inf" in problems[0]
    assert "out of 10" in problems[0]
    assert "'x' (2)" in problems[0]
    assert "'guide y' (1)" in problems[0]
    assert post.mean("a").isnan()


def test_nan_weights_from_importance_name_the_site():
    def model():
        z = ic.sample("z", Normal(0.0, 1.0))
        ic.factor("bad", torch.where(z > 1.0, torch.nan, 0.0))
        return z

    torch.manual_seed(8)
    with pytest.warns(ic.InferenceWarning, match="'bad'"):
        post = ic.importance(model, {}, num_particles=400)
    assert post.num_nan_weights == int((post.values("z") > 1.0).sum()) > 0
    assert post.nonfinite_sites == {"bad": post.num_nan_weights}


def test_all_zero_weights():
    post = make_posterior({"a": torch.zeros(6)}, torch.full((6,), -math.inf))
    assert post.num_zero_weights == 6
    problems = post.problems()
    assert len(problems) == 1
    assert "all 6 weights are zero" in problems[0]


def test_tiny_ess_is_reported():
    n = 5000
    gen = torch.Generator().manual_seed(9)
    log_weights = torch.randn(n, generator=gen, dtype=torch.float64) - 60.0
    log_weights[17] = 0.0  # one particle carries all the weight: ESS ~ 1 < 0.001 N = 5
    post = make_posterior({"a": torch.zeros(n)}, log_weights)
    assert float(post.ess) < 1.01
    assert any("ESS" in problem for problem in post.problems())


def test_high_khat_is_reported():
    # log w = 1.5 E with E ~ Exp(1): w = U^-1.5 is Pareto with tail index 2/3, i.e. a
    # generalized Pareto shape k = 1.5 (no finite mean), far above the threshold 0.67 at
    # N = 1000; the estimate's standard error at M = 95 tail points is ~0.15.
    gen = torch.Generator().manual_seed(10)
    log_weights = 1.5 * torch.empty(1000, dtype=torch.float64).exponential_(generator=gen)
    post = make_posterior({"a": torch.zeros(1000)}, log_weights)
    assert float(post.khat) > post.khat_threshold
    problems = post.problems()
    assert any("k-hat" in problem for problem in problems)
    assert not any("NaN" in problem for problem in problems)


# ---------------------------------------------------------------------------------------
# varying structure
# ---------------------------------------------------------------------------------------


def test_groups_of_varying_structure():
    post, _, log_weights = varying_posterior()
    assert len(post.traces) == 4
    assert sum(post.sizes) == post.num_particles == len(STEPS)
    # groups in order of first appearance: loop lengths 2, 0, 1, 3
    assert post.sizes == [STEPS.count(k) for k in (2, 0, 1, 3)]
    ids = post.values("id")
    # values() concatenates the groups in order
    assert torch.equal(ids, torch.cat([group["id"].value for group in post.traces]))
    # each particle keeps its own log weight through the regrouping
    order = ids.long()
    assert torch.equal(post.log_weights, log_weights[order])
    expected = [i for k in (2, 0, 1, 3) for i, steps in enumerate(STEPS) if steps == k]
    assert order.tolist() == expected


def test_site_in_some_groups_raises_with_count():
    post, _, _ = varying_posterior()
    having = sum(1 for steps in STEPS if steps >= 2)
    with pytest.raises(ModelError, match=f"present in {having} of {len(STEPS)} particles"):
        post.values("x_1")
    with pytest.raises(ModelError, match=f"present in {having} of {len(STEPS)}"):
        post.mean("x_1")
    with pytest.raises(ModelError, match=f"present in 0 of {len(STEPS)}"):
        post.mean("nowhere")


def test_function_of_the_trace_across_groups():
    post, traces, log_weights = varying_posterior()
    w = np_softmax(log_weights)  # in the original particle order

    def returned(trace: Trace) -> torch.Tensor:
        return trace.return_value

    def num_steps(trace: Trace) -> torch.Tensor:
        return torch.full((trace["id"].value.shape[0],), float(len(trace.names("sample"))))

    totals = np.array([float(t.return_value) for t in traces])
    assert float(post.mean(returned)) == pytest.approx(float(w @ totals), rel=RTOL)
    assert float(post.mean(num_steps)) == pytest.approx(float(w @ np.array(STEPS)), rel=RTOL)
    mean = float(w @ totals)
    assert float(post.variance(returned)) == pytest.approx(
        float(w @ (totals - mean) ** 2), rel=RTOL
    )
    # a site present everywhere works across groups too
    ids = np.arange(len(STEPS), dtype=np.float64)
    assert float(post.mean("id")) == pytest.approx(float(w @ ids), rel=RTOL)
    assert float(post.quantile(returned, 0.5)) == np_weighted_quantile(totals, w, 0.5)


def test_quantity_of_wrong_leading_dimension_raises():
    post, _ = random_posterior(11)
    with pytest.raises(ModelError, match="leading particle dimension of 200"):
        post.mean(lambda trace: trace["a"].value[:5])
    with pytest.raises(ModelError, match="leading particle dimension"):
        post.mean(lambda trace: trace["a"].value.sum())  # 0-d
    with pytest.raises(ModelError, match="leading particle dimension"):
        post.mean(lambda trace: 3.0)  # not a tensor
    with pytest.raises(ModelError, match="leading particle dimension"):
        post.values(lambda trace: trace["b"].value.T)  # particles along dim 1


def test_quantity_with_different_shapes_in_groups_raises():
    post, _, _ = varying_posterior()

    def all_steps(trace: Trace) -> torch.Tensor:
        n = trace["id"].value.shape[0]
        xs = [trace[name].value for name in trace.names("sample")]
        return torch.stack(xs, dim=-1) if xs else torch.zeros(n, 0)

    with pytest.raises(ModelError, match="different shapes"):
        post.values(all_steps)


def test_stack_traces_stacks_values_and_returns():
    torch.manual_seed(12)
    traces = [ic.trace(loop_model).get_trace(2, i) for i in range(5)]
    stacked = stack_traces(traces)
    assert stacked.batch_ndim == 1
    assert list(stacked.sites) == ["id", "x_0", "x_1"]
    for name in stacked.sites:
        assert torch.equal(stacked[name].value, torch.stack([t[name].value for t in traces]))
    assert torch.equal(stacked.return_value, torch.stack([t.return_value for t in traces]))


# ---------------------------------------------------------------------------------------
# resampling
# ---------------------------------------------------------------------------------------


def labelled_posterior(log_weights: torch.Tensor) -> Posterior:
    """Particle i has value i at site "i", so that copies can be counted."""
    n = log_weights.shape[0]
    return make_posterior({"i": torch.arange(n, dtype=torch.float64)}, log_weights)


LABEL_LOG_WEIGHTS = torch.log(torch.tensor([0.05, 1.0, 2.5, 0.3, 1.7, 0.9, 0.6, 0.0]))


@pytest.mark.parametrize("method", ["systematic", "multinomial"])
@pytest.mark.parametrize("num_particles", [None, 1, 5, 37])
def test_resample_gives_equally_weighted_posterior(method, num_particles):
    torch.manual_seed(13)
    post = labelled_posterior(LABEL_LOG_WEIGHTS)
    resampled = post.resample(num_particles, method=method)
    n = post.num_particles if num_particles is None else num_particles
    assert isinstance(resampled, Posterior)
    assert resampled.num_particles == n
    assert resampled.values("i").shape == (n,)
    assert torch.all(resampled.log_weights == post.log_evidence)
    assert float(resampled.log_evidence) == pytest.approx(float(post.log_evidence), rel=RTOL)
    assert float(resampled.ess) == pytest.approx(n, rel=RTOL)
    # only particles with weight are drawn
    assert not torch.any(resampled.values("i") == 7.0)


def test_multinomial_resampling_copies_in_proportion_to_weights():
    torch.manual_seed(14)
    post = labelled_posterior(LABEL_LOG_WEIGHTS)
    n = 100_000
    counts = torch.bincount(post.resample(n, method="multinomial").values("i").long(), minlength=8)
    w = post.weights
    # Each count is Binomial(n, w_i): 5 standard errors per particle (false failure
    # probability below 8 * 6e-7); the zero-weight particle has tolerance 0.
    tolerance = 5 * torch.sqrt(n * w * (1 - w))
    assert torch.all((counts - n * w).abs() <= tolerance), (counts, n * w)


def test_systematic_resampling_copies_are_floor_or_ceil_and_unbiased():
    torch.manual_seed(15)
    post = labelled_posterior(LABEL_LOG_WEIGHTS)
    n, repetitions = 10, 2000
    expected = n * post.weights
    floor, frac = expected.floor(), expected - expected.floor()
    total = torch.zeros(8, dtype=torch.float64)
    for _ in range(repetitions):
        counts = torch.bincount(post.resample(n).values("i").long(), minlength=8)
        assert torch.all((counts == floor) | (counts == expected.ceil())), (counts, expected)
        total += counts
    # count_i = floor(n w_i) + Bernoulli(frac(n w_i)) in each repetition, independently, so
    # total_i - R floor_i is Binomial(R, frac_i). Tolerance: 5 binomial standard errors.
    tolerance = 5 * torch.sqrt(repetitions * frac * (1 - frac))
    assert torch.all((total - repetitions * expected).abs() <= tolerance), (
        total / repetitions,
        expected,
    )


def test_resampled_means_agree_with_weighted_mean():
    torch.manual_seed(16)
    n_particles = 1000
    x = torch.randn(n_particles, dtype=torch.float64) * 2
    log_weights = -0.5 * (x - 1.0) ** 2 + 0.125 * x**2  # target N(1, 1) over N(0, 2)
    post = make_posterior({"x": x}, log_weights)
    mean, variance = float(post.mean("x")), float(post.variance("x"))
    n = 20_000
    multinomial = float(post.resample(n, method="multinomial").mean("x"))
    # n i.i.d. draws from the weighted particles: standard error sqrt(Var_w / n); 4 SE.
    assert abs(multinomial - mean) <= 4 * math.sqrt(variance / n)
    # Systematic: the resampled mean is (1/n) sum_j g((j + u)/n) with g the step function
    # of f along the particles' cumulative weights; one point per stratum of width 1/n
    # gives a deterministic error of at most the total variation of g over n,
    # TV = sum |x_{i+1} - x_i| over consecutive particles.
    systematic = float(post.resample(n, method="systematic").mean("x"))
    total_variation = float(x.diff().abs().sum())
    assert abs(systematic - mean) <= total_variation / n


def test_resample_across_groups_keeps_each_particle_whole():
    post, traces, log_weights = varying_posterior()
    w = np_softmax(log_weights)  # by particle id

    def returned(trace: Trace) -> torch.Tensor:
        return trace.return_value

    mean, variance = float(post.mean(returned)), float(post.variance(returned))
    for method in ("systematic", "multinomial"):
        torch.manual_seed(17)
        n = 5000
        resampled = post.resample(n, method=method)
        assert resampled.num_particles == n
        assert torch.all(resampled.log_weights == post.log_evidence)
        # every resampled particle is one original particle, with all its sites
        for group in resampled.traces:
            for k, particle in enumerate(group["id"].value.long().tolist()):
                original = traces[particle]
                assert list(group.sites) == list(original.sites)
                for name in group.sites:
                    assert torch.equal(group[name].value[k], original[name].value)
                assert torch.equal(group.return_value[k], original.return_value)
        counts = np.bincount(resampled.values("id").long().numpy(), minlength=len(STEPS))
        resampled_mean = float(resampled.mean(returned))
        if method == "multinomial":
            # Binomial(n, w_i) counts: 5 standard errors per particle (14 particles).
            assert np.all(np.abs(counts - n * w) <= 5 * np.sqrt(n * w * (1 - w)))
            # mean of n i.i.d. draws: 4 standard errors sqrt(Var_w / n)
            assert abs(resampled_mean - mean) <= 4 * math.sqrt(variance / n)
        else:
            assert np.all((counts == np.floor(n * w)) | (counts == np.ceil(n * w)))
            # deterministic bound: total variation of f along the particles over n (see
            # test_resampled_means_agree_with_weighted_mean)
            total_variation = float(post.values(returned).diff().abs().sum())
            assert abs(resampled_mean - mean) <= total_variation / n


def test_select_maps_global_indices_to_group_and_particle():
    post, traces, _ = varying_posterior()
    ids = post.values("id")
    for k in range(post.num_particles):
        one = post.select(torch.tensor([k]))
        assert one.num_particles == 1
        assert torch.equal(one.values("id"), ids[k : k + 1])
        assert torch.equal(one.log_weights, post.log_weights[k : k + 1])
        assert torch.equal(
            one.values(lambda t: t.return_value), traces[int(ids[k])].return_value.reshape(1)
        )
    # many indices, repeated and out of order: each selected particle keeps its weight
    index = torch.tensor([13, 0, 5, 5, 2, 13, 7, 1, 1, 1])
    chosen = post.select(index)
    assert chosen.num_particles == index.numel()
    pairs = sorted(zip(chosen.values("id").tolist(), chosen.log_weights.tolist()))
    expected = sorted(zip(ids[index].tolist(), post.log_weights[index].tolist()))
    assert pairs == expected


@pytest.mark.parametrize("method", ["stratified", "", None])
def test_resample_bad_method_raises(method):
    post = labelled_posterior(LABEL_LOG_WEIGHTS)
    with pytest.raises(ValueError, match="method"):
        post.resample(4, method=method)


@pytest.mark.parametrize("num_particles", [0, -3, 2.5, "10", True])
def test_resample_bad_num_particles_raises(num_particles):
    post = labelled_posterior(LABEL_LOG_WEIGHTS)
    with pytest.raises(ValueError, match="num_particles"):
        post.resample(num_particles)


def test_resample_takes_a_numpy_integer():
    resampled = labelled_posterior(LABEL_LOG_WEIGHTS).resample(np.int64(5))
    assert resampled.num_particles == 5 and type(resampled.num_particles) is int


def test_resample_all_zero_weights_raises():
    post = make_posterior({"a": torch.zeros(4)}, torch.full((4,), -math.inf))
    with pytest.raises(ValueError):
        post.resample()


# ---------------------------------------------------------------------------------------
# marginals
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("site", ["a", "b", "c"])
def test_marginal_is_an_empirical_with_the_posterior_moments(site):
    post, _ = random_posterior(18)
    marginal = post.marginal(site)
    assert isinstance(marginal, Empirical)
    assert marginal.event_shape == post.values(site).shape[1:]
    torch.testing.assert_close(marginal.mean, post.mean(site), rtol=RTOL, atol=0)
    torch.testing.assert_close(marginal.variance, post.variance(site), rtol=RTOL, atol=0)


def test_marginal_of_a_function_across_groups():
    post, _, _ = varying_posterior()

    def returned(trace: Trace) -> torch.Tensor:
        return trace.return_value

    marginal = post.marginal(returned)
    assert isinstance(marginal, Empirical)
    torch.testing.assert_close(marginal.mean, post.mean(returned), rtol=RTOL, atol=0)
    torch.testing.assert_close(marginal.variance, post.variance(returned), rtol=RTOL, atol=0)
    # the mass of an atom is the total weight of the particles with that value
    value = post.values(returned)[3]
    mass = post.weights[post.values(returned) == value].sum()
    assert float(marginal.log_prob(value)) == pytest.approx(math.log(float(mass)), rel=RTOL)


def test_empirical_marginal_is_pyros_name_for_marginal():
    post, _ = random_posterior(19)
    marginal = EmpiricalMarginal(post, "a")
    assert isinstance(marginal, Empirical)
    assert torch.equal(marginal.values, post.values("a"))
    assert torch.equal(marginal.log_weights, post.log_weights)


# ---------------------------------------------------------------------------------------
# the particle count: num_particles, and num_samples as its deprecated name
# ---------------------------------------------------------------------------------------


def streamed_posterior(**counts) -> StreamedPosterior:
    log_sum = torch.tensor(0.0, dtype=torch.float64)
    return StreamedPosterior(
        num_particles=counts.pop("num_particles", 100),
        log_sum_weights=log_sum,
        log_sum_squared_weights=log_sum,  # ESS = 1
        khat=torch.tensor(counts.pop("khat", 0.2), dtype=torch.float64),
        means={},
        variances={},
        samples=None,
        **counts,
    )


def test_deprecated_num_samples_still_answers_and_warns():
    post = make_posterior({"a": torch.zeros(7)}, torch.zeros(7))
    batch = BatchPosterior(torch.zeros(5, 3), posteriors=[post] * 3)
    streamed = streamed_posterior(num_particles=9)
    for posterior, n in ((post, 7), (batch, 5), (streamed, 9)):
        assert posterior.num_particles == n
        with pytest.warns(DeprecationWarning, match=r"num_samples is deprecated.*num_particles"):
            assert posterior.num_samples == n


def test_resample_accepts_the_deprecated_num_samples_argument():
    post = labelled_posterior(LABEL_LOG_WEIGHTS)
    torch.manual_seed(20)
    expected = post.resample(num_particles=6)
    torch.manual_seed(20)
    with pytest.warns(DeprecationWarning, match="num_samples="):
        resampled = post.resample(num_samples=6)
    assert torch.equal(resampled.values("i"), expected.values("i"))
    with pytest.raises(TypeError, match="num_particles= only"):
        post.resample(num_particles=6, num_samples=6)


def test_reprs_name_the_particle_count():
    post = make_posterior({"a": torch.zeros(7)}, torch.zeros(7))
    batch = BatchPosterior(torch.zeros(5, 3), posteriors=[post] * 3)
    assert repr(post).startswith("Posterior(num_particles=7,")
    assert repr(batch) == "BatchPosterior(num_datasets=3, num_particles=5)"


# ---------------------------------------------------------------------------------------
# one problems report for every posterior type
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts",
    [
        {"num_nan_weights": 2, "num_infinite_weights": 1, "nonfinite_sites": {"x": 3}},
        {"num_zero_weights": 100},
        {},  # ESS = 1 < 0.001 N is no problem at N = 100: nothing
        {"num_particles": 5000},  # ESS = 1 < 5
        {"num_particles": 5000, "khat": 0.9},
    ],
)
def test_streamed_and_stored_posteriors_report_the_same_problems(counts):
    streamed = streamed_posterior(**dict(counts))
    expected = diagnostics.weight_problems(
        streamed.num_particles,
        streamed.ess,
        streamed.khat,
        streamed.num_nan_weights,
        streamed.num_infinite_weights,
        streamed.num_zero_weights,
        streamed.nonfinite_sites,
    )
    assert streamed.problems() == expected
    if counts.get("num_particles") == 5000:
        assert expected[0].endswith("use more particles or a better proposal")


def test_batch_problems_count_the_checks_of_one_posterior():
    # Data sets: healthy, one NaN weight, one +inf weight, all zero, one dominant weight (a
    # tiny ESS and a heavy tail).
    n = 5000
    log_weights = 0.1 * torch.randn(n, 5, dtype=torch.float64)
    log_weights[0, 1] = math.nan
    log_weights[0, 2] = math.inf
    log_weights[:, 3] = -math.inf
    log_weights[:, 4] -= 60.0
    log_weights[17, 4] = 0.0
    batch = BatchPosterior(log_weights, posteriors=[make_posterior({}, log_weights[:, 0])] * 5)
    singles = [
        make_posterior({"a": torch.zeros(n)}, log_weights[:, b]).problems() for b in range(5)
    ]
    assert [len(found) for found in singles] == [0, 1, 1, 1, 2]
    # the +inf data set counts once, as non-finite, not also for its k-hat of +inf
    assert batch.problems() == (
        f"of 5 data sets: 2 with NaN or +inf weights, 1 with all weights zero, "
        f"1 with ESS/N below {diagnostics.MIN_ESS_FRACTION} (or ESS about 1), "
        f"1 with Pareto k-hat above {diagnostics.khat_threshold(n):.2f}"
    )


@pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning")
def test_summary_lists_latent_sites_with_their_errors_and_the_diagnostics():
    torch.manual_seed(0)
    from infcomp.examples.gaussian import DATA, gaussian

    post = ic.importance(gaussian, DATA, num_particles=2000)
    text = post.summary()
    lines = text.splitlines()
    assert lines[0].split() == ["site", "mean", "std", "mcse_mean", "mcse_sd", "5%", "50%", "95%"]
    row = lines[1].split()
    assert row[0] == "z" and float(row[1]) == pytest.approx(float(post.mean("z")), abs=1e-4)
    assert float(row[3]) == pytest.approx(float(post.mcse("z")), abs=1e-4)
    assert float(row[4]) == pytest.approx(float(post.mcse("z", "sd")), abs=1e-4)
    assert f"N = 2000, ESS = {float(post.ess):.1f}" in lines[-1]
    assert "x1" not in text  # observed sites are not summarized
    assert repr(post).startswith("Posterior(num_particles=2000")


def test_summary_shows_vector_and_matrix_sites_one_row_per_element():
    n = 40
    gen = torch.Generator().manual_seed(5)
    w, m = torch.randn(n, 3, generator=gen), torch.randn(n, 2, 2, generator=gen)
    post = make_posterior({"s": torch.randn(n, generator=gen), "w": w, "m": m}, torch.randn(n))
    rows = {line.split()[0]: line.split()[1:] for line in post.summary().splitlines()[1:-1]}
    assert list(rows)[:4] == ["s", "w[0]", "w[1]", "w[2]"]
    assert list(rows)[4:] == ["m[0,0]", "m[0,1]", "m[1,0]", "m[1,1]"]
    means, errors = post.mean("w"), post.mcse("w")
    for i in range(3):
        assert float(rows[f"w[{i}]"][0]) == pytest.approx(float(means[i]), abs=1e-4)
        assert float(rows[f"w[{i}]"][2]) == pytest.approx(float(errors[i]), abs=1e-4)
    only_w = post.summary(["w"]).splitlines()
    assert [line.split()[0] for line in only_w[1:-1]] == ["w[0]", "w[1]", "w[2]"]
    assert post.summary("w") == post.summary(["w"])
    assert float(post.summary(["m"]).splitlines()[2].split()[1]) == pytest.approx(
        float(post.mean("m")[0, 1]), abs=1e-4
    )


def test_mcse_rejects_an_unknown_method():
    post = make_posterior({"a": torch.zeros(3)}, torch.zeros(3))
    with pytest.raises(ValueError, match="method must be 'mean' or 'sd', got 'median'"):
        post.mcse("a", "median")  # type: ignore[arg-type]


def _spread_and_rms_error(estimates: torch.Tensor, errors: torch.Tensor) -> tuple[float, float]:
    """The run-to-run standard deviation of R estimates, the root mean square of their
    MCSEs, and a tolerance on their ratio: the sample sd of R draws has relative standard
    error sqrt((kurtosis - 1) / (4 R)) (delta method), allowed four times over."""
    deviation = estimates - estimates.mean()
    kurtosis = float(deviation.pow(4).mean() / deviation.pow(2).mean().square())
    tolerance = 4 * math.sqrt((kurtosis - 1) / (4 * len(estimates)))
    return float(estimates.std()), float(errors.square().mean().sqrt()), tolerance


@pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning")
def test_mcse_matches_the_run_to_run_spread_on_the_gaussian():
    from infcomp.examples.gaussian import gaussian

    # R independent runs of N particles at once: the same data set R times.
    runs, n = 400, 1000
    data = {"x1": torch.full((runs,), 2.0), "x2": torch.full((runs,), 3.0)}
    batch = ic.importance_batch(gaussian, data, num_particles=n)
    for estimates, method in ((batch.mean("z"), "mean"), (batch.std("z"), "sd")):
        spread, rms_error, tolerance = _spread_and_rms_error(estimates, batch.mcse("z", method))
        assert rms_error == pytest.approx(spread, rel=tolerance), method


PRIOR_RARE, SHIFT, OBSERVED = 0.002, 3.0, 2.274  # p(z = 1 | x) ≈ 0.02, prior 0.002


def rare_assignment_mixture() -> None:
    """x ~ N(0, 1) or, rarely (z = 1), N(3, 1): the data make the rare component ten
    times likelier than the prior says."""
    z = ic.sample("z", torch.distributions.Bernoulli(PRIOR_RARE))
    ic.observe("x", Normal(SHIFT * z, 1.0))


@pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning")
def test_mcse_sees_the_error_of_a_rare_assignment_that_the_ess_undersells():
    odds = PRIOR_RARE / (1 - PRIOR_RARE) * math.exp(SHIFT * OBSERVED - SHIFT**2 / 2)
    exact = odds / (1 + odds)  # p(z = 1 | x) by enumeration
    runs, n = 400, 10_000
    batch = ic.importance_batch(rare_assignment_mixture, {"x": torch.full((runs,), OBSERVED)}, n)
    estimates = batch.mean("z")
    spread, rms_error, tolerance = _spread_and_rms_error(estimates, batch.mcse("z"))
    assert float(estimates.mean()) == pytest.approx(exact, abs=4 * spread / math.sqrt(runs))
    assert rms_error == pytest.approx(spread, rel=tolerance)
    # The asymptotic variance of the estimate is that of a binomial count of the rare
    # particles: p^2 (1 - p)^2 / (N pi (1 - pi)), pi the prior probability.
    asymptotic = exact * (1 - exact) / math.sqrt(n * PRIOR_RARE * (1 - PRIOR_RARE))
    assert spread == pytest.approx(asymptotic, rel=tolerance)
    # The ESS raises no alarm (most particles count), yet sqrt(p (1 - p) / ESS) is
    # about a third of the actual error: E[w̄^2] = (p^2 / pi + (1-p)^2 / (1-pi)) / N,
    # so the ratio is sqrt(p / pi / (1 + p^2 / pi)) ≈ 2.9 here.
    assert float(batch.ess.min()) > 0.7 * n
    from_ess = float((exact * (1 - exact) / batch.ess).sqrt().mean())
    assert spread > 2.4 * from_ess
