"""Tests for infcomp.resampling: multinomial and systematic resampling indices.

Statistical tolerances are derived from the Monte Carlo error of the count being tested
(binomial standard errors); each test says how. Every random test seeds torch itself.
"""

from __future__ import annotations

import math

import pytest
import torch

from infcomp.resampling import (
    multinomial_indices,
    residual_indices,
    stratified_indices,
    systematic_indices,
)

SCHEMES = [multinomial_indices, systematic_indices, stratified_indices, residual_indices]

# Unnormalized weights with a spread of magnitudes (the smallest has normalized weight ~0.007).
WEIGHTS = torch.tensor([0.05, 1.0, 2.5, 0.3, 1.7, 0.9, 0.6], dtype=torch.float64)


def normalized(weights: torch.Tensor) -> torch.Tensor:
    weights = weights.to(torch.float64)
    return weights / weights.sum()


# ---------------------------------------------------------------------------------------
# shapes and ranges
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("num_samples", [1, 3, 7, 50])
def test_indices_have_requested_shape_dtype_and_range(scheme, num_samples):
    torch.manual_seed(1)
    index = scheme(WEIGHTS, num_samples)
    assert index.shape == (num_samples,)
    assert index.dtype == torch.long
    assert int(index.min()) >= 0
    assert int(index.max()) < WEIGHTS.numel()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_single_particle_is_always_drawn(scheme):
    torch.manual_seed(2)
    index = scheme(torch.tensor([0.3]), 25)
    assert torch.equal(index, torch.zeros(25, dtype=torch.long))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_float32_weights_are_accepted(scheme):
    torch.manual_seed(3)
    index = scheme(WEIGHTS.to(torch.float32), 40)
    assert index.shape == (40,)
    assert int(index.max()) < WEIGHTS.numel()


def test_systematic_indices_are_sorted():
    for seed in range(20):
        torch.manual_seed(seed)
        index = systematic_indices(WEIGHTS, 31)
        assert torch.equal(index, index.sort().values)


# ---------------------------------------------------------------------------------------
# distribution of the counts
# ---------------------------------------------------------------------------------------


def test_multinomial_counts_match_weights():
    torch.manual_seed(4)
    n = 200_000
    w = normalized(WEIGHTS)
    counts = torch.bincount(multinomial_indices(WEIGHTS, n), minlength=w.numel()).double()
    expected = n * w
    # Each count is Binomial(n, w_i): 5 standard errors per atom, so a false failure has
    # probability below 7 * 6e-7 (Bonferroni over the 7 atoms).
    tolerance = 5 * torch.sqrt(n * w * (1 - w))
    assert torch.all((counts - expected).abs() <= tolerance), (counts, expected, tolerance)


@pytest.mark.parametrize("num_samples", [1, 4, 7, 10, 23, 100])
def test_systematic_counts_are_floor_or_ceil_of_n_w(num_samples):
    w = normalized(WEIGHTS)
    expected = num_samples * w
    for seed in range(25):
        torch.manual_seed(seed)
        counts = torch.bincount(systematic_indices(WEIGHTS, num_samples), minlength=w.numel())
        assert int(counts.sum()) == num_samples
        # n w_i is never an integer for these weights, so floor and ceil differ by one.
        assert torch.all(counts >= expected.floor()), (counts, expected)
        assert torch.all(counts <= expected.ceil()), (counts, expected)


def test_systematic_counts_are_unbiased():
    n, repetitions = 10, 3000
    w = normalized(WEIGHTS)
    expected = n * w
    floor = expected.floor()
    frac = expected - floor
    torch.manual_seed(5)
    total = torch.zeros(w.numel(), dtype=torch.float64)
    for _ in range(repetitions):
        total += torch.bincount(systematic_indices(WEIGHTS, n), minlength=w.numel())
    # Per repetition, count_i = floor(n w_i) + B_i with B_i ~ Bernoulli(frac(n w_i)) (the
    # previous test checks the floor/ceil part); repetitions are independent, so
    # total_i - R floor_i is Binomial(R, frac_i). Tolerance: 5 binomial standard errors.
    excess = total - repetitions * floor
    tolerance = 5 * torch.sqrt(repetitions * frac * (1 - frac))
    assert torch.all((excess - repetitions * frac).abs() <= tolerance), (
        total / repetitions,
        expected,
    )


@pytest.mark.parametrize("scheme", SCHEMES)
def test_zero_weight_particles_are_never_drawn(scheme):
    weights = torch.tensor([0.0, 1.0, 0.0, 0.0, 2.0, 0.0, 3.0, 0.0])
    positive = weights > 0
    for seed in range(30):
        torch.manual_seed(seed)
        index = scheme(weights, 1000)
        assert torch.all(positive[index]), index[~positive[index]]
    # every particle with weight is drawn (an expected count of at least 1000/6 each)
    assert set(index.tolist()) == {1, 4, 6}


def test_light_particles_are_rarely_drawn():
    # Four particles 10^6 times lighter than the fifth: each is drawn with probability
    # ~1e-6, so in 10^5 draws the light ones are drawn Poisson(0.4) times in total;
    # P(Poisson(0.4) >= 7) < 3e-7.
    torch.manual_seed(6)
    weights = torch.tensor([1e-6, 1.0, 1e-6, 1e-6, 1e-6], dtype=torch.float64)
    counts = torch.bincount(multinomial_indices(weights, 100_000), minlength=5)
    assert int(counts.sum() - counts[1]) <= 6


# ---------------------------------------------------------------------------------------
# invalid weights
# ---------------------------------------------------------------------------------------

INVALID = {
    "all zero": torch.zeros(4),
    "nan": torch.tensor([1.0, math.nan, 2.0]),
    "inf": torch.tensor([1.0, math.inf, 2.0]),
    "negative sum": torch.tensor([-1.0, -2.0]),
    "empty": torch.zeros(0),
    "two-dimensional": torch.ones(2, 3),
    "zero-dimensional": torch.tensor(1.0),
}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_weights_raise(scheme, case):
    with pytest.raises(ValueError):
        scheme(INVALID[case], 5)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_negative_weight_raises(scheme):
    # A negative weight with a positive total is not a distribution: the cumulative sum
    # is not monotone and inverting it gives arbitrary indices. It must be rejected like
    # the other invalid weights, not silently resampled.
    with pytest.raises(ValueError):
        scheme(torch.tensor([1.0, -0.5, 1.0]), 5)
