"""Importance-weighted objectives on log weights, differentiable.

Each takes log weights (and proposal log densities) with K particles along dim 0 and
any number of data sets after it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def iwae_bound(log_weights: Tensor) -> Tensor:
    """The importance-weighted bound per data set: ``log Ẑ_K = logsumexp_k(log w_k) - log K``.

    ``E[log Ẑ_K] <= log p(y)`` (Burda et al. 2016), tightening as K grows; its gradient
    in the model's parameters θ (with ``log w = log p_θ(x, y) - log q(x)`` and q held
    fixed) is the wake-θ update of reweighted wake-sleep. Shape: ``log_weights.shape[1:]``.
    """
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


def wake_phi_loss(log_weights: Tensor, log_proposal: Tensor) -> Tensor:
    """Wake-φ loss per data set: ``-Σ_k w̄_k log q_φ(x_k; y)`` with ``w̄ = softmax(log w)``
    held fixed: a self-normalized estimate of ``KL(p(x | y) ‖ q_φ) + const`` on the data."""
    normalized = torch.softmax(log_weights.detach(), dim=0)
    return -(normalized * log_proposal).sum(0)


def model_log_weights(log_weights: Tensor, log_proposal: Tensor) -> Tensor:
    """``log p_θ(x, y) - log q(x)`` with ``log q`` held fixed: the same values as
    ``log_weights``, with gradients for the model's parameters only (the wake-θ input)."""
    return log_weights + log_proposal - log_proposal.detach()
