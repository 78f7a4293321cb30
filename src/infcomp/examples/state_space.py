"""A linear-Gaussian state-space model, with the Kalman filter and smoother.

x_0 ~ N(0, 1), x_t ~ N(a x_{t-1}, q), y_t ~ N(x_t, r) for t = 0..T-1 (scales q and r).
The Kalman filter gives the exact log evidence and the filtered means E[x_t | y_{0:t}];
the Rauch-Tung-Striebel smoother the smoothed means E[x_t | y_{0:T-1}]; all in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Normal

import infcomp as ic

A = 0.9
Q = 1.0  # transition noise scale
R = 0.5  # observation noise scale


def state_space(num_steps: int) -> Tensor:
    """The model over ``num_steps`` steps; observe sites ``y_t``, latents ``x_t``."""
    x = ic.sample("x_0", Normal(0.0, 1.0))
    ic.observe("y_0", Normal(x, R))
    for t in range(1, num_steps):
        x = ic.sample(f"x_{t}", Normal(A * x, Q))
        ic.observe(f"y_{t}", Normal(x, R))
    return x


def optimal_guide(num_steps: int, observations: dict[str, Tensor]) -> None:
    """The locally optimal proposal p(x_t | x_{t-1}, y_t) (the fully adapted particle
    filter), a guide for :func:`state_space`: Normal with variance
    ``v = 1 / (1 / prior var + 1 / R²)`` and mean ``v (prior mean / prior var + y_t / R²)``."""
    x = None
    for t in range(num_steps):
        prior_mean, prior_var = (0.0, 1.0) if x is None else (A * x, Q**2)
        var = 1 / (1 / prior_var + 1 / R**2)
        mean = var * (prior_mean / prior_var + observations[f"y_{t}"] / R**2)
        x = ic.sample(f"x_{t}", Normal(mean, var**0.5))


def simulate_data(num_steps: int) -> dict[str, Tensor]:
    """Observations drawn from the model itself."""
    values = ic.trace(state_space).get_trace(num_steps).values()
    return {f"y_{t}": values[f"y_{t}"] for t in range(num_steps)}


def kalman(data: dict[str, Tensor], num_steps: int) -> tuple[float, Tensor, Tensor, Tensor]:
    """``(log p(y), filtered means, filtered variances, smoothed means)`` (T each).

    Example: one step is y_0 ~ N(0, 1 + R²).

        >>> import torch
        >>> from infcomp.examples.state_space import R, kalman
        >>> log_evidence, *_ = kalman({"y_0": torch.tensor(0.0)}, 1)
        >>> round(log_evidence + 0.5 * math.log(2 * math.pi * (1 + R**2)), 9)
        0.0
    """
    y = [float(data[f"y_{t}"]) for t in range(num_steps)]
    mean, var = 0.0, 1.0  # predicted
    log_evidence = 0.0
    means, variances, predicted = [], [], []
    for t in range(num_steps):
        if t > 0:
            mean, var = A * mean, A * A * var + Q * Q
        predicted.append((mean, var))
        total = var + R * R
        log_evidence += -0.5 * (math.log(2 * math.pi * total) + (y[t] - mean) ** 2 / total)
        gain = var / total
        mean, var = mean + gain * (y[t] - mean), (1 - gain) * var
        means.append(mean)
        variances.append(var)
    smoothed = list(means)
    for t in range(num_steps - 2, -1, -1):
        next_mean, next_var = predicted[t + 1]
        gain = variances[t] * A / next_var
        smoothed[t] = means[t] + gain * (smoothed[t + 1] - next_mean)
    return (
        log_evidence,
        torch.tensor(means, dtype=torch.float64),
        torch.tensor(variances, dtype=torch.float64),
        torch.tensor(smoothed, dtype=torch.float64),
    )
