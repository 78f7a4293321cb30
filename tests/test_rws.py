"""Reweighted wake-sleep and the importance-weighted objectives, against closed forms."""

import math
import warnings

import pytest
import torch
from torch import nn
from torch.distributions import Normal

import infcomp as ic
from infcomp.examples import rws_mixture
from infcomp.examples.gaussian import gaussian
from infcomp.inference.objectives import model_log_weights, wake_phi_loss

pytestmark = pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning")


class LearnableGaussian(nn.Module):
    """z ~ N(θ, √5); x1, x2 ~ N(z, √2), with the prior mean θ learned."""

    def __init__(self) -> None:
        super().__init__()
        self.prior_mean = nn.Parameter(torch.tensor(0.0))

    def forward(self):
        z = ic.sample("z", Normal(self.prior_mean, 5**0.5))
        ic.observe("x1", Normal(z, 2**0.5))
        ic.observe("x2", Normal(z, 2**0.5))


def gaussian_datasets(count, mean=2.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z = mean + 5**0.5 * torch.randn(count, generator=generator)
    return {
        "x1": z + 2**0.5 * torch.randn(count, generator=generator),
        "x2": z + 2**0.5 * torch.randn(count, generator=generator),
    }


def exact_log_likelihood(data, mean):
    """Σ_b log N((x1, x2)_b; (θ, θ), [[7, 5], [5, 7]])."""
    covariance = torch.tensor([[7.0, 5.0], [5.0, 7.0]], dtype=torch.float64)
    x = torch.stack([data["x1"], data["x2"]], -1).double()
    marginal = torch.distributions.MultivariateNormal(
        torch.full((2,), float(mean), dtype=torch.float64), covariance
    )
    return float(marginal.log_prob(x).sum())


def test_rws_learns_the_prior_mean_to_within_its_standard_error():
    data = gaussian_datasets(200)
    # Each (x1, x2) ~ N(θ 1, Σ) with Σ = [[7, 5], [5, 7]]: the maximum-likelihood θ is the
    # mean of (x1 + x2)/2, with standard error 1/√(M 1ᵀΣ⁻¹1) = √(6/M).
    mle = float((data["x1"] + data["x2"]).mean() / 2)
    standard_error = math.sqrt(6 / 200)
    torch.manual_seed(0)
    model = LearnableGaussian()
    rws = ic.RWS(model, data, num_particles=10, model_learning_rate=0.05, learning_rate=3e-3)
    rws.train(1000, batch_size=50, progress=False)
    assert abs(float(model.prior_mean.detach()) - mle) < standard_error
    # The IWAE bound rose, and log p(data) is estimated within its error of the closed form.
    bounds = rws.history["iwae_bound"]
    assert sum(bounds[-50:]) / 50 > sum(bounds[:50]) / 50
    estimate, stderr = rws.log_evidence(num_particles=2000)
    exact = exact_log_likelihood(data, model.prior_mean.detach())
    assert abs(estimate - exact) < 4 * stderr


def test_rws_fits_a_mixture_with_discrete_latents():
    y = rws_mixture.simulate_data(500)
    means, weights, maximum = rws_mixture.maximum_likelihood(y)
    model, curve = rws_mixture.fit(y, steps=600, every=300)
    learned_means = model.means.detach().double()
    learned_weights = torch.softmax(model.logits.detach().double(), 0)
    # Near the maximum-likelihood parameters (EM): the statistical error of the means is
    # about 1/√(500 w_k) ≈ 0.08 and 0.05; Adam's iterates wander by a few hundredths.
    assert torch.allclose(learned_means, means, atol=0.12)
    assert torch.allclose(learned_weights, weights, atol=0.05)
    # And near the true ones, within the statistical error (4 standard errors).
    assert torch.allclose(
        learned_means, torch.tensor(rws_mixture.TRUE_MEANS, dtype=torch.float64), atol=0.35
    )
    # The estimated log p(data) rose from the initial model to close to the maximum.
    assert curve[0][1] < maximum - 100
    assert abs(curve[-1][1] - maximum) < 3


def test_insomnia_zero_with_a_fixed_model_is_compiled_inference():
    from infcomp.examples.csis_gaussian import Guide

    first, second = Guide(), Guide()
    second.load_state_dict(first.state_dict())
    data = gaussian_datasets(10)
    csis = ic.CSIS(gaussian, first, validation_size=0)
    rws = ic.RWS(gaussian, data, second, insomnia=0.0, sleep_batch_size=32)
    assert rws.model_optimizer is None
    torch.manual_seed(3)
    csis_losses = [csis.step(batch_size=32) for _ in range(20)]
    torch.manual_seed(3)
    rws_losses = [rws.step()["sleep_phi"] for _ in range(20)]
    assert rws_losses == pytest.approx(csis_losses, rel=1e-6)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(math.isnan(v) for v in rws.history["iwae_bound"])


def test_wake_phase_is_vectorized_over_particles_and_data_sets():
    data = gaussian_datasets(7)
    model = LearnableGaussian()
    rws = ic.RWS(model, data, num_particles=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ic.VectorizationNotice)
        values = rws.step(batch_size=4)
    assert math.isfinite(values["iwae_bound"]) and math.isfinite(values["wake_phi"])
    assert math.isnan(values["sleep_phi"])
    assert model.prior_mean.grad is not None


def test_objectives():
    torch.manual_seed(0)
    log_weights = torch.randn(6, 3, dtype=torch.float64)
    assert torch.allclose(ic.iwae_bound(log_weights), log_weights.logsumexp(0) - math.log(6))
    # Wake-φ: -Σ_k w̄_k log q_k per data set, with w̄ held fixed.
    log_q = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    loss = wake_phi_loss(log_weights, log_q)
    assert torch.allclose(loss, -(torch.softmax(log_weights, 0) * log_q).sum(0))
    loss.sum().backward()
    assert torch.allclose(log_q.grad, -torch.softmax(log_weights, 0))
    # model_log_weights: the same values, and no gradient reaches log q.
    log_q.grad = None
    log_p = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    theta_weights = model_log_weights(log_p - log_q, log_q)
    assert torch.allclose(theta_weights, log_p - log_q)
    ic.iwae_bound(theta_weights).sum().backward()
    assert torch.allclose(log_q.grad, torch.zeros_like(log_q))
    assert torch.allclose(log_p.grad, torch.softmax((log_p - log_q).detach(), 0))


def test_bad_arguments():
    data = gaussian_datasets(5)
    with pytest.raises(ValueError, match="insomnia"):
        ic.RWS(LearnableGaussian(), data, insomnia=1.5)
    with pytest.raises(ValueError, match="num_particles"):
        ic.RWS(LearnableGaussian(), data, num_particles=0)
    with pytest.raises(ic.ModelError, match="leading dimension"):
        ic.RWS(LearnableGaussian(), {"x1": torch.zeros(3), "x2": torch.zeros(4)})
    with pytest.raises(TypeError, match="guide_optimizer"):
        ic.RWS(LearnableGaussian(), data, lambda observations=None: None)
    with pytest.raises(ValueError, match="sleep_batch_size must be a positive integer, got 0"):
        ic.RWS(LearnableGaussian(), data, sleep_batch_size=0)
    rws = ic.RWS(LearnableGaussian(), data)
    with pytest.raises(ValueError, match="batch_size"):
        rws.step(batch_size=0)
