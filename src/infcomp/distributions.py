"""Distributions that torch lacks: proposal families and helpers for importance sampling.

- :class:`DiscretizedLogisticMixture`: a mixture of logistics discretized to the
  integers and truncated to ``[lower, upper]``, a proposal for counts (Poisson,
  Geometric, NegativeBinomial, large integer ranges).
- :class:`DefensiveMixture`: ``(1 - ε) q + ε p``, a proposal whose importance weights
  ``p / q'`` are bounded by ``1 / ε``.
- :func:`stack_distributions`: many distributions of one family as one batched
  distribution.

This module is the lowest layer of the package: it imports only torch and the standard
library.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    constraints,
)
from torch.distributions.utils import lazy_property
from torch.nn.functional import logsigmoid

_Shape = torch.Size | list[int] | tuple[int, ...]

# Groups of mutually exclusive constructor parameters, most preferred first: when an
# instance holds several of a group (a lazy property was read), only the first is passed.
_EXCLUSIVE_PARAMETERS = (
    ("logits", "probs"),
    ("scale_tril", "covariance_matrix", "precision_matrix"),
)


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(-x))`` for ``x >= 0``, accurate for small and large ``x``.

    Uses ``log(-expm1(-x))`` for ``x < log 2`` and ``log1p(-exp(-x))`` above (Mächler,
    "Accurately computing log(1 - exp(-|a|))", 2012). ``x = 0`` gives ``-inf``,
    ``x = inf`` gives 0.
    """
    return torch.where(x < math.log(2.0), torch.log(-torch.expm1(-x)), torch.log1p(-torch.exp(-x)))


def _log_logistic_interval(z_low: Tensor, z_high: Tensor, width: Tensor) -> Tensor:
    """``log(σ(z_high) - σ(z_low))`` for the standard logistic CDF σ, stable in both tails.

    Uses the identity ``σ(b) - σ(a) = σ(b) σ(-a) (1 - exp(-(b - a)))``, so that

        log(σ(b) - σ(a)) = log σ(b) + log σ(-a) + log1mexp(b - a),

    a sum of non-positive terms without cancellation: far in either tail every term
    keeps its relative precision. ``width`` is ``b - a``, passed separately so that the
    caller can compute it without subtracting two large numbers. Empty intervals
    (``width <= 0``) give ``-inf``; infinite endpoints are allowed.
    """
    positive = width > 0
    safe_width = torch.where(positive, width, torch.ones_like(width))
    log_mass = logsigmoid(z_high) + logsigmoid(-z_low) + _log1mexp(safe_width)
    return torch.where(positive, log_mass, torch.full_like(log_mass, -math.inf))


def _number_bound(bound: float | Tensor, name: str) -> int | float | None:
    """A Python-number bound as an int (or ±inf); ``None`` for a tensor bound."""
    if isinstance(bound, Tensor):
        return None
    if isinstance(bound, bool) or not isinstance(bound, (int, float)):
        raise TypeError(f"{name} must be an integer, ±inf or a tensor, got {bound!r}")
    value = float(bound)
    if math.isnan(value) or (math.isfinite(value) and value != math.floor(value)):
        raise ValueError(f"{name} must be an integer or ±inf, got {bound!r}")
    return value if math.isinf(value) else int(value)


class DiscretizedLogisticMixture(Distribution):
    """A mixture of K logistics discretized to the integers and truncated to ``[lower, upper]``.

    torch.distributions has no discretized or truncated logistic, nor a mixture of them
    on the integers, hence this class. With ``π = softmax(logits)`` and
    ``F_c(x) = sigmoid((x - loc_c) / scale_c)`` the logistic CDF of component ``c``,
    the mass of an integer ``k`` in ``[lower, upper]`` is

        P(k) = Σ_c π_c [F_c(k + ½) - F_c(k - ½)] / Σ_c π_c [F_c(upper + ½) - F_c(lower - ½)],

    and zero elsewhere. ``upper`` may be ``+inf`` (unbounded counts) and ``lower``
    ``-inf``. Everything is computed in log space with
    ``log(F(b) - F(a)) = log σ(z_b) + log σ(-z_a) + log(1 - exp(-(z_b - z_a)))`` (see
    :func:`_log_logistic_interval`), so that masses far in the tails (``1e-30``) keep
    their relative precision and very narrow scales still normalize.

    Samples are exact: a component is drawn with probability proportional to
    ``π_c × (its mass in [lower, upper])``, then a continuous value from that logistic
    truncated to ``[lower - ½, upper + ½]`` by inverse CDF, and it is rounded to the
    integer whose bin ``[k - ½, k + ½)`` holds it. The inverse CDF works on whichever
    side of the component's location the value falls (chosen with the right
    probabilities), with the logistic's symmetry mapping the right side onto the left,
    and in log space there, so that truncation far in a tail keeps its precision.
    Samples are floats, as for torch's Poisson.

    The support depends on the parameters (``constraints.dependent_property``): it is
    ``nonnegative_integer`` for ``lower = 0`` and ``upper = inf`` given as numbers,
    ``integer_interval(lower, upper)`` when ``upper`` is finite or a tensor, and
    ``IntegerGreaterThan(lower)`` otherwise. ``log_prob`` of a value outside it, or not
    an integer, is ``-inf``; with ``validate_args`` it raises torch's ``ValueError``.

    ``mean`` and ``variance`` have no closed form and raise ``NotImplementedError``.

    Args:
        logits: unnormalized log mixture weights, shape ``batch_shape + (K,)``.
        loc: component locations, shape ``batch_shape + (K,)``.
        scale: component scales (positive), shape ``batch_shape + (K,)``.
        lower: the smallest value, an integer or ``-inf``, a number or a tensor
            broadcastable with the batch shape.
        upper: the largest value, an integer or ``+inf``, likewise.
        validate_args: check the parameters (and, in ``log_prob``, the values).

    Example:
        >>> import torch
        >>> from infcomp.distributions import DiscretizedLogisticMixture
        >>> logits, loc, scale = torch.zeros(2), torch.tensor([2.0, 9.0]), torch.tensor([1.0, 2.0])
        >>> q = DiscretizedLogisticMixture(logits, loc, scale, lower=0)
        >>> q.sample((3,)).shape
        torch.Size([3])
        >>> unchecked = DiscretizedLogisticMixture(logits, loc, scale, lower=0, validate_args=False)
        >>> unchecked.log_prob(torch.tensor([-1.0, 2.5])).exp()  # below lower, not an integer
        tensor([0., 0.])
        >>> float(q.log_prob(torch.arange(200.0)).exp().sum())
        1.0000...
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "logits": constraints.real_vector,
        "loc": constraints.real_vector,
        "scale": constraints.independent(constraints.positive, 1),
    }
    has_rsample = False

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        scale: Tensor,
        lower: float | Tensor = 0,
        upper: float | Tensor = math.inf,
        validate_args: bool | None = None,
    ) -> None:
        self._lower_number = _number_bound(lower, "lower")
        self._upper_number = _number_bound(upper, "upper")
        lower_number, upper_number = self._lower_number, self._upper_number
        if (
            lower_number is not None
            and upper_number is not None
            and (not lower_number <= upper_number or lower_number == math.inf)
        ):
            raise ValueError(f"need lower <= upper < inf and lower < inf, got {lower}, {upper}")
        params = [torch.as_tensor(p) for p in (logits, loc, scale)]
        dtype = torch.promote_types(
            torch.promote_types(params[0].dtype, params[1].dtype), params[2].dtype
        )
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        device = params[1].device
        logits, loc, scale = (p.to(device=device, dtype=dtype) for p in params)
        if min(logits.dim(), loc.dim(), scale.dim()) < 1:
            raise ValueError(
                "logits, loc and scale need a last dimension of size K (the components); "
                f"got shapes {tuple(logits.shape)}, {tuple(loc.shape)}, {tuple(scale.shape)}"
            )
        lower_t = torch.as_tensor(lower).to(device=device, dtype=dtype)
        upper_t = torch.as_tensor(upper).to(device=device, dtype=dtype)
        try:
            shape = torch.broadcast_shapes(logits.shape, loc.shape, scale.shape)
            batch_shape = torch.broadcast_shapes(shape[:-1], lower_t.shape, upper_t.shape)
        except RuntimeError as error:
            raise ValueError(
                f"shapes do not broadcast: logits {tuple(logits.shape)}, loc "
                f"{tuple(loc.shape)}, scale {tuple(scale.shape)}, lower "
                f"{tuple(lower_t.shape)}, upper {tuple(upper_t.shape)}"
            ) from error
        full = batch_shape + shape[-1:]
        self.logits = logits.expand(full)
        self.loc = loc.expand(full)
        self.scale = scale.expand(full)
        self.lower = lower_t.expand(batch_shape)
        self.upper = upper_t.expand(batch_shape)
        super().__init__(batch_shape, validate_args=validate_args)
        if self._validate_args:
            low, high = self.lower, self.upper
            valid = (
                (low == low.floor())
                & (high == high.floor())
                & (low <= high)
                & (low < math.inf)
                & (high > -math.inf)
            )
            if not bool(valid.all()):
                raise ValueError(
                    "lower and upper must be integers (or -inf and +inf) with lower <= upper"
                )

    @property
    def num_components(self) -> int:
        """K, the number of logistic components."""
        return int(self.logits.shape[-1])

    def expand(
        self, batch_shape: _Shape, _instance: DiscretizedLogisticMixture | None = None
    ) -> DiscretizedLogisticMixture:
        new: DiscretizedLogisticMixture = self._get_checked_instance(  # type: ignore[no-untyped-call]
            DiscretizedLogisticMixture, _instance
        )
        batch_shape = torch.Size(batch_shape)
        full = batch_shape + (self.num_components,)
        new.logits = self.logits.expand(full)
        new.loc = self.loc.expand(full)
        new.scale = self.scale.expand(full)
        new.lower = self.lower.expand(batch_shape)
        new.upper = self.upper.expand(batch_shape)
        new._lower_number = self._lower_number
        new._upper_number = self._upper_number
        super(DiscretizedLogisticMixture, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        lower: int | float | Tensor = self.lower
        if self._lower_number is not None:
            lower = self._lower_number
        if self._upper_number == math.inf:
            if not isinstance(lower, Tensor) and lower == 0:
                return constraints.nonnegative_integer
            return constraints._IntegerGreaterThan(lower)
        upper = self.upper if self._upper_number is None else self._upper_number
        return constraints.integer_interval(lower, upper)

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError(
            "DiscretizedLogisticMixture has no closed-form mean; estimate it from samples"
        )

    @property
    def variance(self) -> Tensor:
        raise NotImplementedError(
            "DiscretizedLogisticMixture has no closed-form variance; estimate it from samples"
        )

    def _log_component_masses(self) -> Tensor:
        """``log[F_c(upper + ½) - F_c(lower - ½)]`` per component, shape ``batch + (K,)``.

        The three terms of :func:`_log_logistic_interval`; an infinite bound makes its
        terms exactly 0 and is kept out of the arithmetic, because its gradient would
        be ``0 · ∞ = NaN`` (``∂/∂scale (∞ - loc) / scale = -∞``).
        """
        lower = self.lower.unsqueeze(-1)
        upper = self.upper.unsqueeze(-1)
        lower_finite = torch.isfinite(lower)
        upper_finite = torch.isfinite(upper)
        both_finite = lower_finite & upper_finite
        safe_lower = torch.where(lower_finite, lower, torch.zeros_like(lower))
        safe_upper = torch.where(upper_finite, upper, torch.zeros_like(upper))
        z_low = (safe_lower - 0.5 - self.loc) / self.scale
        z_high = (safe_upper + 0.5 - self.loc) / self.scale
        width = torch.where(both_finite, (safe_upper - safe_lower + 1.0) / self.scale, 1.0)
        zero = torch.zeros_like(z_low)
        return (
            torch.where(upper_finite, logsigmoid(z_high), zero)
            + torch.where(lower_finite, logsigmoid(-z_low), zero)
            + torch.where(both_finite, _log1mexp(width), zero)
        )

    def log_prob(self, value: Tensor) -> Tensor:
        """``log P(value)``: ``-inf`` off the integers of ``[lower, upper]``."""
        if self._validate_args:
            self._validate_sample(value)
        value = torch.as_tensor(value, device=self.loc.device).to(self.loc.dtype)
        inside = (
            torch.isfinite(value)
            & (value == value.floor())
            & (value >= self.lower)
            & (value <= self.upper)
        )
        # Score a harmless stand-in where the value is outside: no NaN, not even in grads.
        safe = torch.where(inside, value, torch.zeros_like(value)).unsqueeze(-1)
        z_low = (safe - 0.5 - self.loc) / self.scale
        z_high = (safe + 0.5 - self.loc) / self.scale
        log_bins = _log_logistic_interval(z_low, z_high, 1.0 / self.scale)
        log_weights = torch.log_softmax(self.logits, dim=-1)
        log_numerator = torch.logsumexp(log_weights + log_bins, dim=-1)
        log_normalizer = torch.logsumexp(log_weights + self._log_component_masses(), dim=-1)
        log_mass = log_numerator - log_normalizer
        return torch.where(inside, log_mass, torch.full_like(log_mass, -math.inf))

    @torch.no_grad()
    def sample(self, sample_shape: _Shape = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        log_weights = torch.log_softmax(self.logits, dim=-1) + self._log_component_masses()
        component = Categorical(logits=log_weights, validate_args=False).sample(
            torch.Size(sample_shape)
        )
        index = component.unsqueeze(-1)
        full = shape + (self.num_components,)
        loc = self.loc.expand(full).gather(-1, index).squeeze(-1)
        scale = self.scale.expand(full).gather(-1, index).squeeze(-1)
        lower = self.lower.expand(shape)
        upper = self.upper.expand(shape)
        z = _sample_truncated_logistic(
            (lower - 0.5 - loc) / scale,
            (upper + 0.5 - loc) / scale,
            (upper - lower + 1.0) / scale,
        )
        value = torch.floor(loc + scale * z + 0.5)
        return torch.minimum(torch.maximum(value, lower), upper)


def _sample_truncated_logistic(z_low: Tensor, z_high: Tensor, width: Tensor) -> Tensor:
    """Exact draws from the standard logistic truncated to ``[z_low, z_high]``, elementwise.

    The interval is split at 0 into a left part ``[z_low, min(z_high, 0)]`` and a right
    part, mirrored by the symmetry ``σ(-z) = 1 - σ(z)`` onto ``[-z_high, min(-z_low, 0)]``.
    A part is chosen with probability proportional to its mass; within it,
    ``u = σ(lo) + V (σ(hi) - σ(lo))`` with ``V ~ U(0, 1)`` is formed in log space, and
    ``z = logit(u) = log u - log(1 - u)`` is accurate because ``u <= ½``. ``width`` is
    ``z_high - z_low``, computed by the caller without cancellation.
    """
    left_high = torch.clamp(z_high, max=0.0)
    left_width = torch.where(z_high <= 0, width, -z_low)
    right_low = -z_high
    right_high = torch.clamp(-z_low, max=0.0)
    right_width = torch.where(z_low >= 0, width, z_high)
    log_left = _log_logistic_interval(z_low, left_high, left_width)
    log_right = _log_logistic_interval(right_low, right_high, right_width)
    log_right_probability = log_right - torch.logaddexp(log_left, log_right)
    right = torch.rand_like(z_low).log() < log_right_probability
    low = torch.where(right, right_low, z_low)
    high = torch.where(right, right_high, left_high)
    log_mass = torch.where(right, log_right, log_left)
    log_u = torch.logaddexp(logsigmoid(low), torch.rand_like(z_low).log() + log_mass)
    log_u = torch.minimum(log_u, logsigmoid(high))
    z = log_u - torch.log1p(-torch.exp(log_u))
    return torch.where(right, -z, z)


def _log_prob_zero_outside(fn: Distribution, value: Tensor) -> Tensor:
    """``log fn(value)`` where ``value`` is in ``fn``'s support, ``-inf`` elsewhere."""
    unchecked = copy.copy(fn)
    unchecked._validate_args = False
    log_density = unchecked.log_prob(value)
    support = fn.support
    if support is None or constraints.is_dependent(support):
        return log_density
    try:
        inside = support.check(value)
    except (ValueError, NotImplementedError, RuntimeError):
        return log_density
    return torch.where(inside, log_density, torch.full_like(log_density, -math.inf))


class DefensiveMixture(Distribution):
    """The defensive mixture ``q'(x) = (1 - ε) q(x) + ε p(x)`` of a proposal and the prior.

    torch.distributions has no two-component mixture of arbitrary distributions
    (``MixtureSameFamily`` needs one family), hence this class. Its importance weights
    against the prior are bounded, ``p(x) / q'(x) <= 1 / ε``, whatever the proposal
    (Hesterberg, "Weighted average importance sampling and defensive mixture
    distributions", 1995).

    ``log_prob(x) = logaddexp(log(1 - ε) + log q(x), log ε + log p(x))``, where a value
    outside one part's support contributes zero density for that part. Sampling draws,
    per batch element, from the prior with probability ε and from the proposal
    otherwise; samples take the prior's dtype. The support is the prior's; there is no
    ``rsample``. ``mean = (1 - ε) mean_q + ε mean_p`` and, by the law of total variance,
    ``variance = (1 - ε)(var_q + mean_q²) + ε(var_p + mean_p²) - mean²``.

    Args:
        proposal: q, a distribution with the prior's batch and event shapes.
        prior: p.
        epsilon: ε, the prior's weight, a number in (0, 1).
        validate_args: check values in ``log_prob`` against the prior's support.

    Raises:
        ValueError: ε outside (0, 1), shapes that differ, or a discrete proposal for a
            continuous prior (or the reverse).

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> from infcomp.distributions import DefensiveMixture
        >>> prior, proposal = Normal(0.0, 1.0), Normal(3.0, 0.1)
        >>> q = DefensiveMixture(proposal, prior, epsilon=0.1)
        >>> x = torch.tensor(-4.0)  # far in the prior's tail, where q alone is ~0
        >>> float((prior.log_prob(x) - q.log_prob(x)).exp())  # the weight, at most 1/ε
        10.0...
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    has_rsample = False

    def __init__(
        self,
        proposal: Distribution,
        prior: Distribution,
        epsilon: float,
        validate_args: bool | None = None,
    ) -> None:
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, (int, float))
            or not 0.0 < epsilon < 1.0
        ):
            raise ValueError(f"epsilon must be a number in (0, 1), got {epsilon!r}")
        if proposal.batch_shape != prior.batch_shape or proposal.event_shape != prior.event_shape:
            raise ValueError(
                "proposal and prior must have equal shapes; got batch "
                f"{tuple(proposal.batch_shape)}, event {tuple(proposal.event_shape)} for the "
                f"proposal and batch "
                f"{tuple(prior.batch_shape)}, event {tuple(prior.event_shape)} for the prior"
            )
        proposal_discrete = _is_discrete(proposal)
        prior_discrete = _is_discrete(prior)
        if None not in (proposal_discrete, prior_discrete) and proposal_discrete != prior_discrete:
            raise ValueError(
                f"proposal {type(proposal).__name__} and prior {type(prior).__name__} must have "
                "the same support; one is discrete and the other continuous"
            )
        self.proposal = proposal
        self.prior = prior
        self.epsilon = float(epsilon)
        super().__init__(prior.batch_shape, prior.event_shape, validate_args=validate_args)

    def expand(
        self, batch_shape: _Shape, _instance: DefensiveMixture | None = None
    ) -> DefensiveMixture:
        new: DefensiveMixture = self._get_checked_instance(  # type: ignore[no-untyped-call]
            DefensiveMixture, _instance
        )
        batch_shape = torch.Size(batch_shape)
        new.proposal = self.proposal.expand(batch_shape)
        new.prior = self.prior.expand(batch_shape)
        new.epsilon = self.epsilon
        super(DefensiveMixture, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property
    def support(self) -> constraints.Constraint | None:
        return self.prior.support

    @property
    def mean(self) -> Tensor:
        return (1.0 - self.epsilon) * self.proposal.mean + self.epsilon * self.prior.mean

    @property
    def variance(self) -> Tensor:
        q_mean, p_mean = self.proposal.mean, self.prior.mean
        second_moment = (1.0 - self.epsilon) * (self.proposal.variance + q_mean**2) + (
            self.epsilon * (self.prior.variance + p_mean**2)
        )
        return second_moment - self.mean**2

    def log_prob(self, value: Tensor) -> Tensor:
        """``logaddexp(log(1 - ε) + log q(value), log ε + log p(value))``."""
        if self._validate_args:
            self._validate_sample(value)
        log_q = _log_prob_zero_outside(self.proposal, value)
        log_p = _log_prob_zero_outside(self.prior, value)
        return torch.logaddexp(log_q + math.log1p(-self.epsilon), log_p + math.log(self.epsilon))

    @torch.no_grad()
    def sample(self, sample_shape: _Shape = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        from_proposal = self.proposal.sample(sample_shape)
        from_prior = self.prior.sample(sample_shape)
        use_prior = torch.rand(shape, device=from_prior.device) < self.epsilon
        use_prior = use_prior.reshape(shape + (1,) * len(self.event_shape))
        return torch.where(use_prior, from_prior, from_proposal.to(from_prior.dtype))


def _is_discrete(fn: Distribution) -> bool | None:
    """Whether ``fn``'s support is discrete; ``None`` when it cannot be told."""
    try:
        support = fn.support
        return None if support is None else bool(support.is_discrete)
    except NotImplementedError:
        return None


def stack_distributions(distributions: Sequence[Distribution]) -> Distribution | None:
    """One distribution whose batch slice ``i`` is ``distributions[i]``, or ``None``.

    The result has batch shape ``(n,) + batch_shape`` and the common event shape. It is
    built when every distribution has the same type and parameters of equal shapes:
    the constructor parameters (``arg_constraints`` keys held by the instance, or plain
    properties such as LogNormal's ``loc``; of ``probs``/``logits`` only ``logits`` when
    an instance holds both, of a MultivariateNormal's ``scale_tril``,
    ``covariance_matrix`` and ``precision_matrix`` the first held) are stacked along a new first
    dimension and passed back to the constructor. :class:`~torch.distributions.Independent`,
    :class:`~torch.distributions.MixtureSameFamily`, :class:`DiscretizedLogisticMixture`
    and :class:`DefensiveMixture` are stacked part by part. Other constructor arguments
    are passed on only when every distribution holds the same plain value of them.
    The result validates values as the first distribution does.

    Returns ``None`` (it never raises) when the distributions cannot be stacked: an
    empty sequence, different types or shapes, parameters that are neither tensors nor
    numbers, or constructors that need arguments the instances do not reveal.

    Example:
        >>> from torch.distributions import Normal, Poisson
        >>> from infcomp.distributions import stack_distributions
        >>> stacked = stack_distributions([Normal(0.0, 1.0), Normal(2.0, 3.0)])
        >>> stacked.batch_shape, stacked.loc, stacked.scale
        (torch.Size([2]), tensor([0., 2.]), tensor([1., 3.]))
        >>> stack_distributions([Normal(0.0, 1.0), Poisson(2.0)]) is None
        True
    """
    items = list(distributions)
    if not items or not all(isinstance(d, Distribution) for d in items):
        return None
    return _rebuilt(items, torch.stack, torch.Size((len(items),)) + items[0].batch_shape)


def concatenate_distributions(distributions: Sequence[Distribution]) -> Distribution | None:
    """One distribution whose leading batch dimension is those of ``distributions`` one
    after the other (each has batch shape ``(n_k,) + rest``), or ``None``; as
    :func:`stack_distributions`, with ``torch.cat`` for ``torch.stack``."""
    items = list(distributions)
    if not items or any(not d.batch_shape for d in items):
        return None
    expected = torch.Size((sum(d.batch_shape[0] for d in items),)) + items[0].batch_shape[1:]
    return _rebuilt(items, torch.cat, expected, ragged=True)


def index_distribution(fn: Distribution, index: Tensor) -> Distribution | None:
    """The distribution of particles ``index`` of ``fn``, or ``None``.

    ``fn`` has a leading particle dimension (batch shape ``(n,) + rest``); the result has
    batch shape ``(len(index),) + rest`` and the same event shape: slice ``j`` is slice
    ``index[j]`` of ``fn``. The inverse of :func:`stack_distributions`, built from the same
    constructor parameters (each indexed along its first dimension), and with the same
    reach: ``None`` (it never raises) where those cannot be found.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> from infcomp.distributions import index_distribution
        >>> fn = Normal(torch.tensor([0.0, 1.0, 2.0]), 1.0)
        >>> index_distribution(fn, torch.tensor([2, 0])).loc
        tensor([2., 0.])
    """
    if not fn.batch_shape:
        return None
    expected = torch.Size((len(index),)) + fn.batch_shape[1:]
    size = fn.batch_shape[0]

    def take(tensors: list[Tensor]) -> Tensor:
        (tensor,) = tensors
        if tensor.dim() == 0 or tensor.shape[0] != size:
            raise ValueError("a parameter without the particle dimension")
        return tensor[index]

    return _rebuilt([fn], take, expected)


_Combine = Callable[[list[Tensor]], Tensor]


def _rebuilt(
    items: list[Distribution], combine: _Combine, batch_shape: torch.Size, ragged: bool = False
) -> Distribution | None:
    """:func:`_stack` checked: the items' type and event shape, the expected batch shape,
    and the first item's validation; ``None`` (never an exception) when it cannot be."""
    first = items[0]
    try:
        result = _stack(items, combine, ragged)
    except Exception:  # any failure means "cannot be built"
        return None
    if (
        result is None
        or type(result) is not type(first)
        or result.batch_shape != batch_shape
        or result.event_shape != first.event_shape
    ):
        return None
    result._validate_args = first._validate_args
    return result


def _stack(
    items: list[Distribution], combine: _Combine = torch.stack, ragged: bool = False
) -> Distribution | None:
    """One distribution whose parameters are ``combine`` of the items' parameters (one by
    one): ``torch.stack`` stacks; ``torch.cat`` concatenates (``ragged``: the leading
    dimensions may differ); with one item, indexing takes particles out."""
    first = items[0]
    kind = type(first)
    lead = 1 if ragged else 0
    if any(
        type(d) is not kind
        or d.batch_shape[lead:] != first.batch_shape[lead:]
        or d.event_shape != first.event_shape
        for d in items
    ):
        return None
    if kind is Independent:
        ndims = [d.reinterpreted_batch_ndims for d in items]  # type: ignore[attr-defined]
        base = _stack([d.base_dist for d in items], combine, ragged)  # type: ignore[attr-defined]
        if base is None or len(set(ndims)) != 1:
            return None
        return Independent(base, ndims[0], validate_args=False)
    if kind is MixtureSameFamily:
        mixing = _stack([d.mixture_distribution for d in items], combine, ragged)  # type: ignore[attr-defined]
        components = _stack([d.component_distribution for d in items], combine, ragged)  # type: ignore[attr-defined]
        if not isinstance(mixing, Categorical) or components is None:
            return None
        return MixtureSameFamily(mixing, components, validate_args=False)
    if kind is DefensiveMixture:
        mixtures: list[DefensiveMixture] = items  # type: ignore[assignment]
        if len({d.epsilon for d in mixtures}) != 1:
            return None
        proposal = _stack([d.proposal for d in mixtures], combine, ragged)
        prior = _stack([d.prior for d in mixtures], combine, ragged)
        if proposal is None or prior is None:
            return None
        return DefensiveMixture(proposal, prior, mixtures[0].epsilon, validate_args=False)
    if kind is DiscretizedLogisticMixture:
        logistic: list[DiscretizedLogisticMixture] = items  # type: ignore[assignment]
        lowers = {d._lower_number for d in logistic}
        uppers = {d._upper_number for d in logistic}
        lower_number = lowers.pop() if len(lowers) == 1 else None
        upper_number = uppers.pop() if len(uppers) == 1 else None
        return DiscretizedLogisticMixture(
            combine([d.logits for d in logistic]),
            combine([d.loc for d in logistic]),
            combine([d.scale for d in logistic]),
            lower=combine([d.lower for d in logistic]) if lower_number is None else lower_number,
            upper=combine([d.upper for d in logistic]) if upper_number is None else upper_number,
            validate_args=False,
        )
    return _stack_by_constructor(items, combine, lead)


def _stack_by_constructor(
    items: list[Distribution], combine: _Combine, lead: int
) -> Distribution | None:
    """Stack the constructor parameters of ordinary distributions and call the constructor."""
    first = items[0]
    kind = type(first)
    arg_names = list(first.arg_constraints)
    names = [name for name in arg_names if _parameter(first, name) is not None]
    for group in _EXCLUSIVE_PARAMETERS:
        present = [name for name in group if name in names]
        names = [name for name in names if name not in present[1:]]
    if not names:
        return None
    kwargs: dict[str, Any] = {}
    for name in names:
        values = [_parameter(d, name) for d in items]
        if any(v is None for v in values) and any(name in g for g in _EXCLUSIVE_PARAMETERS):
            # Mixed parametrizations (probs here, logits there): compute the preferred one.
            values = [getattr(d, name) for d in items]
        tensors = []
        for value in values:
            if isinstance(value, Tensor):
                tensors.append(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                tensors.append(torch.as_tensor(value))
            else:
                return None
        if any(t.shape[lead:] != tensors[0].shape[lead:] for t in tensors):
            return None
        kwargs[name] = combine(tensors)
    signature = _constructor_signature(kind)
    for name, parameter in list(signature.parameters.items())[1:]:
        if name in arg_names or name == "validate_args":
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        other = _other_argument(items, name)
        if other is _MISSING:
            if parameter.default is parameter.empty:
                return None
            # A default is assumed only when the instances hold it as ``_name``.
            other = _other_argument(items, "_" + name)
            if other is _MISSING or not _same_plain(other, parameter.default):
                return None
            continue
        kwargs[name] = other
    if "validate_args" not in signature.parameters:
        return None
    return kind(**kwargs, validate_args=False)


_MISSING = object()


# Looked up once per class: minibatches index the distributions of every site at every step.
_SIGNATURES: dict[type[Distribution], inspect.Signature] = {}
_PLAIN_PROPERTIES: dict[tuple[type[Distribution], str], bool] = {}


def _constructor_signature(kind: type[Distribution]) -> inspect.Signature:
    """The signature of a distribution class's constructor."""
    if kind not in _SIGNATURES:
        _SIGNATURES[kind] = inspect.signature(kind.__init__)
    return _SIGNATURES[kind]


def _plain_property(kind: type[Distribution], name: str) -> bool:
    """Whether ``kind.name`` is a plain property (not a lazy one, which would compute an
    alternative parametrization)."""
    if (kind, name) not in _PLAIN_PROPERTIES:
        attribute = inspect.getattr_static(kind, name, None)
        plain = isinstance(attribute, property) and not isinstance(attribute, lazy_property)
        _PLAIN_PROPERTIES[kind, name] = plain
    return _PLAIN_PROPERTIES[kind, name]


def _parameter(fn: Distribution, name: str) -> Any:
    """A constructor parameter held by ``fn``: an instance attribute, or a plain property."""
    if name in vars(fn):
        return vars(fn)[name]
    return getattr(fn, name) if _plain_property(type(fn), name) else None


def _other_argument(items: list[Distribution], name: str) -> Any:
    """The common plain value of instance attribute ``name``; ``_MISSING`` when some
    instance lacks it; raises (so the caller gives up) when the values differ or are
    tensors."""
    if not all(name in vars(d) for d in items):
        return _MISSING
    values = [vars(d)[name] for d in items]
    if any(isinstance(v, Tensor) for v in values) or any(v != values[0] for v in values):
        raise ValueError(f"constructor argument {name!r} differs between the distributions")
    return values[0]


def _same_plain(value: Any, default: Any) -> bool:
    return bool(value is default or (not isinstance(value, Tensor) and value == default))
