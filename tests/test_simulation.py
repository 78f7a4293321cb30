import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Normal

import infcomp as ic
from infcomp.examples.gaussian import gaussian
from infcomp.examples.marsaglia import marsaglia
from infcomp.inference.particles import inflate
from infcomp.inference.simulation import observations_of


def test_joint_simulation_of_a_broadcasting_model_is_one_batch_from_the_joint():
    simulator = ic.JointSimulator(gaussian)
    batch = simulator(20_000)
    assert batch.vectorized and batch.sizes == [20_000] and batch.size == 20_000
    trace = batch.traces[0]
    z, x1, x2 = (trace[name].value for name in ("z", "x1", "x2"))
    assert z.shape == x1.shape == x2.shape == (20_000,)
    # z ~ N(1, √5) and x - z ~ N(0, √2), independently: Kolmogorov-Smirnov at 0.1%.
    assert stats.kstest(z.numpy(), stats.norm(1, math.sqrt(5)).cdf).pvalue > 1e-3
    assert stats.kstest((x1 - z).numpy(), stats.norm(0, math.sqrt(2)).cdf).pvalue > 1e-3
    # Cov(x1, x2) = 5: the sample covariance has standard error about √((7·7 + 5²)/n).
    covariance = float(torch.cov(torch.stack([x1, x2]))[0, 1])
    assert abs(covariance - 5) < 4 * math.sqrt((49 + 25) / 20_000)
    assert set(observations_of(trace)) == {"x1", "x2"}


def test_joint_simulation_ignores_data_and_fixed_values():
    def model():
        z = ic.sample("z", Normal(0.0, 1.0))
        ic.observe("y", Normal(z, 1.0), value=100.0)

    y = ic.JointSimulator(model)(1000).traces[0]["y"].value
    assert (y.abs() < 100).all()


def test_a_model_with_random_structure_is_simulated_trace_by_trace_and_grouped():
    simulator = ic.JointSimulator(marsaglia)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = simulator(3000)
        simulator(10)
    notices = [w for w in caught if issubclass(w.category, ic.VectorizationNotice)]
    assert len(notices) == 1, "the simulator remembers that the model does not vectorize"
    assert not batch.vectorized and simulator.vectorize is False
    assert batch.size == 3000 and len(batch.traces) > 1
    for trace, size in zip(batch.traces, batch.sizes):
        assert all(site.value.shape[0] == size for site in trace.sites.values())
    returned = torch.cat([trace.return_value for trace in batch.traces])
    assert stats.kstest(returned.numpy(), stats.norm(1, math.sqrt(5)).cdf).pvalue > 1e-3


def test_forcing_vectorized_simulation_of_such_a_model_raises():
    with pytest.raises(ic.VectorizationError):
        ic.JointSimulator(marsaglia, vectorize=True)(10)


def test_models_with_factors_cannot_be_simulated_jointly():
    def tilted():
        z = ic.sample("z", Normal(0.0, 1.0))
        ic.factor("tilt", z)

    with pytest.raises(ic.ModelError, match="factor site 'tilt'"):
        ic.JointSimulator(tilted)(5)


def test_model_arguments_reach_the_model():
    batch = ic.JointSimulator(gaussian, args=(100.0,))(2000)
    z = batch.traces[0]["z"].value
    assert abs(float(z.mean()) - 100) < 4 * math.sqrt(5 / 2000)


def test_bad_batch_sizes():
    with pytest.raises(ValueError, match="batch_size"):
        ic.JointSimulator(gaussian)(0)
    with pytest.raises(ValueError, match="vectorize"):
        ic.JointSimulator(gaussian, vectorize="no")  # type: ignore[arg-type]
    assert ic.JointSimulator(gaussian)(np.int64(3)).size == 3


@pytest.mark.parametrize("factor", [math.inf, math.nan, 0.5, True, "2"])
def test_prior_inflation_must_be_a_finite_number_of_at_least_one(factor):
    with pytest.raises(
        ValueError, match=r"prior_inflation must be a finite number of at least 1, got"
    ):
        ic.JointSimulator(gaussian, prior_inflation=factor)
    with pytest.raises(
        ValueError, match=r"prior_inflation must be a finite number of at least 1, got"
    ):
        ic.CSIS(gaussian, prior_inflation=factor)
    with pytest.raises(
        ValueError, match=r"the inflation factor must be a finite number of at least 1"
    ):
        inflate(factor=factor)


def _raising_above(threshold: float, calls: list[int] | None = None):
    """A broadcasting simulator that raises when any draw of z exceeds ``threshold``."""

    def model():
        if calls is not None:
            calls.append(1)
        z = ic.sample("z", Normal(0.0, 1.0))
        if bool((z > threshold).any()):
            raise FloatingPointError("the solver did not converge")
        ic.observe("x", Normal(z, 1.0))

    return model


def test_a_failing_simulation_is_the_users_error_with_the_site_and_traceback():
    simulator = ic.JointSimulator(_raising_above(2.33))  # 1 % of the particles
    with pytest.raises(ic.ModelError, match=r"FloatingPointError.*'z'.*on_error='skip'") as info:
        simulator(2000)
    assert isinstance(info.value.__cause__, FloatingPointError)
    assert simulator.vectorize is not False


def test_skipping_drops_and_counts_failing_simulations_and_stays_vectorized():
    threshold = 2.33  # P(z > 2.33) ≈ 1 %: every batch of 2000 fails as a batch
    simulator = ic.JointSimulator(_raising_above(threshold), on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ic.VectorizationNotice)
        batch = simulator(2000)
    assert set(batch.failures) == {"z"} and batch.failures["z"] > 0
    assert batch.size + batch.failures["z"] == 2000
    z = torch.cat([trace["z"].value for trace in batch.traces])
    assert z.shape == (batch.size,) and bool((z <= threshold).all())
    assert simulator.vectorize is not False  # the next batch is tried as one again
    small = simulator(10)  # fails as a batch with probability 0.1 only
    assert small.size + sum(small.failures.values()) == 10


def test_a_batch_that_fails_once_is_retried_and_counted_as_one_failure():
    calls: list[int] = []

    def model():
        calls.append(1)
        z = ic.sample("z", Normal(0.0, 1.0))
        if len(calls) == 2:
            raise OSError("the simulator's licence server did not answer")
        ic.observe("x", Normal(z, 1.0))

    batch = ic.JointSimulator(model, on_error="skip")(500)
    assert batch.vectorized and batch.size == 500 and batch.failures == {"z": 1}
    assert len(calls) == 3  # probe, the failed batch, the retry


def test_skipping_in_a_model_simulated_trace_by_trace():
    def rejecting():
        u = ic.sample("u", Normal(0.0, 1.0))
        if u > 1.5:  # control flow: trace by trace; fails in about 7 % of the traces
            raise ValueError("u out of range")
        ic.observe("x", Normal(u, 1.0))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.VectorizationNotice)
        batch = ic.JointSimulator(rejecting, vectorize=False, on_error="skip")(500)
    assert not batch.vectorized and batch.failures["u"] > 0
    assert batch.size + batch.failures["u"] == 500


def test_when_every_simulation_fails_skipping_raises_the_users_error():
    def hopeless():
        ic.sample("z", Normal(0.0, 1.0))
        raise RuntimeError("always")

    for vectorize in (None, False):
        with pytest.raises(ic.ModelError, match="RuntimeError: always"):
            ic.JointSimulator(hopeless, vectorize=vectorize, on_error="skip")(20)
    with pytest.raises(ValueError, match="on_error"):
        ic.JointSimulator(gaussian, on_error="ignore")  # type: ignore[arg-type]


def test_a_probe_that_fails_is_tried_again_when_skipping():
    def first_call_fails():
        calls.append(1)
        z = ic.sample("z", Normal(0.0, 1.0))
        if len(calls) == 1:
            raise RuntimeError("cold start")
        ic.observe("x", Normal(z, 1.0))

    calls: list[int] = []
    with pytest.raises(ic.ModelError, match="RuntimeError: cold start.*'z'"):
        ic.JointSimulator(first_call_fails)(10)
    calls.clear()
    batch = ic.JointSimulator(first_call_fails, on_error="skip")(10)
    assert batch.vectorized and batch.size == 10 and len(calls) == 3
