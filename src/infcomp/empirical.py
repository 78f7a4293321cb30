"""A weighted empirical distribution: a posterior marginal usable as a distribution."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from infcomp import diagnostics
from infcomp.resampling import multinomial_indices


class Empirical(Distribution):
    """The weighted point masses ``sum_i w̄_i δ(x - x_i)``, ``w̄ = softmax(log_weights)``.

    torch has no weighted empirical distribution, so this one is written here. It
    samples (``sample()``, or calling it as Pyro's distributions are called), scores
    values (``log_prob(x) = log sum_{i: x_i = x} w̄_i``, ``-inf`` off the atoms), and
    gives weighted moments (:mod:`infcomp.diagnostics`) and histograms.

    Args:
        values: the atoms, shape ``(N, *event_shape)``.
        log_weights: unnormalized log weights, shape ``(N,)``.

    Example:
        >>> import torch
        >>> from infcomp.empirical import Empirical
        >>> marginal = Empirical(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]))
        >>> float(marginal.mean), float(marginal.variance)
        (0.5, 0.25)
        >>> float(marginal.log_prob(torch.tensor(1.0)).exp())
        0.5
        >>> _ = torch.manual_seed(0)
        >>> marginal((4,))
        tensor([1., 1., 0., 1.])
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, values: Tensor, log_weights: Tensor) -> None:
        if values.dim() == 0 or log_weights.shape != values.shape[:1]:
            raise ValueError(
                f"values must have shape (N, ...) and log_weights (N,); got "
                f"{tuple(values.shape)} and {tuple(log_weights.shape)}"
            )
        self.values = values
        self.log_weights = log_weights.to(torch.float64)
        self.weights = diagnostics.normalized_weights(self.log_weights)
        super().__init__(torch.Size(), values.shape[1:], validate_args=False)

    @property
    def mean(self) -> Tensor:
        """``sum_i w̄_i x_i``, in float64."""
        return diagnostics.weighted_mean(self.values, self.log_weights)

    @property
    def variance(self) -> Tensor:
        """``sum_i w̄_i (x_i - mean)^2``, in float64."""
        return diagnostics.weighted_variance(self.values, self.log_weights)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        shape = torch.Size(sample_shape)
        if shape.numel() == 0:
            return self.values.new_empty(shape + self.event_shape)
        index = multinomial_indices(self.weights, shape.numel())
        return self.values[index].reshape(shape + self.event_shape)

    def __call__(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        """A draw, as Pyro's distributions give when called: ``sample(sample_shape)``."""
        return self.sample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        # Compare in float64, so that 0.5 does not match an integer atom 0.
        value = torch.as_tensor(value, device=self.values.device).to(torch.float64)
        event_ndim = len(self.event_shape)
        batch = value.shape[: value.dim() - event_ndim]
        flat = value.reshape((-1, 1) + self.event_shape)
        atoms = self.values.to(torch.float64).unsqueeze(0)
        matches = (flat == atoms).reshape(flat.shape[0], self.values.shape[0], -1)
        mass = (matches.all(-1).to(torch.float64) * self.weights).sum(-1)
        return mass.log().reshape(batch)

    def histogram(
        self, bins: int = 50, range: tuple[float, float] | None = None, density: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Weighted histogram of a scalar marginal: ``(heights, bin_edges)``.

        With ``density=True`` the heights integrate to one over the bins; otherwise they
        are the total normalized weight in each bin.
        """
        if self.event_shape:
            raise ValueError(
                f"histogram needs a scalar marginal, got event shape {tuple(self.event_shape)}"
            )
        values = self.values.to(torch.float64).cpu()
        weights = self.weights.cpu()
        if range is None:
            range = (float(values.min()), float(values.max()))
        heights, edges = torch.histogram(
            values, bins=bins, range=range, weight=weights, density=density
        )
        return heights, edges

    def __repr__(self) -> str:
        return f"Empirical(num_atoms={self.values.shape[0]}, event_shape={tuple(self.event_shape)})"
