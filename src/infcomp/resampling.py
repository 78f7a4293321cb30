"""Resampling: indices of particles drawn in proportion to their weights.

The schemes work on any number of particles (no category limit) by inverting the
cumulative sum of the normalized weights, in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _cumulative(weights: Tensor) -> Tensor:
    if weights.dim() != 1 or weights.numel() == 0:
        raise ValueError(
            f"expected a non-empty 1-d tensor of weights, got shape {tuple(weights.shape)}"
        )
    weights = weights.to(torch.float64)
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("cannot resample: weights must be finite and non-negative")
    cdf = weights.cumsum(0)
    if not cdf[-1] > 0:
        raise ValueError("cannot resample: all weights are zero")
    return cdf / cdf[-1]


def _invert(cdf: Tensor, uniforms: Tensor) -> Tensor:
    index = torch.searchsorted(cdf, uniforms, right=True)
    return index.clamp_(max=cdf.numel() - 1)


def multinomial_indices(weights: Tensor, num_samples: int) -> Tensor:
    """``num_samples`` independent draws of i with probability ``w_i / sum w``.

    Each index is ``min{i : F_i > u}`` for ``u ~ U(0, 1)``, where F is the normalized
    cumulative weight.

    Example:
        >>> import torch
        >>> from infcomp.resampling import multinomial_indices
        >>> _ = torch.manual_seed(0)
        >>> multinomial_indices(torch.tensor([0.5, 0.25, 0.25]), 6)
        tensor([2, 1, 0, 2, 1, 2])
    """
    cdf = _cumulative(weights)
    return _invert(cdf, torch.rand(num_samples, dtype=torch.float64, device=cdf.device))


def systematic_indices(weights: Tensor, num_samples: int) -> Tensor:
    """Systematic resampling: one uniform ``u ~ U(0, 1)``, points ``(j + u) / n``.

    Each particle i is kept ``floor(n w̄_i)`` or ``ceil(n w̄_i)`` times, so the
    resampled set varies less than a multinomial one; the indices come out sorted.

    Example:
        >>> import torch
        >>> from infcomp.resampling import systematic_indices
        >>> systematic_indices(torch.tensor([0.5, 0.25, 0.25]), 4)  # any u: n w̄ = (2, 1, 1)
        tensor([0, 0, 1, 2])
    """
    cdf = _cumulative(weights)
    offset = torch.rand((), dtype=torch.float64, device=cdf.device)
    points = (
        torch.arange(num_samples, dtype=torch.float64, device=cdf.device) + offset
    ) / num_samples
    return _invert(cdf, points)


def stratified_indices(weights: Tensor, num_samples: int) -> Tensor:
    """Stratified resampling: one uniform per stratum, points ``(j + u_j) / n``.

    Like systematic resampling, but with independent ``u_j ~ U(0, 1)``; its variance is
    never larger than multinomial resampling's (Douc, Cappé & Moulines, ISPA 2005).

    Example:
        >>> import torch
        >>> from infcomp.resampling import stratified_indices
        >>> _ = torch.manual_seed(0)
        >>> stratified_indices(torch.tensor([0.5, 0.25, 0.25]), 4)
        tensor([0, 0, 1, 2])
    """
    cdf = _cumulative(weights)
    uniforms = torch.rand(num_samples, dtype=torch.float64, device=cdf.device)
    points = torch.arange(num_samples, dtype=torch.float64, device=cdf.device) + uniforms
    return _invert(cdf, points / num_samples)


def residual_indices(weights: Tensor, num_samples: int) -> Tensor:
    """Residual resampling: ``floor(n w̄_i)`` copies of particle i, and the remaining
    ``R = n - sum_i floor(n w̄_i)`` drawn multinomially with probabilities proportional
    to ``n w̄_i - floor(n w̄_i)`` (Liu & Chen, JASA 1998). The indices come out sorted.

    Example:
        >>> import torch
        >>> from infcomp.resampling import residual_indices
        >>> residual_indices(torch.tensor([0.5, 0.25, 0.25]), 4)  # n w̄ = (2, 1, 1): exact
        tensor([0, 0, 1, 2])
    """
    cdf = _cumulative(weights)
    expected = torch.diff(cdf, prepend=cdf.new_zeros(1)) * num_samples
    copies = expected.floor()
    # Rounding may leave a copy count a hair above n w̄: the residuals are kept >= 0.
    copies = copies.long()
    remaining = num_samples - int(copies.sum())
    index = torch.repeat_interleave(torch.arange(cdf.numel(), device=cdf.device), copies)
    if remaining > 0:
        residual = (expected - copies).clamp(min=0)
        extra = multinomial_indices(residual, remaining)
        index = torch.cat([index, extra]).sort().values
    return index[:num_samples]


#: The resampling schemes by name, as :func:`infcomp.smc` takes them.
SCHEMES = {
    "multinomial": multinomial_indices,
    "systematic": systematic_indices,
    "stratified": stratified_indices,
    "residual": residual_indices,
}
