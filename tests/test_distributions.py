"""Tests for infcomp.distributions: the discretized logistic mixture, the defensive
mixture and stacking distributions into a batch.

Statistical tolerances come from the Monte Carlo error of the quantity tested: a count
of n draws that fall on a value of probability p is Binomial(n, p), so it is checked to
within 5 standard errors, sqrt(n p (1 - p)); with Bonferroni over the at most ~60
values of a test, a correct implementation fails with probability below 60 * 5.7e-7
= 3.4e-5 (and the seeds are fixed, so the outcome is reproducible).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributions as td
from scipy.special import expit

from infcomp.distributions import (
    DefensiveMixture,
    DiscretizedLogisticMixture,
    stack_distributions,
)

DLM = DiscretizedLogisticMixture
INF = math.inf


def dlm(logits, loc, scale, lower=0, upper=INF, dtype=torch.float64, **kwargs):
    """A DiscretizedLogisticMixture from lists, in float64 unless told."""
    as_tensor = lambda x: torch.tensor(x, dtype=dtype)
    return DLM(as_tensor(logits), as_tensor(loc), as_tensor(scale), lower, upper, **kwargs)


def reference_masses(logits, loc, scale, lower, upper, values):
    """The mass function straight from its definition, in float64 numpy.

    A bin's logistic mass F(b) - F(a) is computed on the side of the location where it
    is a difference of small numbers (the survival function 1 - F(x) = F(-x) right of
    the location), so that it is accurate in both tails to ~1e-16 relative error.
    """
    logits, loc, scale = (np.asarray(x, dtype=np.float64) for x in (logits, loc, scale))
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()

    def interval(a, b):  # F(b) - F(a) per component, for scalars a < b
        za, zb = (a - loc) / scale, (b - loc) / scale
        right = za >= 0
        return np.where(right, expit(-za) - expit(-zb), expit(zb) - expit(za))

    normalizer = weights @ interval(lower - 0.5, upper + 0.5)
    return np.array([weights @ interval(k - 0.5, k + 0.5) / normalizer for k in values])


def assert_frequencies_match(samples, values, probabilities):
    """Counts of each value within 5 binomial standard errors of n * p (see the module
    docstring), and the count of samples off ``values`` within 5 standard errors of
    n * (1 - sum p)."""
    samples = samples.reshape(-1).double()
    n = samples.numel()
    probabilities = torch.as_tensor(np.asarray(probabilities), dtype=torch.float64)
    values = torch.as_tensor(np.asarray(values), dtype=torch.float64)
    counts = (samples.unsqueeze(-1) == values).sum(0).double()
    expected = n * probabilities
    tolerance = 5 * torch.sqrt(n * probabilities * (1 - probabilities)) + 1e-9
    assert torch.all((counts - expected).abs() <= tolerance), (values, counts, expected)
    rest = float(1 - probabilities.sum().clamp(max=1))
    off = n - float(counts.sum())
    assert abs(off - n * rest) <= 5 * math.sqrt(n * rest * (1 - rest)) + 1e-9, (off, n * rest)


# ---------------------------------------------------------------------------------------
# DiscretizedLogisticMixture: the mass function
# ---------------------------------------------------------------------------------------

# (logits, loc, scale, lower, upper): narrow and wide, bounded and unbounded, lower != 0.
SETTINGS = [
    ([0.0], [3.2], [1.5], 0, INF),
    ([0.3, -0.5], [2.0, 11.0], [0.7, 3.0], 0, INF),
    ([0.0, 1.0, -1.0], [-4.0, 0.5, 6.0], [0.5, 2.0, 1.0], -7, INF),
    ([0.0], [5.3], [0.01], 3, INF),
    ([0.0, 0.0], [2.6, 4.4], [0.01, 0.01], 0, 10),
    ([0.2, -0.2], [30.0, 120.0], [50.0, 20.0], 0, INF),
    ([0.0], [0.0], [1.0], 30, 33),
    ([0.0], [0.0], [1.0], -33, -30),
    ([1.0, 0.0], [-20.0, 3.0], [1.0, 1.0], 0, INF),
    ([0.0], [2.0], [1000.0], -3, 4),
]


def support_grid(lower, upper, loc, scale):
    """Every value of [lower, upper] that carries mass above ~1e-30 (wide enough that
    the mass beyond it is negligible next to the test tolerances)."""
    reach = max(abs(m) for m in loc) + 80 * max(scale)
    low = lower if math.isfinite(lower) else -reach
    high = upper if math.isfinite(upper) else reach
    return np.arange(low, high + 1, dtype=np.float64)


@pytest.mark.parametrize("setting", SETTINGS)
def test_masses_sum_to_one(setting):
    logits, loc, scale, lower, upper = setting
    values = support_grid(lower, upper, loc, scale)
    for dtype, tolerance in [(torch.float64, 1e-10), (torch.float32, 1e-4)]:
        d = dlm(logits, loc, scale, lower, upper, dtype=dtype)
        total = d.log_prob(torch.tensor(values, dtype=dtype)).double().exp().sum()
        assert abs(float(total) - 1) < tolerance, (dtype, float(total))


@pytest.mark.parametrize("setting", SETTINGS)
def test_log_prob_equals_direct_float64_computation(setting):
    logits, loc, scale, lower, upper = setting
    values = support_grid(lower, upper, loc, scale)
    reference = reference_masses(logits, loc, scale, lower, upper, values)
    keep = reference > 1e-250  # below that the float64 reference itself underflows
    d = dlm(logits, loc, scale, lower, upper)
    got = d.log_prob(torch.tensor(values[keep])).numpy()
    np.testing.assert_allclose(got, np.log(reference[keep]), rtol=1e-9, atol=1e-9)


def test_far_tail_mass_is_finite_and_accurate_in_float32():
    # Mass 1e-30 in the right tail of one logistic: log P ≈ -69, not -inf or NaN.
    k = 69.0
    for lower, upper in [(0, INF), (-INF, INF), (0, 200)]:
        d = dlm([0.0], [0.0], [1.0], lower, upper, dtype=torch.float32)
        reference = math.log(reference_masses([0.0], [0.0], [1.0], lower, upper, [k])[0])
        got = float(d.log_prob(torch.tensor(k)))
        assert math.isfinite(got)
        assert -70 < reference < -68
        assert abs(got - reference) < 1e-5 * abs(reference)
    # And in the left tail, both sides of a two-component mixture, and very far out.
    d = dlm([0.0, 0.0], [-5.0, 5.0], [1.0, 1.0], -INF, INF, dtype=torch.float32)
    for k in [-75.0, 75.0]:
        reference = math.log(
            reference_masses([0.0, 0.0], [-5.0, 5.0], [1.0, 1.0], -INF, INF, [k])[0]
        )
        got = float(d.log_prob(torch.tensor(k)))
        assert math.isfinite(got) and abs(got - reference) < 1e-5 * abs(reference), (k, got)
    for k in [-2000.0, 2000.0]:
        # Far beyond float64's range of masses: there σ(-z) = e^{-z} to relative e^{-1995},
        # so log P = log(½ (1 - e^{-1})) - (|k| - ½) + log(e^5 + e^{-5}).
        reference = (
            math.log(0.5 * (1 - math.exp(-1)))
            - (abs(k) - 0.5)
            + math.log(math.exp(5) + math.exp(-5))
        )
        got = float(d.log_prob(torch.tensor(k)))
        assert math.isfinite(got) and abs(got - reference) < 1e-5 * abs(reference), (k, got)


def test_narrow_scale_puts_the_mass_on_the_nearest_integer():
    d = dlm([0.0], [5.3], [0.01], 0, INF, dtype=torch.float32)
    log_p = d.log_prob(torch.arange(0.0, 12.0))
    assert torch.isfinite(log_p).all()
    assert float(log_p[5]) > -1e-6
    # P(6) = F(6.5) - F(5.5) ≈ exp(-20) (the bin starts 0.2 = 20 scales above the location).
    assert abs(float(log_p[6]) - (-20.0)) < 1e-3


def test_truncation_far_in_a_tail_normalizes():
    # All of [30, 33] lies ~30 scales right of the location: masses ∝ e^{-k}.
    d = dlm([0.0], [0.0], [1.0], 30, 33)
    p = d.log_prob(torch.arange(30.0, 34.0)).exp()
    expected = torch.exp(-torch.arange(4.0, dtype=torch.float64))
    np.testing.assert_allclose(p.numpy(), (expected / expected.sum()).numpy(), rtol=1e-10)


def test_log_prob_is_minus_inf_off_the_support_without_validation():
    d = dlm([0.0, 0.5], [1.0, 3.0], [1.0, 2.0], 2, 9, validate_args=False)
    values = torch.tensor([1.0, 10.0, 2.5, -INF, INF, 2.0, 9.0])
    log_p = d.log_prob(values)
    assert torch.all(log_p[:5] == -INF)
    assert torch.isfinite(log_p[5:]).all()
    unbounded = dlm([0.0], [1.0], [1.0], -INF, INF, validate_args=False)
    log_p = unbounded.log_prob(torch.tensor([INF, -INF, math.nan, 0.5, 1e6]))
    assert torch.all(log_p[:4] == -INF) and torch.isfinite(log_p[4])


def test_log_prob_raises_off_the_support_with_validation():
    d = dlm([0.0], [1.0], [1.0], 2, 9, validate_args=True)
    for bad in [1.0, 10.0, 2.5]:
        with pytest.raises(ValueError):
            d.log_prob(torch.tensor(bad, dtype=torch.float64))
    assert torch.isfinite(d.log_prob(torch.tensor(4.0, dtype=torch.float64)))


@pytest.mark.parametrize("bounds", [(0, 50), (0, INF), (-INF, INF), (-INF, 10), (3, 3)])
def test_log_prob_gradients_are_finite_and_correct(bounds):
    lower, upper = bounds
    logits = torch.tensor([0.0, 0.3], requires_grad=True)
    loc = torch.tensor([1.0, 40.0], requires_grad=True)
    scale = torch.tensor([0.5, 0.05], requires_grad=True)
    d = DLM(logits, loc, scale, lower=lower, upper=upper, validate_args=False)
    # In and off the support (off it: -inf, with zero and not NaN gradients).
    log_p = d.log_prob(torch.tensor([0.0, 3.0, 40.0, 49.0, -1.0, 2.5, 60.0, INF]))
    log_p[torch.isfinite(log_p)].sum().backward()
    for parameter in (logits, loc, scale):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
    # And the gradients are right: finite differences in float64.
    values = torch.tensor([3.0, 5.0, 8.0], dtype=torch.float64)

    def total_log_prob(logits, loc, scale):
        q = DLM(logits, loc, scale, lower=lower, upper=upper, validate_args=False)
        log_p = q.log_prob(values)
        return torch.where(torch.isfinite(log_p), log_p, 0.0).sum()

    parameters = (
        torch.tensor([0.0, 0.3], dtype=torch.float64, requires_grad=True),
        torch.tensor([1.0, 6.0], dtype=torch.float64, requires_grad=True),
        torch.tensor([0.7, 2.0], dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(total_log_prob, parameters)


def test_bad_parameters_raise():
    with pytest.raises(ValueError):
        dlm([0.0], [0.0], [1.0], 0.5, INF)
    with pytest.raises(ValueError):
        dlm([0.0], [0.0], [1.0], 5, 3)
    with pytest.raises(ValueError):
        dlm([0.0], [0.0], [1.0], INF, INF)
    with pytest.raises(ValueError):
        dlm([0.0], [0.0], [-1.0], 0, INF, validate_args=True)
    with pytest.raises(ValueError):
        DLM(
            torch.zeros(2),
            torch.zeros(2),
            torch.ones(2),
            lower=torch.tensor([0.0, 0.5]),
            validate_args=True,
        )
    with pytest.raises(ValueError):
        DLM(torch.zeros(()), torch.zeros(()), torch.ones(()))
    with pytest.raises(ValueError):
        DLM(torch.zeros(3, 2), torch.zeros(4, 2), torch.ones(2))


def test_mean_and_variance_are_not_implemented():
    d = dlm([0.0], [1.0], [1.0])
    with pytest.raises(NotImplementedError):
        _ = d.mean
    with pytest.raises(NotImplementedError):
        _ = d.variance


def test_support_constraints():
    assert td.constraints.is_dependent(DLM.support)  # values off it score -inf, not bad data
    assert dlm([0.0], [1.0], [1.0]).support is td.constraints.nonnegative_integer
    above = dlm([0.0], [1.0], [1.0], lower=-3).support
    assert above.lower_bound == -3 and not hasattr(above, "upper_bound")
    interval = dlm([0.0], [1.0], [1.0], lower=2, upper=7).support
    assert (interval.lower_bound, interval.upper_bound) == (2, 7)
    assert all(s.is_discrete for s in (above, interval))
    check = dlm([0.0], [1.0], [1.0], lower=-2, upper=7).support.check
    assert check(torch.tensor([-2.0, 0.0, 7.0])).all()
    assert not check(torch.tensor([-3.0, 8.0, 0.5])).any()
    batched = DLM(
        torch.zeros(2, 1),
        torch.zeros(2, 1),
        torch.ones(2, 1),
        lower=torch.tensor([0.0, 3.0]),
        upper=torch.tensor([5.0, INF]),
    )
    assert batched.support.check(torch.tensor([5.0, 100.0])).all()
    assert not batched.support.check(torch.tensor([6.0, 2.0])).any()


# ---------------------------------------------------------------------------------------
# DiscretizedLogisticMixture: sampling
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", SETTINGS)
def test_sample_frequencies_match_the_mass_function(setting):
    torch.manual_seed(11)
    logits, loc, scale, lower, upper = setting
    d = dlm(logits, loc, scale, lower, upper, dtype=torch.float32)
    samples = d.sample((100_000,))
    values = support_grid(lower, upper, loc, scale)
    probabilities = reference_masses(logits, loc, scale, lower, upper, values)
    shown = probabilities > 1e-4  # per-value checks where a count is informative
    assert_frequencies_match(samples, values[shown], probabilities[shown])


def test_component_choice_accounts_for_truncation():
    # Component 0 (weight e/(1+e) ≈ 0.73 before truncation) sits 20 scales below
    # lower = 0: its mass on [0, inf) is ~2e-9. Choosing components by the weights
    # alone would pile ~73% of the draws on 0; P(0) is really ~0.047.
    torch.manual_seed(12)
    d = dlm([1.0, 0.0], [-20.0, 3.0], [1.0, 1.0], 0, INF, dtype=torch.float32)
    samples = d.sample((50_000,))
    p0 = reference_masses([1.0, 0.0], [-20.0, 3.0], [1.0, 1.0], 0, INF, [0.0])[0]
    n = samples.numel()
    assert abs(float((samples == 0).sum()) - n * p0) <= 5 * math.sqrt(n * p0 * (1 - p0))


def test_samples_are_integers_within_bounds_for_random_parameters():
    torch.manual_seed(13)
    batch, components = 500, 3
    logits = torch.randn(batch, components) * 3
    loc = torch.randn(batch, components) * 50
    scale = torch.exp(torch.randn(batch, components) * 2)
    lower = torch.randint(-60, 60, (batch,)).float()
    width = torch.randint(0, 30, (batch,)).float()
    upper = torch.where(torch.rand(batch) < 0.5, lower + width, torch.tensor(INF))
    d = DLM(logits, loc, scale, lower=lower, upper=upper)
    samples = d.sample((40,))
    assert samples.shape == (40, batch) and samples.dtype == torch.float32
    assert torch.all(samples == samples.floor())
    assert torch.all((samples >= lower) & (samples <= upper))
    assert torch.isfinite(d.log_prob(samples)).all()


def test_sampling_with_a_batch_of_bounds():
    torch.manual_seed(14)
    lower = torch.tensor([0.0, -5.0, 10.0])
    upper = torch.tensor([3.0, INF, 10.0])
    d = DLM(
        torch.zeros(3, 2),
        torch.tensor([[1.0, 8.0], [-3.0, 2.0], [0.0, 30.0]]),
        torch.tensor([[1.0, 2.0], [0.5, 3.0], [1.0, 1.0]]),
        lower=lower,
        upper=upper,
        validate_args=False,
    )
    samples = d.sample((60_000,))
    assert torch.all(samples[:, 2] == 10.0)  # a single value: the whole mass
    for i in range(2):
        values = np.arange(float(lower[i]), 40.0)
        probabilities = d.log_prob(torch.tensor(values).float().unsqueeze(-1).expand(-1, 3))[:, i]
        probabilities = probabilities.double().exp().numpy()
        shown = probabilities > 1e-4
        assert_frequencies_match(samples[:, i], values[shown], probabilities[shown])


# ---------------------------------------------------------------------------------------
# DiscretizedLogisticMixture: shapes
# ---------------------------------------------------------------------------------------


def test_batch_and_sample_shapes():
    d = DLM(torch.zeros(4, 3, 2), torch.ones(4, 3, 2), torch.ones(2), lower=torch.zeros(3))
    assert d.batch_shape == (4, 3) and d.event_shape == ()
    assert d.num_components == 2
    assert d.sample().shape == (4, 3)
    assert d.sample((5,)).shape == (5, 4, 3)
    assert d.sample((2, 5)).shape == (2, 5, 4, 3)
    assert d.log_prob(torch.ones(4, 3)).shape == (4, 3)
    assert d.log_prob(torch.ones(7, 1, 1)).shape == (7, 4, 3)
    assert DLM(torch.zeros(2), torch.ones(2), torch.ones(2)).batch_shape == ()
    with_bounds = DLM(torch.zeros(2), torch.ones(2), torch.ones(2), upper=torch.tensor([5.0, 6.0]))
    assert with_bounds.batch_shape == (2,)


def test_expand():
    d = dlm(
        [[0.0, 1.0], [0.5, -0.5], [0.0, 0.0]],
        [[1.0, 5.0], [2.0, 3.0], [0.0, 9.0]],
        [[1.0, 2.0], [0.3, 1.0], [1.0, 1.0]],
        lower=-2,
        upper=12,
    )
    e = d.expand((4, 3))
    assert isinstance(e, DLM) and e.batch_shape == (4, 3)
    assert e.sample((2,)).shape == (2, 4, 3)
    values = torch.arange(-2.0, 13.0, dtype=torch.float64).view(-1, 1, 1)
    assert torch.equal(
        e.log_prob(values), d.log_prob(values.squeeze(-1)).unsqueeze(1).expand(-1, 4, 3)
    )
    assert e.support.lower_bound == -2 and e.support.upper_bound == 12


# ---------------------------------------------------------------------------------------
# DefensiveMixture
# ---------------------------------------------------------------------------------------


def test_defensive_log_prob_is_the_mixture_density():
    q = td.Normal(
        torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([0.1, 2.0], dtype=torch.float64)
    )
    p = td.Normal(
        torch.tensor([0.0, -1.0], dtype=torch.float64),
        torch.tensor([10.0, 1.0], dtype=torch.float64),
    )
    eps = 0.2
    mixture = DefensiveMixture(q, p, eps)
    x = torch.linspace(-30, 30, 61, dtype=torch.float64).unsqueeze(-1).expand(-1, 2)
    direct = torch.log((1 - eps) * q.log_prob(x).exp() + eps * p.log_prob(x).exp())
    finite = torch.isfinite(direct)  # in the far tails the direct density underflows
    assert torch.allclose(mixture.log_prob(x)[finite], direct[finite], rtol=1e-12, atol=1e-12)
    # Where the direct computation underflows, the log-space one is the dominant term:
    # the wide prior's in the first column, the wider proposal's in the second.
    far = torch.tensor([[1e3, 1e3]], dtype=torch.float64)
    dominant = torch.stack(
        [math.log(eps) + p.log_prob(far)[:, 0], math.log(1 - eps) + q.log_prob(far)[:, 1]], -1
    )
    assert torch.allclose(mixture.log_prob(far), dominant, rtol=1e-12)


def test_defensive_weights_are_bounded_by_one_over_epsilon():
    torch.manual_seed(21)
    q = td.Normal(torch.tensor(0.0), torch.tensor(0.1))  # far lighter tails than the prior
    p = td.Normal(torch.tensor(0.0), torch.tensor(10.0))
    eps = 0.05
    mixture = DefensiveMixture(q, p, eps)
    x = torch.cat([mixture.sample((20_000,)), torch.linspace(-60, 60, 1001)])
    log_w = p.log_prob(x) - mixture.log_prob(x)
    assert float(log_w.max()) <= -math.log(eps) + 1e-5
    assert float(log_w.max()) > -math.log(eps) - 0.1  # the bound is nearly reached
    assert float((p.log_prob(x) - q.log_prob(x)).max()) > 1e4  # without it, unbounded


def test_defensive_sampling_frequencies():
    torch.manual_seed(22)
    q = td.Normal(torch.full((3,), 100.0), 1.0)  # the parts are told apart by sign
    p = td.Normal(torch.full((3,), -100.0), 1.0)
    eps = 0.3
    samples = DefensiveMixture(q, p, eps).sample((40_000,))
    assert samples.shape == (40_000, 3)
    n = samples.numel()
    from_prior = float((samples < 0).sum())
    assert abs(from_prior - n * eps) <= 5 * math.sqrt(n * eps * (1 - eps))
    assert torch.all(samples.abs() > 90)


def test_defensive_sampling_keeps_events_whole():
    torch.manual_seed(23)
    q = td.Independent(td.Normal(torch.full((2, 4), 100.0), 1.0), 1)
    p = td.Independent(td.Normal(torch.full((2, 4), -100.0), 1.0), 1)
    eps = 0.25
    mixture = DefensiveMixture(q, p, eps)
    assert mixture.batch_shape == (2,) and mixture.event_shape == (4,)
    samples = mixture.sample((30_000,))
    assert samples.shape == (30_000, 2, 4)
    signs = samples > 0
    assert torch.all(signs.all(-1) | (~signs).all(-1))  # one part per event
    n = 30_000 * 2
    from_prior = float((~signs[..., 0]).sum())
    assert abs(from_prior - n * eps) <= 5 * math.sqrt(n * eps * (1 - eps))
    assert mixture.log_prob(samples).shape == (30_000, 2)


def test_defensive_mixture_of_counts_samples_the_mixture_mass():
    torch.manual_seed(24)
    q = dlm([0.0], [12.0], [1.0], 0, INF, dtype=torch.float32)
    p = td.Poisson(torch.tensor(2.0))
    eps = 0.2
    mixture = DefensiveMixture(q, p, eps)
    samples = mixture.sample((100_000,))
    values = np.arange(0.0, 40.0)
    probabilities = mixture.log_prob(torch.tensor(values).float()).double().exp().numpy()
    assert abs(probabilities.sum() - 1) < 1e-5
    shown = probabilities > 1e-4
    assert_frequencies_match(samples, values[shown], probabilities[shown])


def test_defensive_scores_values_outside_the_proposal_support_by_the_prior():
    q = dlm([0.0], [3.0], [1.0], 0, 10, dtype=torch.float32)
    p = td.Poisson(torch.tensor(3.0))
    mixture = DefensiveMixture(q, p, 0.1)
    value = torch.tensor(15.0)
    assert torch.allclose(mixture.log_prob(value), math.log(0.1) + p.log_prob(value))
    checked = DefensiveMixture(
        q, td.Poisson(torch.tensor(3.0), validate_args=True), 0.1, validate_args=True
    )
    with pytest.raises(ValueError):
        checked.log_prob(torch.tensor(-1.0))
    unchecked = DefensiveMixture(q, p, 0.1, validate_args=False)
    assert unchecked.log_prob(torch.tensor(-1.0)) == -INF


def test_defensive_samples_take_the_prior_dtype():
    torch.manual_seed(25)
    q = dlm([0.0], [1.0], [1.0], 0, 3, dtype=torch.float32)
    p = td.Categorical(logits=torch.zeros(4))
    samples = DefensiveMixture(q, p, 0.5).sample((100,))
    assert samples.dtype == torch.long
    assert torch.all((samples >= 0) & (samples <= 3))


@pytest.mark.parametrize("epsilon", [0.0, 1.0, -0.1, 1.5, math.nan, True, "0.1", None])
def test_defensive_rejects_bad_epsilon(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        DefensiveMixture(td.Normal(0.0, 1.0), td.Normal(0.0, 2.0), epsilon)


def test_defensive_rejects_mismatched_parts():
    with pytest.raises(ValueError, match="shape"):
        DefensiveMixture(td.Normal(torch.zeros(3), 1.0), td.Normal(torch.zeros(2), 1.0), 0.1)
    with pytest.raises(ValueError, match="shape"):
        DefensiveMixture(
            td.Independent(td.Normal(torch.zeros(3), 1.0), 1), td.Normal(torch.zeros(3), 1.0), 0.1
        )
    with pytest.raises(ValueError, match="discrete"):
        DefensiveMixture(td.Normal(torch.zeros(3), 1.0), td.Poisson(torch.ones(3)), 0.1)


def test_defensive_support_moments_and_expand():
    q = td.Normal(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]))
    p = td.Normal(torch.tensor([10.0, 1.0]), torch.tensor([2.0, 3.0]))
    mixture = DefensiveMixture(q, p, 0.2)
    assert mixture.support is p.support and not mixture.has_rsample
    # mean = 0.8·0 + 0.2·10 = 2; E x² = 0.8·1 + 0.2·(4 + 100) = 21.6; var = 21.6 - 4.
    assert torch.allclose(mixture.mean, torch.tensor([2.0, 1.0]))
    assert torch.allclose(mixture.variance, torch.tensor([17.6, 0.8 * 1 + 0.2 * 9]))
    e = mixture.expand((5, 2))
    assert isinstance(e, DefensiveMixture) and e.batch_shape == (5, 2)
    assert e.epsilon == 0.2 and e.sample((3,)).shape == (3, 5, 2)
    x = torch.randn(5, 2)
    assert torch.allclose(e.log_prob(x), mixture.log_prob(x))


# ---------------------------------------------------------------------------------------
# stack_distributions
# ---------------------------------------------------------------------------------------


def pos(*shape):
    return torch.rand(shape) + 0.5


def spd():
    a = torch.randn(3, 3)
    return a @ a.T + torch.eye(3)


def bernoulli_probs_then_logits():
    d = td.Bernoulli(probs=torch.rand(3))
    _ = d.logits  # both attributes are now held by the instance
    return d


def categorical_logits_then_probs():
    d = td.Categorical(logits=torch.randn(3, 4))
    _ = d.probs
    return d


STACKABLE = {
    "Normal": lambda: td.Normal(torch.randn(3), pos(3)),
    "LogNormal": lambda: td.LogNormal(torch.randn(3), pos(3)),
    "Gamma": lambda: td.Gamma(pos(3), pos(3)),
    "Beta": lambda: td.Beta(pos(3), pos(3)),
    "Uniform": lambda: td.Uniform(torch.randn(3), torch.randn(3) + 5),
    "Bernoulli(probs)": lambda: td.Bernoulli(probs=torch.rand(3)),
    "Bernoulli(logits)": lambda: td.Bernoulli(logits=torch.randn(3)),
    "Bernoulli(probs, then logits read)": bernoulli_probs_then_logits,
    "Categorical(probs)": lambda: td.Categorical(probs=torch.rand(3, 4)),
    "Categorical(logits)": lambda: td.Categorical(logits=torch.randn(3, 4)),
    "Categorical(logits, then probs read)": categorical_logits_then_probs,
    "OneHotCategorical": lambda: td.OneHotCategorical(probs=torch.rand(3, 4)),
    "Poisson": lambda: td.Poisson(pos(3) * 3),
    "Geometric": lambda: td.Geometric(torch.rand(3) * 0.8 + 0.1),
    "Binomial(int total_count)": lambda: td.Binomial(5, torch.rand(3)),
    "Binomial(tensor total_count)": lambda: td.Binomial(
        torch.tensor([3.0, 5.0, 7.0]), torch.rand(3)
    ),
    "NegativeBinomial": lambda: td.NegativeBinomial(pos(3) * 2, torch.rand(3) * 0.8),
    "Dirichlet": lambda: td.Dirichlet(pos(3, 4)),
    "MultivariateNormal(covariance_matrix)": lambda: td.MultivariateNormal(
        torch.randn(3), covariance_matrix=spd()
    ),
    "MultivariateNormal(scale_tril)": lambda: td.MultivariateNormal(
        torch.randn(3), scale_tril=torch.linalg.cholesky(spd())
    ),
    "MultivariateNormal(precision_matrix)": lambda: td.MultivariateNormal(
        torch.randn(3), precision_matrix=spd()
    ),
    "Exponential": lambda: td.Exponential(pos(3)),
    "StudentT": lambda: td.StudentT(pos(3) * 3, torch.randn(3), pos(3)),
    "Laplace": lambda: td.Laplace(torch.randn(3), pos(3)),
    "Cauchy": lambda: td.Cauchy(torch.randn(3), pos(3)),
    "HalfNormal": lambda: td.HalfNormal(pos(3)),
    "Multinomial(total_count=5)": lambda: td.Multinomial(5, torch.rand(4)),
    "Independent(Normal)": lambda: td.Independent(td.Normal(torch.randn(2, 3), pos(2, 3)), 1),
    "MixtureSameFamily": lambda: td.MixtureSameFamily(
        td.Categorical(logits=torch.randn(3, 2)), td.Normal(torch.randn(3, 2), pos(3, 2))
    ),
    "DiscretizedLogisticMixture": lambda: DLM(
        torch.randn(3, 2), torch.randn(3, 2) * 3, pos(3, 2), lower=-2
    ),
    "DiscretizedLogisticMixture(tensor bounds)": lambda: DLM(
        torch.randn(3, 2),
        torch.randn(3, 2) * 3,
        pos(3, 2),
        lower=torch.tensor(-2.0),
        upper=torch.randint(3, 9, (3,)).float(),
    ),
    "DefensiveMixture": lambda: DefensiveMixture(td.Poisson(pos(3)), td.Poisson(pos(3) * 2), 0.1),
}


@pytest.mark.parametrize("name", list(STACKABLE))
def test_stacked_slices_are_the_distributions(name):
    torch.manual_seed(31)
    distributions = [STACKABLE[name]() for _ in range(4)]
    stacked = stack_distributions(distributions)
    assert stacked is not None, name
    first = distributions[0]
    assert type(stacked) is type(first)
    assert stacked.batch_shape == (4,) + first.batch_shape
    assert stacked.event_shape == first.event_shape
    values = torch.stack([d.sample() for d in distributions])
    individual = torch.stack([d.log_prob(v) for d, v in zip(distributions, values)])
    assert torch.allclose(stacked.log_prob(values), individual, rtol=1e-5, atol=1e-5)
    assert stacked.sample().shape == (4,) + first.batch_shape + first.event_shape
    assert stacked.sample((6,)).shape == (6, 4) + first.batch_shape + first.event_shape


def test_stacking_passes_logits_when_an_instance_holds_both():
    stacked = stack_distributions([bernoulli_probs_then_logits() for _ in range(2)])
    assert stacked is not None
    assert "logits" in vars(stacked) and "probs" not in vars(stacked)


def test_stacking_mixed_parametrizations():
    distributions = [td.Categorical(probs=torch.rand(4)), td.Categorical(logits=torch.randn(4))]
    stacked = stack_distributions(distributions)
    assert stacked is not None and stacked.batch_shape == (2,)
    values = torch.tensor([1, 3])
    individual = torch.stack([d.log_prob(v) for d, v in zip(distributions, values)])
    assert torch.allclose(stacked.log_prob(values), individual)


def test_stacking_keeps_gradients_and_validation():
    loc = torch.zeros(3, requires_grad=True)
    distributions = [td.Normal(loc + i, 1.0, validate_args=True) for i in range(2)]
    stacked = stack_distributions(distributions)
    assert stacked is not None and stacked._validate_args
    stacked.log_prob(torch.ones(2, 3)).sum().backward()
    assert loc.grad is not None and torch.allclose(loc.grad, torch.ones(3))  # (1 - 0) + (1 - 1)
    poisson = stack_distributions([td.Poisson(torch.ones(2), validate_args=True)] * 2)
    with pytest.raises(ValueError):
        poisson.log_prob(torch.full((2, 2), -1.0))


def test_stacking_a_single_distribution_adds_a_dimension():
    stacked = stack_distributions([td.Gamma(pos(3), pos(3))])
    assert stacked is not None and stacked.batch_shape == (1, 3)


UNSTACKABLE = {
    "empty": [],
    "different types": [td.Normal(0.0, 1.0), td.Laplace(0.0, 1.0)],
    "different batch shapes": [td.Normal(torch.zeros(2), 1.0), td.Normal(torch.zeros(3), 1.0)],
    "different numbers of categories": [
        td.Categorical(logits=torch.zeros(3)),
        td.Categorical(logits=torch.zeros(4)),
    ],
    "different Independent dims": [
        td.Independent(td.Normal(torch.zeros(2, 3), 1.0), 1),
        td.Independent(td.Normal(torch.zeros(2, 3), 1.0), 2),
    ],
    "different epsilons": [
        DefensiveMixture(td.Poisson(torch.ones(2)), td.Poisson(torch.ones(2)), 0.1),
        DefensiveMixture(td.Poisson(torch.ones(2)), td.Poisson(torch.ones(2)), 0.2),
    ],
    "different component counts": [
        DLM(torch.zeros(3), torch.zeros(3), torch.ones(3)),
        DLM(torch.zeros(2), torch.zeros(2), torch.ones(2)),
    ],
    "constructor needs a temperature": [td.RelaxedBernoulli(torch.tensor(0.5), torch.rand(3))] * 2,
    "non-default argument not in arg_constraints": [
        td.ContinuousBernoulli(torch.rand(3), lims=(0.4, 0.6))
    ]
    * 2,
    "different Multinomial total counts": [
        td.Multinomial(5, torch.rand(4)),
        td.Multinomial(6, torch.rand(4)),
    ],
    "a generic TransformedDistribution": [
        td.TransformedDistribution(td.Normal(0.0, 1.0), [td.transforms.ExpTransform()])
    ]
    * 2,
    "not distributions": ["a", "b"],
}


@pytest.mark.parametrize("name", list(UNSTACKABLE))
def test_unstackable_gives_none(name):
    assert stack_distributions(UNSTACKABLE[name]) is None
