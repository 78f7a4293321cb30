"""Tests for infcomp.empirical.Empirical, the weighted empirical distribution.

Deterministic results are compared with independent float64 numpy computations (rounding
tolerances); sampling frequencies with tolerances derived from binomial standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infcomp import Empirical

RTOL = 1e-12  # float64 sums of at most a few hundred terms, computed two ways


def np_softmax(log_weights: torch.Tensor) -> np.ndarray:
    lw = log_weights.double().numpy()
    w = np.exp(lw - lw.max())
    return w / w.sum()


def random_empirical(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1
    log_weights = torch.randn(shape[0], generator=gen, dtype=torch.float64) * 1.5
    return values, log_weights


# ---------------------------------------------------------------------------------------
# construction and moments
# ---------------------------------------------------------------------------------------


def test_shapes_and_weights():
    values, lw = random_empirical(0, (30, 2, 3))
    dist = Empirical(values, lw)
    assert dist.batch_shape == ()
    assert dist.event_shape == (2, 3)
    np.testing.assert_allclose(dist.weights.numpy(), np_softmax(lw), rtol=RTOL)


@pytest.mark.parametrize("shape", [(40,), (40, 3), (40, 2, 3)])
def test_mean_and_variance_match_numpy(shape):
    values, lw = random_empirical(1, shape)
    dist = Empirical(values.float(), lw)  # float32 atoms: moments still in float64
    w = np_softmax(lw)
    x = values.float().double().numpy()
    mean = np.tensordot(w, x, axes=1)
    variance = np.tensordot(w, (x - mean) ** 2, axes=1)
    assert dist.mean.dtype == torch.float64
    assert dist.mean.shape == shape[1:]
    np.testing.assert_allclose(dist.mean.numpy(), mean, rtol=RTOL)
    np.testing.assert_allclose(dist.variance.numpy(), variance, rtol=RTOL)
    np.testing.assert_allclose(dist.stddev.numpy(), np.sqrt(variance), rtol=RTOL)


def test_equal_log_weights_give_plain_moments():
    values = torch.tensor([0.0, 1.0, 5.0, 2.0])
    dist = Empirical(values, torch.full((4,), -3.0))
    assert float(dist.mean) == pytest.approx(2.0, rel=RTOL)
    assert float(dist.variance) == pytest.approx(float(values.double().var(unbiased=False)))


@pytest.mark.parametrize(
    ("values", "log_weights"),
    [
        (torch.tensor(1.0), torch.zeros(1)),  # 0-d values
        (torch.zeros(5), torch.zeros(4)),  # N mismatch
        (torch.zeros(5, 2), torch.zeros(2)),  # weights along the event dim
        (torch.zeros(5), torch.zeros(5, 1)),  # 2-d weights
        (torch.zeros(5), torch.tensor(0.0)),  # 0-d weights
    ],
)
def test_bad_shapes_raise(values, log_weights):
    with pytest.raises(ValueError):
        Empirical(values, log_weights)


# ---------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------


def test_sample_frequencies_match_weights():
    torch.manual_seed(10)
    atoms = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    log_weights = torch.tensor([0.0, 1.0, -2.0, 0.5, -math.inf, 2.0])
    dist = Empirical(atoms, log_weights)
    n = 100_000
    draws = dist.sample((n,))
    assert draws.shape == (n,)
    w = np_softmax(log_weights)
    counts = np.array([(draws == a).sum().item() for a in atoms])
    assert counts.sum() == n  # every draw is an atom
    assert counts[4] == 0  # the zero-weight atom is never drawn
    # Each count is Binomial(n, w_i): 5 standard errors per atom (false failure probability
    # below 6 * 6e-7 by Bonferroni); the zero-weight atom has tolerance 0.
    tolerance = 5 * np.sqrt(n * w * (1 - w))
    assert np.all(np.abs(counts - n * w) <= tolerance), (counts, n * w, tolerance)


def test_sample_shapes_scalar_event():
    torch.manual_seed(11)
    atoms = torch.tensor([1.0, 2.0, 3.0])
    dist = Empirical(atoms, torch.zeros(3))
    assert dist.sample().shape == ()
    assert dist.sample((5,)).shape == (5,)
    assert dist.sample(torch.Size([2, 4])).shape == (2, 4)
    assert dist.sample((3, 1, 2)).shape == (3, 1, 2)
    assert torch.isin(dist.sample((3, 1, 2)), atoms).all()


def test_sample_shapes_vector_event_keep_rows_together():
    torch.manual_seed(12)
    atoms = torch.tensor([[0.0, 1.0, 2.0], [10.0, 11.0, 12.0], [20.0, 21.0, 22.0]])
    dist = Empirical(atoms, torch.tensor([0.0, 0.5, 1.0]))
    assert dist.sample().shape == (3,)
    draws = dist.sample((4, 5))
    assert draws.shape == (4, 5, 3)
    # every drawn event is one whole atom (no mixing of components between atoms)
    rows = draws.reshape(-1, 3)
    matches = (rows[:, None, :] == atoms[None, :, :]).all(-1)
    assert torch.all(matches.sum(-1) == 1)


def test_calling_draws_a_sample_as_in_pyro():
    # Pyro's distributions are callable (``marginal()`` draws); the same seed gives the same
    # draws as sample().
    dist = Empirical(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 2.0]))
    torch.manual_seed(14)
    expected = dist.sample((7,))
    torch.manual_seed(14)
    assert torch.equal(dist((7,)), expected)
    assert dist().shape == ()


def test_sample_with_empty_sample_shape_is_empty():
    # torch distributions return an empty tensor for a sample shape with a zero in it,
    # e.g. Normal(0., 1.).sample((0,)).shape == (0,).
    dist = Empirical(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2))
    assert dist.sample((0,)).shape == (0, 2)
    assert dist.sample((0, 3)).shape == (0, 3, 2)


# ---------------------------------------------------------------------------------------
# log_prob
# ---------------------------------------------------------------------------------------


def test_log_prob_sums_weights_of_equal_atoms_scalar():
    atoms = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0])
    log_weights = torch.tensor([0.0, 0.3, -1.0, 0.7, 0.2])
    dist = Empirical(atoms, log_weights)
    w = np_softmax(log_weights)
    assert float(dist.log_prob(torch.tensor(1.0))) == pytest.approx(
        math.log(w[0] + w[2] + w[4]), rel=RTOL
    )
    assert float(dist.log_prob(torch.tensor(2.0))) == pytest.approx(math.log(w[1]), rel=RTOL)
    assert float(dist.log_prob(torch.tensor(3.0))) == pytest.approx(math.log(w[3]), rel=RTOL)
    for off in [0.0, 1.5, 2.0001, -1.0, 100.0]:
        assert dist.log_prob(torch.tensor(off)).item() == -math.inf
    # the masses of the distinct atoms sum to one
    total = dist.log_prob(torch.tensor([1.0, 2.0, 3.0])).exp().sum()
    assert float(total) == pytest.approx(1.0, rel=RTOL)


def test_log_prob_batched_scalar_queries():
    atoms = torch.tensor([1.0, 2.0, 1.0])
    log_weights = torch.tensor([0.0, 1.0, 0.5])
    dist = Empirical(atoms, log_weights)
    w = np_softmax(log_weights)
    query = torch.tensor([[1.0, 2.0, 7.0], [2.0, 2.0, 1.0]])
    result = dist.log_prob(query)
    assert result.shape == (2, 3)
    with np.errstate(divide="ignore"):
        expected = np.log(np.array([[w[0] + w[2], w[1], 0.0], [w[1], w[1], w[0] + w[2]]]))
    np.testing.assert_allclose(result.numpy(), expected, rtol=RTOL)


def test_log_prob_vector_events():
    atoms = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 1.0], [1.0, 1.0]])
    log_weights = torch.tensor([0.2, -0.4, 1.1, 0.0])
    dist = Empirical(atoms, log_weights)
    w = np_softmax(log_weights)
    assert float(dist.log_prob(torch.tensor([0.0, 1.0]))) == pytest.approx(
        math.log(w[0] + w[2]), rel=RTOL
    )
    # matching one component is not enough: [0, 1.5] and [1, 2] are off the atoms
    assert dist.log_prob(torch.tensor([0.0, 1.5])).item() == -math.inf
    assert dist.log_prob(torch.tensor([1.0, 2.0])).item() == -math.inf
    # batched queries of vector events: batch shape (2, 3)
    query = torch.tensor(
        [
            [[0.0, 1.0], [0.0, 2.0], [1.0, 1.0]],
            [[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]],
        ]
    )
    result = dist.log_prob(query)
    assert result.shape == (2, 3)
    with np.errstate(divide="ignore"):
        expected = np.log(
            np.array([[w[0] + w[2], w[1], w[3]], [0.0, w[0] + w[2], 0.0]], dtype=np.float64)
        )
    np.testing.assert_allclose(result.numpy(), expected, rtol=RTOL)


def test_log_prob_of_integer_atoms_is_minus_inf_between_them():
    # Atoms of an integer dtype (e.g. the marginal of a Categorical site): a non-integer
    # value is not an atom, whatever dtype the atoms have.
    dist = Empirical(torch.tensor([0, 1, 2]), torch.zeros(3))
    assert float(dist.log_prob(torch.tensor(1))) == pytest.approx(-math.log(3), rel=RTOL)
    assert dist.log_prob(torch.tensor(0.5)).item() == -math.inf
    assert dist.log_prob(torch.tensor(1.7)).item() == -math.inf


def test_log_prob_of_zero_weight_atom_is_minus_inf():
    dist = Empirical(torch.tensor([1.0, 2.0]), torch.tensor([0.0, -math.inf]))
    assert dist.log_prob(torch.tensor(2.0)).item() == -math.inf
    assert dist.log_prob(torch.tensor(1.0)).item() == 0.0


# ---------------------------------------------------------------------------------------
# histogram
# ---------------------------------------------------------------------------------------


def test_histogram_density_integrates_to_one():
    values, lw = random_empirical(20, (500,))
    dist = Empirical(values, lw)
    heights, edges = dist.histogram(bins=17)
    assert heights.shape == (17,)
    assert edges.shape == (18,)
    # the default range is the range of the atoms
    assert float(edges[0]) == float(values.min())
    assert float(edges[-1]) == float(values.max())
    assert float((heights * edges.diff()).sum()) == pytest.approx(1.0, rel=1e-12)
    np_heights, np_edges = np.histogram(
        values.numpy(), bins=17, weights=np_softmax(lw), density=True
    )
    np.testing.assert_allclose(edges.numpy(), np_edges, rtol=1e-12)
    np.testing.assert_allclose(heights.numpy(), np_heights, rtol=1e-9, atol=1e-12)


def test_histogram_without_density_gives_total_weight_per_bin():
    # atoms well inside the bins [0,1), [1,2), [2,3), [3,4): no edge ambiguity
    atoms = torch.tensor([0.5, 1.2, 1.7, 3.1, 0.9, 3.9, 1.5])
    log_weights = torch.tensor([0.0, 0.4, -0.3, 1.2, -2.0, 0.1, 0.6])
    dist = Empirical(atoms, log_weights)
    heights, edges = dist.histogram(bins=4, range=(0.0, 4.0), density=False)
    w = np_softmax(log_weights)
    expected = np.array([w[0] + w[4], w[1] + w[2] + w[6], 0.0, w[3] + w[5]])
    np.testing.assert_allclose(edges.numpy(), [0.0, 1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(heights.numpy(), expected, rtol=RTOL, atol=1e-15)
    # with density=True the same heights are divided by the bin width (1 here)
    density, _ = dist.histogram(bins=4, range=(0.0, 4.0), density=True)
    np.testing.assert_allclose(density.numpy(), expected, rtol=RTOL, atol=1e-15)
    # with bins of width 0.5 the density is twice the weight per bin
    density, edges = dist.histogram(bins=8, range=(0.0, 4.0), density=True)
    assert float((density * edges.diff()).sum()) == pytest.approx(1.0, rel=RTOL)


def test_histogram_of_vector_event_raises():
    dist = Empirical(torch.zeros(5, 2), torch.zeros(5))
    with pytest.raises(ValueError, match="scalar"):
        dist.histogram()
