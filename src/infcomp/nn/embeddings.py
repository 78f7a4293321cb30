"""Observation embeddings: modules that map one observe site's values to features.

Each takes a batch of values of shape ``(M, *shape)`` and returns ``(M, F)``. The
network adds a linear layer to its own width, so any ``F`` will do: a user's module
(a CNN for images, a 1-D convolution for time series) plugs in per site.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

#: Standardized observations are linear up to this many standard deviations, log beyond.
STANDARD_RANGE = 5.0


class MLPEmbedding(nn.Module):
    """Standardize, flatten, then a two-layer MLP: the default embedding of any observation.

    Each element is z-scored, ``z = (y - μ) / σ``, with the mean and standard deviation
    of the simulations the network was built from (:meth:`fit`; 0 and 1 before, as sbi
    does with ``z_score_x``), and kept linear up to ``|z| = 5`` and logarithmic beyond,
    ``sign(z)·(5 + log1p(|z| - 5))``: observations of any scale give well-conditioned
    inputs, and observations in the tails of the simulations still move the embedding
    in proportion (a ``log1p`` of the raw value compressed them, and the proposals for
    tail data fell short).

    Example:
        >>> import torch
        >>> from infcomp.nn.embeddings import MLPEmbedding
        >>> embed = MLPEmbedding((3, 4), features=16)
        >>> embed.fit(10 + 2 * torch.randn(64, 3, 4))  # simulated observations
        >>> embed(torch.randn(5, 3, 4)).shape  # 5 observations of shape (3, 4)
        torch.Size([5, 16])
    """

    loc: Tensor
    scale: Tensor

    def __init__(self, shape: tuple[int, ...], features: int = 64) -> None:
        super().__init__()
        size = max(math.prod(shape), 1)
        self.register_buffer("loc", torch.zeros(size))
        self.register_buffer("scale", torch.ones(size))
        self.network = nn.Sequential(
            nn.Flatten(), nn.Linear(size, features), nn.ReLU(), nn.Linear(features, features)
        )

    @torch.no_grad()
    def fit(self, values: Tensor) -> None:
        """Set the standardization from simulated observations ``(M, *shape)``, M ≥ 2:
        elementwise mean and standard deviation (1 where the deviation is 0), of the
        simulations whose values are all finite (a failed simulation says nothing)."""
        flat = values.reshape(values.shape[0], -1).to(self.loc)
        flat = flat[torch.isfinite(flat).all(-1)]
        if flat.shape[0] < 2:
            return
        scale = flat.std(0)
        self.loc.copy_(flat.mean(0))
        self.scale.copy_(torch.where(scale > 0, scale, torch.ones_like(scale)))

    def forward(self, values: Tensor) -> Tensor:
        values = values.reshape(values.shape[0], -1).to(self.loc)
        z = (values - self.loc) / self.scale
        tail = (z.abs() - STANDARD_RANGE).clamp_min(0)
        return self.network(z.clamp(-STANDARD_RANGE, STANDARD_RANGE) + z.sign() * tail.log1p())


class ConvEmbedding(nn.Module):
    """A small CNN for image-shaped observations ``(H, W)`` or ``(C, H, W)``.

    Two 3×3 convolutions (16 and 32 channels) with ReLU and 2×2 max pooling, an adaptive
    average pool to 4×4, and a linear layer to ``features``.
    """

    def __init__(self, shape: tuple[int, ...], features: int = 64) -> None:
        super().__init__()
        if len(shape) not in (2, 3):
            raise ValueError(f"ConvEmbedding needs an (H, W) or (C, H, W) shape, got {shape}")
        self.shape = shape
        channels = 1 if len(shape) == 2 else shape[0]
        self.network = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(32 * 16, features),
        )

    def forward(self, values: Tensor) -> Tensor:
        if len(self.shape) == 2:
            values = values.unsqueeze(1)
        return self.network(values.to(next(self.parameters())))


class Conv1dEmbedding(nn.Module):
    """A small 1-D CNN for time series ``(T,)`` or ``(C, T)``: two convolutions of width 5
    (16 and 32 channels) with ReLU, an adaptive average pool to 8 steps, then linear."""

    def __init__(self, shape: tuple[int, ...], features: int = 64) -> None:
        super().__init__()
        if len(shape) not in (1, 2):
            raise ValueError(f"Conv1dEmbedding needs a (T,) or (C, T) shape, got {shape}")
        self.shape = shape
        channels = 1 if len(shape) == 1 else shape[0]
        self.network = nn.Sequential(
            nn.Conv1d(channels, 16, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(16, 32, 5, padding=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(8),
            nn.Flatten(),
            nn.Linear(32 * 8, features),
        )

    def forward(self, values: Tensor) -> Tensor:
        if len(self.shape) == 1:
            values = values.unsqueeze(1)
        return self.network(values.to(next(self.parameters())))
