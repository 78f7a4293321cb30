"""A hidden Markov model with three states and Gaussian emissions.

x_0 ~ Categorical(π), x_t ~ Categorical(A[x_{t-1}]), y_t ~ N(μ[x_t], σ). The exact log
evidence comes from the forward algorithm and the posterior marginals p(x_t | y_{0:T-1})
from forward-backward, both in log space.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Categorical, Normal

import infcomp as ic

INITIAL = torch.tensor([0.5, 0.3, 0.2])
TRANSITION = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.15, 0.15, 0.7]])
MEANS = torch.tensor([-1.0, 0.0, 1.5])
NOISE = 1.0


def hmm(num_steps: int) -> Tensor:
    """The HMM over ``num_steps`` steps; observe sites ``y_0 .. y_{T-1}``, latents ``x_t``."""
    state = ic.sample("x_0", Categorical(INITIAL))
    ic.observe("y_0", Normal(MEANS[state], NOISE))
    for t in range(1, num_steps):
        state = ic.sample(f"x_{t}", Categorical(TRANSITION[state]))
        ic.observe(f"y_{t}", Normal(MEANS[state], NOISE))
    return state


def simulate_data(num_steps: int) -> dict[str, Tensor]:
    """Observations drawn from the model itself."""
    values = ic.trace(hmm).get_trace(num_steps).values()
    return {f"y_{t}": values[f"y_{t}"] for t in range(num_steps)}


def _emission_log_probs(data: dict[str, Tensor], num_steps: int) -> Tensor:
    y = torch.stack([torch.as_tensor(data[f"y_{t}"]) for t in range(num_steps)]).double()
    log_probs: Tensor = Normal(MEANS.double(), NOISE).log_prob(y.unsqueeze(-1))
    return log_probs  # (T, 3)


def forward_log_evidence(data: dict[str, Tensor], num_steps: int) -> float:
    """log p(y_{0:T-1}) by the forward algorithm.

    Example: one step is a mixture of the three emissions, weighted by the initial law.

        >>> import torch
        >>> from torch.distributions import Normal
        >>> from infcomp.examples.hmm import INITIAL, MEANS, forward_log_evidence
        >>> mixture = (INITIAL * Normal(MEANS, 1.0).log_prob(torch.tensor(0.5)).exp()).sum()
        >>> abs(forward_log_evidence({"y_0": torch.tensor(0.5)}, 1) - float(mixture.log())) < 1e-6
        True
    """
    return float(_forward(data, num_steps).logsumexp(-1)[-1])


def _forward(data: dict[str, Tensor], num_steps: int) -> Tensor:
    emission = _emission_log_probs(data, num_steps)
    log_transition = TRANSITION.double().log()
    alpha = torch.empty(num_steps, 3, dtype=torch.float64)
    alpha[0] = INITIAL.double().log() + emission[0]
    for t in range(1, num_steps):
        alpha[t] = (alpha[t - 1].unsqueeze(-1) + log_transition).logsumexp(0) + emission[t]
    return alpha


def posterior_marginals(data: dict[str, Tensor], num_steps: int) -> Tensor:
    """p(x_t = k | y_{0:T-1}), shape (T, 3), by forward-backward."""
    emission = _emission_log_probs(data, num_steps)
    log_transition = TRANSITION.double().log()
    alpha = _forward(data, num_steps)
    beta = torch.zeros(num_steps, 3, dtype=torch.float64)
    for t in range(num_steps - 2, -1, -1):
        beta[t] = (log_transition + emission[t + 1] + beta[t + 1]).logsumexp(-1)
    log_marginals = alpha + beta
    return (log_marginals - log_marginals.logsumexp(-1, keepdim=True)).exp()
