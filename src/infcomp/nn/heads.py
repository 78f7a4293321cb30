"""Proposal heads: modules that turn the network's hidden state into a distribution.

A head is chosen by the prior's support (``torch.distributions.constraints``):

- real vectors (event size > 1): a conditional normalizing flow (zuko's neural spline
  flow) relative to the prior's mean and standard deviation, ``x = m + s·u``, which
  represents correlated and multimodal posteriors;
- real scalars (and vectors where the network's config turns flows off): a mixture of
  K Normals, located and scaled relative to the prior's mean and standard deviation,
  ``loc = m + s·a``, ``scale = s·softplus(b)``;
- constrained continuous (positive, interval, simplex, ...): that real head in the
  unconstrained space, pushed through :func:`unconstraining_transform`'s bijection
  (``biject_to(support)``, except on intervals: the standard Normal CDF);
- boolean: Bernoulli with ``logits = prior logits + a``;
- a small finite set (a Categorical, a Binomial): Categorical over the support with
  ``logits = prior log-probabilities + a``;
- unbounded counts (Poisson, Geometric, NegativeBinomial) and large integer ranges: a
  mixture of discretized logistics on the integers, relative to the prior's mean and sd.

Every head returns a distribution whose samples lie in the prior's support. A head is
built from a :class:`HeadSpec`, a small serializable description made from an example
prior by :func:`head_spec`, so that a saved network is rebuilt without the model.

The heads form a registry, :data:`HEADS`, in priority order: :func:`head_spec` gives a
prior the first head whose :meth:`ProposalHead.spec_for` accepts it, and
:func:`make_head` finds a spec's head by its ``kind``. To cover a new support, write a
:class:`ProposalHead` subclass (its ``kind``, ``spec_for``, ``forward`` and
``examples``; ``value_features`` where signed ``log1p`` of the value does not suit it)
and add it to :data:`HEADS`; the contract test in ``tests/test_heads.py`` runs over
every registered head and its examples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Beta,
    Binomial,
    Categorical,
    Cauchy,
    Dirichlet,
    Distribution,
    Gamma,
    Geometric,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    NegativeBinomial,
    Normal,
    OneHotCategorical,
    Poisson,
    TransformedDistribution,
    Uniform,
    biject_to,
    constraints,
)
from torch.distributions.transforms import (
    AffineTransform,
    ComposeTransform,
    IndependentTransform,
    ReshapeTransform,
    Transform,
)

from infcomp.distributions import DiscretizedLogisticMixture
from infcomp.errors import ModelError

# softplus(SOFTPLUS_ONE) = 1: raw outputs near zero give a scale equal to the prior's.
SOFTPLUS_ONE = math.log(math.e - 1)

# zuko switches torch's argument validation off for the whole process when imported
# (zuko/distributions.py); infcomp relies on it (data and parameter checks), and must
# not change a global setting of its users: import it and restore the setting.
_validation = Distribution._validate_args
import zuko  # noqa: E402

Distribution.set_default_validate_args(_validation)


@dataclass(frozen=True)
class HeadSpec:
    """What a head needs to know of a site, independent of any batch.

    Attributes:
        kind: the ``kind`` of the head class in :data:`HEADS` (``"flow"``, ``"real"``,
            ``"constrained"``, ``"bernoulli"``, ``"categorical"``, ``"one_hot"``,
            ``"count"``); saved networks store it.
        natural_shape: the prior's batch shape in an unbatched run.
        event_shape: the prior's event shape.
        base_event_shape: for ``"constrained"`` and ``"flow"``, the unconstrained event
            shape.
        num_categories: for ``"categorical"`` and ``"one_hot"``.
        lower, upper: for ``"categorical"`` and ``"count"``, the integer range
            (``upper`` is ``math.inf`` for unbounded counts).
        value_dtype: the dtype of the prior's samples (e.g. ``"float32"``, ``"int64"``).
        distribution: the prior's class name (for messages and keys).
    """

    kind: str
    natural_shape: tuple[int, ...]
    event_shape: tuple[int, ...]
    base_event_shape: tuple[int, ...] = ()
    num_categories: int = 0
    lower: float = 0.0
    upper: float = math.inf
    value_dtype: str = "float32"
    distribution: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (for saving); ``from_dict`` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadSpec:
        fields = dict(data)
        for name in ("natural_shape", "event_shape", "base_event_shape"):
            fields[name] = tuple(fields[name])
        return cls(**fields)


class UnsupportedSiteError(ModelError):
    """No proposal head fits a site's distribution."""


def head_spec(
    name: str,
    prior: Distribution,
    max_categories: int = 256,
    lead: int = 0,
    skip: tuple[str, ...] = (),
) -> HeadSpec:
    """The head for a site's prior: the first head of :data:`HEADS` that covers its support.

    ``prior`` may carry ``lead`` leading batch dimensions (particles, simulations); the
    spec describes one of its rows. Heads whose kind is in ``skip`` are passed over
    (``("flow",)``: the diagonal heads for vector sites). Raises
    :class:`UnsupportedSiteError` (naming the site) for supports no head covers.

    Example:
        >>> from torch.distributions import Gamma, Normal, Poisson
        >>> from infcomp.nn.heads import head_spec
        >>> head_spec("z", Normal(0.0, 1.0)).kind
        'real'
        >>> head_spec("rate", Gamma(2.0, 1.0)).kind
        'constrained'
        >>> head_spec("k", Poisson(3.0)).kind
        'count'
    """
    blank = HeadSpec(
        kind="",
        natural_shape=tuple(prior.batch_shape[lead:]),
        event_shape=tuple(prior.event_shape),
        value_dtype=str(prior.sample().dtype).removeprefix("torch."),
        distribution=type(prior).__name__,
    )
    for head in HEADS:
        if head.kind in skip:
            continue
        spec = head.spec_for(prior, blank, max_categories)
        if spec is not None:
            return spec
    raise UnsupportedSiteError(
        f"sample site {name!r}: no proposal head for {type(prior).__name__} with support "
        f"{prior.support}; propose it from the prior instead, with "
        f"network=NetworkConfig(prior_sites=({name!r},)) for this site or "
        f"network=NetworkConfig(prior_sites=('*unsupported*',)) for every site "
        f"no head covers"
    )


def head_class(kind: str) -> type[ProposalHead]:
    """The head class of :data:`HEADS` with this ``kind``."""
    for head in HEADS:
        if head.kind == kind:
            return head
    raise ValueError(f"unknown head kind {kind!r} (known: {[head.kind for head in HEADS]})")


def make_head(spec: HeadSpec, hidden_size: int, components: int) -> ProposalHead:
    """The head module for a spec (``components``: of the mixture heads; others ignore it).

    Example:
        >>> import torch
        >>> from torch.distributions import Poisson
        >>> from infcomp.nn.heads import head_spec, make_head
        >>> head = make_head(head_spec("k", Poisson(3.0)), hidden_size=8, components=3)
        >>> proposal = head(torch.zeros(1, 8), Poisson(torch.full((1,), 3.0)))
        >>> type(proposal).__name__, tuple(proposal.batch_shape)
        ('DiscretizedLogisticMixture', (1,))
    """
    return head_class(spec.kind)(spec, hidden_size, components)


def _base_constraint(support: constraints.Constraint | None) -> constraints.Constraint | None:
    while isinstance(support, constraints._IndependentConstraint):
        support = support.base_constraint
    return support


class NormalCDFTransform(Transform):
    """``y = Φ(x)``, the standard Normal CDF, from the real line onto (0, 1); its inverse
    is the probit ``Φ⁻¹`` and ``log |dy/dx| = log φ(x) = -x²/2 - log √(2π)``.

    ``Φ(x) = erfc(-x/√2)/2`` keeps the lower tail precise (``torch.special.ndtr`` loses
    it in float32: 0 at x = -6). As torch's ``SigmoidTransform`` does, y is clamped to
    ``[tiny, 1 - eps]`` of its dtype both ways: a value that still lands on an end of
    the interval (in float32, a + (b - a)·Φ(x) rounds to a for x below about -5.5) maps
    back to a finite x, so its log-density stays finite.
    """

    domain = constraints.real
    codomain = constraints.unit_interval
    bijective = True
    sign = +1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NormalCDFTransform)

    def __hash__(self) -> int:
        return hash(type(self))

    def _call(self, x: Tensor) -> Tensor:
        finfo = torch.finfo(x.dtype)
        phi = 0.5 * torch.special.erfc(x * -math.sqrt(0.5))
        return phi.clamp(min=finfo.tiny, max=1 - finfo.eps)

    def _inverse(self, y: Tensor) -> Tensor:
        finfo = torch.finfo(y.dtype)
        return torch.special.ndtri(y.clamp(min=finfo.tiny, max=1 - finfo.eps))

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return -0.5 * x.square() - 0.5 * math.log(2 * math.pi)


def unconstraining_transform(support: constraints.Constraint) -> Transform:
    """The bijection from unconstrained space onto ``support`` that the constrained heads
    push their proposals through: ``biject_to(support)``, except on an interval (a, b)
    (``Uniform``, ``Beta``, ...; also within ``Independent``), where it is
    ``x ↦ a + (b - a)·Φ(x)`` (:class:`NormalCDFTransform`) rather than torch's logistic
    ``a + (b - a)·σ(x)``.

    Why: posterior mass piled against an end of the interval (a correlation near ±1
    in SLCP, a Beta posterior near 0) becomes a tail in unconstrained space. Through
    the logistic it is an exponential tail, ``∝ e^{-|x|}``, which the Normal tails of
    the heads cannot cover, so the importance weights there grow without bound;
    through Φ it is a Normal tail, ``∝ φ(x)`` (a uniform prior becomes exactly N(0, 1)).
    On SLCP at 10⁵ simulations (``bench/quality.py``'s task, training seed 0) it raised
    ESS/N at the stated observation, over 20 runs of 5,000 proposals pooled, from 0.095
    to 0.163, and the median over training seeds 0, 1, 2 from 0.093 to 0.146.

    Raises:
        NotImplementedError: torch has no bijection onto ``support``.
    """
    if isinstance(support, constraints._IndependentConstraint):
        inner = unconstraining_transform(support.base_constraint)
        return IndependentTransform(inner, support.reinterpreted_batch_ndims)
    if isinstance(support, (constraints._Interval, constraints._HalfOpenInterval)):
        lower, upper = support.lower_bound, support.upper_bound
        return ComposeTransform([NormalCDFTransform(), AffineTransform(lower, upper - lower)])
    return biject_to(support)


def _integer_range(prior: Distribution) -> dict[str, Any] | None:
    """The spec fields of an integer-interval support (``num_categories``, ``lower``,
    ``upper``), where both bounds are constants."""
    base = _base_constraint(prior.support)
    if not isinstance(base, constraints._IntegerInterval):
        return None
    lower, upper = _constant(base.lower_bound), _constant(base.upper_bound)
    if lower is None or upper is None:
        return None
    return {"num_categories": int(upper - lower) + 1, "lower": lower, "upper": upper}


def integer_range(prior: Distribution) -> tuple[float, float] | None:
    """``(lower, upper)`` of an integer-interval support whose bounds are the same for
    every element of the batch (a Categorical's, a Binomial's with one total count), or
    None. Sites of a family with different ranges (``k_t ~ Binomial(t, p)``) get
    different heads: a head is built for one range."""
    bounds = _integer_range(prior)
    return None if bounds is None else (bounds["lower"], bounds["upper"])


def saved_integer_range(spec: HeadSpec | None) -> tuple[float, float] | None:
    """:func:`integer_range` of the priors a saved head was built for, from its spec
    (for networks saved before families were told apart by it)."""
    if spec is None or spec.kind not in ("categorical", "count") or math.isinf(spec.upper):
        return None
    return (spec.lower, spec.upper)


def _constant(bound: Any) -> float | None:
    if isinstance(bound, (int, float)):
        return float(bound)
    if (
        isinstance(bound, Tensor)
        and bound.numel() >= 1
        and bool((bound == bound.flatten()[0]).all())
    ):
        return float(bound.flatten()[0])
    return None


def _parameter_like(prior: Distribution) -> Tensor:
    """A tensor with the prior's floating dtype and device (for tensors made here)."""
    for value in vars(prior).values():
        if isinstance(value, Tensor) and value.is_floating_point():
            return value
    base = getattr(prior, "base_dist", None)
    if isinstance(base, Distribution):
        return _parameter_like(base)
    return torch.zeros(())


def location_and_spread(prior: Distribution) -> tuple[Tensor, Tensor]:
    """A location and a positive spread of ``prior``, elementwise over its value shape.

    The mean and standard deviation where they are finite; else the ``loc`` and
    ``scale`` attributes (Cauchy); else 0 and 1.
    """
    shape = prior.batch_shape + prior.event_shape
    like = _parameter_like(prior)
    try:
        loc = prior.mean.expand(shape)
    except (NotImplementedError, RuntimeError):
        loc = like.new_full(shape, math.nan)
    try:
        spread = prior.stddev.expand(shape)
    except (NotImplementedError, RuntimeError):
        spread = like.new_full(shape, math.nan)
    fallback_loc = getattr(prior, "loc", None)
    fallback_scale = getattr(prior, "scale", None)
    if isinstance(fallback_loc, Tensor):
        loc = torch.where(torch.isfinite(loc), loc, fallback_loc.expand(shape))
    if isinstance(fallback_scale, Tensor):
        spread = torch.where(torch.isfinite(spread), spread, fallback_scale.expand(shape))
    loc = torch.where(torch.isfinite(loc), loc, torch.zeros_like(loc))
    spread = torch.where(torch.isfinite(spread) & (spread > 0), spread, torch.ones_like(spread))
    return loc.detach(), spread.detach()


@dataclass(frozen=True)
class Readout:
    """The network's readout for a site, ``r = [state, shared]``, kept in its two parts:
    the core's hidden state, one row per particle (``lead + (H,)``), and the evidence all
    particles of a data set share (``data_lead + (E,)``, broadcastable to ``lead``).

    :meth:`linear` computes a linear layer on ``r`` as ``W_s·state + (W_e·shared + b)``:
    the shared part is multiplied once per data set and ``r`` is never materialized per
    particle (for N particles of B data sets that saves writing and reading N·B·(H + E)
    numbers per site).
    """

    state: Tensor
    shared: Tensor

    def linear(self, layer: nn.Linear) -> Tensor:
        """``layer(r)``, shape ``lead + (out,)``."""
        split = self.state.shape[-1]
        own = nn.functional.linear(self.state, layer.weight[:, :split])
        return own + nn.functional.linear(self.shared, layer.weight[:, split:], layer.bias)

    def tensor(self) -> Tensor:
        """``r`` itself, ``lead + (H + E,)``."""
        lead = self.state.shape[:-1]
        return torch.cat([self.state, self.shared.expand(lead + self.shared.shape[-1:])], -1)


#: What a head's ``forward`` takes: the readout as one tensor, or as a :class:`Readout`.
Hidden = Tensor | Readout


class ProposalHead(nn.Module):
    """Base of the heads: a linear layer from the hidden state to raw parameters.

    ``forward(hidden, prior)`` takes the network's readout of shape ``lead + (H,)``
    (a tensor, or a :class:`Readout` in two parts: use :meth:`project`, :meth:`raw` or
    ``hidden.tensor()``), where ``lead`` broadcasts to the prior's leading batch
    dimensions (``prior.batch_shape = lead' + natural``), and returns a distribution with
    the prior's batch and event shapes. Rows that share a hidden state (particles before
    their values differ) are computed once and broadcast.

    A head class also says which priors it covers (:meth:`spec_for`), how the network
    sees a value it proposed (:meth:`value_features`), and gives example priors
    (:meth:`examples`) for the contract test. A subclass is built as
    ``Head(spec, hidden_size, components)`` and calls this constructor with its number
    of raw parameters per element of the prior's batch.
    """

    kind: ClassVar[str]
    """The name of the head in a :class:`HeadSpec` (and in saved networks)."""

    covered: ClassVar[type[constraints.Constraint] | None] = None
    """The class of support this head covers, for the default :meth:`spec_for`."""

    @classmethod
    def spec_for(cls, prior: Distribution, blank: HeadSpec, max_categories: int) -> HeadSpec | None:
        """This head's spec for ``prior``, or None where it does not cover the prior.

        ``blank`` is the spec with the fields every head shares filled in (shapes,
        value dtype, distribution name) and no kind; ``max_categories`` is the largest
        integer range to enumerate. By default the head covers the priors whose
        support, inside any ``independent``, is a ``covered``.
        """
        if cls.covered is not None and isinstance(_base_constraint(prior.support), cls.covered):
            return replace(blank, kind=cls.kind)
        return None

    @classmethod
    def examples(cls) -> tuple[Distribution, ...]:
        """Priors this head covers (with default options), for the contract test."""
        return ()

    @classmethod
    def value_feature_size(cls, spec: HeadSpec) -> int:
        """The width of :meth:`value_features`: by default one per element of a value."""
        return math.prod(spec.natural_shape) * max(math.prod(spec.event_shape), 1)

    @classmethod
    def value_features(cls, spec: HeadSpec, value: Tensor, rows: int) -> Tensor:
        """Features of a site's value for the network's value embedding, shape
        ``(rows, value_feature_size(spec))``: by default ``sign(x)·log(1 + |x|)``."""
        flat = value.reshape(rows, -1)
        flat = flat if flat.is_floating_point() else flat.to(torch.get_default_dtype())
        return flat.sign() * flat.abs().log1p()

    def __init__(self, spec: HeadSpec, hidden_size: int, params_per_element: int) -> None:
        super().__init__()
        self.spec = spec
        self.elements = math.prod(spec.natural_shape)
        self.params_per_element = params_per_element
        self.linear = nn.Linear(hidden_size, self.elements * params_per_element)
        # Start close to the prior: small raw outputs mean "the prior's location and scale".
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def project(self, hidden: Hidden) -> Tensor:
        """The head's linear layer applied to the readout (a tensor, or a
        :class:`Readout` in two parts), shape ``lead + (elements · params_per_element,)``."""
        return hidden.linear(self.linear) if isinstance(hidden, Readout) else self.linear(hidden)

    def raw(self, hidden: Hidden, prior: Distribution) -> Tensor:
        """Raw parameters, shape ``prior.batch_shape + (params_per_element,)``."""
        return expand_raw(self.project(hidden), prior.batch_shape, self.spec.natural_shape)

    def forward(self, hidden: Hidden, prior: Distribution) -> Distribution:
        raise NotImplementedError


def expand_raw(raw: Tensor, batch_shape: torch.Size, natural: tuple[int, ...]) -> Tensor:
    """Raw head outputs ``lead + (E·P,)`` as ``batch_shape + (P,)``, broadcasting the rows
    of ``lead`` over the batch's leading dimensions (E elements of the natural shape)."""
    lead = raw.shape[:-1]
    per_element = raw.shape[-1] // max(math.prod(natural), 1)
    shaped = raw.reshape(lead + torch.Size(natural) + (per_element,))
    return shaped.expand(batch_shape + (per_element,))


class RealHead(ProposalHead):
    """A mixture of K Normals per batch element, relative to the prior (real support).

    For each element: logits π, locations ``m + s·a_k`` and scales ``s·softplus(b_k)``
    with (m, s) the prior's location and spread, independent across the event.
    """

    kind = "real"
    covered = constraints._Real

    @classmethod
    def examples(cls) -> tuple[Distribution, ...]:
        return (
            Normal(0.5, 2.0),
            Normal(torch.zeros(3), 1.0),
            Independent(Normal(torch.zeros(2, 1), 1.0), 1),  # event size 1
            Cauchy(1.0, 2.0),
        )

    def __init__(
        self,
        spec: HeadSpec,
        hidden_size: int,
        components: int,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        event_shape = spec.event_shape if event_shape is None else event_shape
        self.event = torch.Size(event_shape)
        self.components = components
        size = math.prod(event_shape)
        super().__init__(spec, hidden_size, components * (1 + 2 * size))
        # Spread the components' initial locations so that they do not stay identical.
        with torch.no_grad():
            bias = self.linear.bias.view(self.elements, components, 1 + 2 * size)
            offsets = torch.linspace(-1.0, 1.0, components) if components > 1 else torch.zeros(1)
            bias[:, :, 1 : 1 + size] = offsets.view(1, components, 1)

    def mixture(
        self, hidden: Hidden, batch_shape: torch.Size, loc: Tensor, spread: Tensor
    ) -> Distribution:
        """The mixture for base location ``loc`` and spread (shape batch + event)."""
        size = self.event.numel()
        raw = expand_raw(self.project(hidden), batch_shape, self.spec.natural_shape)
        raw = raw.reshape(batch_shape + (self.components, 1 + 2 * size))
        logits = raw[..., 0]
        shape = batch_shape + (self.components,) + self.event
        offsets = raw[..., 1 : 1 + size].reshape(shape)
        widths = raw[..., 1 + size :].reshape(shape)
        event_dims = len(self.event)
        loc = loc.unsqueeze(-1 - event_dims)
        spread = spread.unsqueeze(-1 - event_dims)
        normal = Normal(
            loc + spread * offsets,
            spread * nn.functional.softplus(widths + SOFTPLUS_ONE) + 1e-6,
            validate_args=False,
        )
        component = Independent(normal, event_dims) if event_dims else normal
        if self.components == 1:
            single = Normal(
                normal.loc.squeeze(-1 - event_dims), normal.scale.squeeze(-1 - event_dims)
            )
            return Independent(single, event_dims) if event_dims else single
        mixing = Categorical(logits=logits, validate_args=False)
        return MixtureSameFamily(mixing, component, validate_args=False)

    def forward(self, hidden: Hidden, prior: Distribution) -> Distribution:
        loc, spread = location_and_spread(prior)
        return self.mixture(hidden, prior.batch_shape, loc, spread)


class FlowHead(ProposalHead):
    """A conditional normalizing flow over a continuous vector site, relative to the prior.

    For a real support, ``x = m + s ⊙ (a + softplus(b) ⊙ u)``: (m, s) the prior's mean
    and standard deviation (elementwise); (a, b) an elementwise location and scale read
    off the network's readout r, as in :class:`RealHead` (so that the head starts near
    the prior and finds where the posterior lies as fast as a Gaussian head does); and
    ``u ~ NSF(· | c)``, a neural spline flow (Durkan et al., NeurIPS 2019; zuko's
    :class:`zuko.flows.NSF`, as in sbi) of :data:`FLOW_TRANSFORMS` autoregressive
    rational-quadratic spline transforms of a standard Normal, conditioned on c,
    :data:`FLOW_CONTEXT` features per element of the site's batch read off r by the same
    linear layer. One joint distribution per batch element over the whole event (of
    any shape, flattened to D > 1 coordinates), so that correlated and multimodal
    posteriors are represented. A constrained support (positive, interval, simplex,
    ...) gets the same in the unconstrained space, pushed through
    ``T = unconstraining_transform(support)`` and located at ``T⁻¹(mean)`` as in
    :class:`ConstrainedHead`. Chosen for vector sites whose unconstrained event has
    more than one and at most :data:`FLOW_MAX_SIZE` coordinates, before
    :class:`RealHead` and :class:`ConstrainedHead`.

    Shapes: ``forward(r, prior)`` with r of shape ``lead + (H,)`` returns a distribution
    with the prior's batch and event shapes (``sample``, ``rsample``, ``log_prob``).
    """

    kind = "flow"

    @classmethod
    def spec_for(cls, prior: Distribution, blank: HeadSpec, max_categories: int) -> HeadSpec | None:
        shape = _unconstrained_event_shape(prior)
        if shape is None or not prior.event_shape or not 1 < math.prod(shape) <= FLOW_MAX_SIZE:
            return None
        return replace(blank, kind=cls.kind, base_event_shape=shape)

    @classmethod
    def examples(cls) -> tuple[Distribution, ...]:
        return (
            MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, 0.8], [0.8, 1.0]])),
            Independent(Normal(torch.zeros(3), 2.0), 1),
            Independent(Normal(torch.zeros(2, 2, 3), 1.0), 2),  # natural (2,), event (2, 3)
            Independent(Uniform(-3 * torch.ones(5), 3.0), 1),
            Dirichlet(torch.ones(3)),
        )

    def __init__(self, spec: HeadSpec, hidden_size: int, components: int = 1) -> None:
        self.event = torch.Size(spec.base_event_shape)
        super().__init__(spec, hidden_size, FLOW_CONTEXT + 2 * self.event.numel())
        # zuko builds its masks with operations the meta device lacks (a saved network's
        # blueprint is built there): the flow, of bounded size, is built on the CPU.
        with torch.device("cpu"):
            self.flow = zuko.flows.NSF(
                self.event.numel(),
                context=FLOW_CONTEXT,
                transforms=FLOW_TRANSFORMS,
                hidden_features=(64, 64),
            )
        # Small last layers: spline parameters near zero are the identity (uniform bins,
        # unit slopes), so the head starts near N(m, s²), like the mixture heads.
        with torch.no_grad():
            for transform in self.flow.transform.transforms:
                last = transform.hyper[-1]
                last.weight.mul_(0.01)
                last.bias.zero_()

    def forward(self, hidden: Hidden, prior: Distribution) -> Distribution:
        size = self.event.numel()
        support = prior.support
        real = isinstance(_base_constraint(support), constraints._Real)
        if real:
            loc, spread = location_and_spread(prior)
        else:
            assert support is not None
            constrain = unconstraining_transform(support)
            loc, spread = _unconstrained_location(prior, constrain, prior.batch_shape + self.event)
        shape = prior.batch_shape + (size,)
        loc, spread = loc.reshape(shape), spread.reshape(shape)
        raw = self.raw(hidden, prior)
        offset, width = raw[..., FLOW_CONTEXT : FLOW_CONTEXT + size], raw[..., -size:]
        scale = spread * nn.functional.softplus(width + SOFTPLUS_ONE) + 1e-6
        transforms: list[Transform] = [AffineTransform(loc + spread * offset, scale, event_dim=1)]
        if len(self.event) != 1:
            transforms.append(ReshapeTransform(torch.Size([size]), self.event))
        if not real:
            transforms.append(constrain)
        base = self.flow(raw[..., :FLOW_CONTEXT])
        return TransformedDistribution(base, transforms, validate_args=False)


#: Conditioning features of a :class:`FlowHead` per element of the site's batch.
FLOW_CONTEXT = 32
#: Spline transforms of a :class:`FlowHead`'s flow.
FLOW_TRANSFORMS = 3
#: The largest event (unconstrained coordinates) a :class:`FlowHead` takes: sampling an
#: autoregressive flow costs one pass per coordinate; larger sites get diagonal heads.
FLOW_MAX_SIZE = 256


class ConstrainedHead(RealHead):
    """A :class:`RealHead` in the unconstrained space, pushed through the support's
    bijection: ``q = T_# (Normal mixture)`` with ``T = unconstraining_transform(support)``,
    the mixture located relative to the prior's mean and spread mapped by ``T⁻¹``.
    """

    kind = "constrained"

    @classmethod
    def spec_for(cls, prior: Distribution, blank: HeadSpec, max_categories: int) -> HeadSpec | None:
        shape = _unconstrained_event_shape(prior)
        return None if shape is None else replace(blank, kind=cls.kind, base_event_shape=shape)

    @classmethod
    def examples(cls) -> tuple[Distribution, ...]:
        return (
            Gamma(2.0, 1.0),
            Beta(2.0, 2.0),
            Gamma(torch.ones(3), 1.0),
            Dirichlet(torch.ones(2)),  # one unconstrained coordinate
        )

    def __init__(self, spec: HeadSpec, hidden_size: int, components: int) -> None:
        super().__init__(spec, hidden_size, components, spec.base_event_shape)

    def forward(self, hidden: Hidden, prior: Distribution) -> Distribution:
        assert prior.support is not None
        transform = unconstraining_transform(prior.support)
        center, spread = _unconstrained_location(prior, transform, prior.batch_shape + self.event)
        base = self.mixture(hidden, prior.batch_shape, center, spread)
        return TransformedDistribution(base, [transform], validate_args=False)


def _unconstrained_event_shape(prior: Distribution) -> tuple[int, ...] | None:
    """The event shape of :func:`unconstraining_transform`'s domain (None: a discrete or
    dependent support, or one with no bijection)."""
    support = prior.support
    if support is None or support.is_discrete or constraints.is_dependent(support):
        return None
    try:
        transform = unconstraining_transform(support)
    except NotImplementedError:
        return None
    # The transform's parameters may carry the batch: map the whole shape, then keep the
    # event part.
    full = transform.inverse_shape(prior.batch_shape + prior.event_shape)
    return tuple(full[len(prior.batch_shape) :])


def _unconstrained_location(
    prior: Distribution, transform: Transform, shape: torch.Size
) -> tuple[Tensor, Tensor]:
    """The prior's mean mapped to the unconstrained space, ``u = T⁻¹(mean)``, and its
    standard deviation there by the delta method, ``sd / |T'(u)|`` (elementwise
    transforms; 1 otherwise); 0 and 1 where these are not finite."""
    like = _parameter_like(prior)
    center, spread = like.new_zeros(shape), like.new_ones(shape)
    try:
        mean = prior.mean.detach()
        center = transform.inv(mean).expand(shape)
        elementwise = transform
        while isinstance(elementwise, IndependentTransform):
            elementwise = elementwise.base_transform
        if elementwise.domain.event_dim == 0 and elementwise.codomain.event_dim == 0:
            slope = elementwise.log_abs_det_jacobian(center, mean.expand(shape)).exp()
            spread = (prior.stddev.detach().expand(shape) / slope).expand(shape)
    except (NotImplementedError, RuntimeError, ValueError):
        pass
    center = torch.where(torch.isfinite(center), center, torch.zeros_like(center))
    spread = torch.where(torch.isfinite(spread) & (spread > 0), spread, torch.ones_like(spread))
    return center, spread


class BernoulliHead(ProposalHead):
    """Bernoulli with ``logits = prior logits + a`` (boolean support)."""

    kind = "bernoulli"
    covered = constraints._Boolean

    @classmethod
    def examples(cls) -> tuple[Distribution, ...]:
        return (Bernoulli(0.3), Independent(Bernoulli(torch.full((2,), 0.6)), 1))

    def __init__(self, spec: HeadSpec, hidden_size: int, components: int = 1) -> None:
        super().__init__(spec, hidden_size, math.prod(spec.event_shape))

    def forward(self, hidden: Hidden, prior: Distribution) -> Distribution:
        raw = self.raw(hidden, prior).reshape(prior.batch_shape + prior.event_shape)
        prior_logits = getattr(prior, "logits", None)
        logits = raw if prior_logits is None else raw + prior_logits.detach()
        proposal = Bernoulli(logits=logits, validate_args=False)
        events = len(prior.event_shape)
        return Independent(proposal, events) if events else proposal


class IntegerCategorical(Categorical):
    """A Categorical over the integers ``lower, ..., lower + K - 1`` with samples in a
    given dtype (a Binomial's samples are floats, a Categorical's integers).

    torch's Categorical covers only ``0..K-1`` with integer samples, hence this small
    subclass; values outside the range have log-probability ``-inf``.
    """

    def __init__(self, logits: Tensor, lower: float, value_dtype: torch.dtype) -> None:
        super().__init__(logits=logits, validate_args=False)
        self.lower = lower
        self.value_dtype = value_dtype

    @constraints.dependent_property
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(self.lower, self.lower + self._num_events - 1)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        drawn: Tensor = super().sample(sample_shape)  # type: ignore[no-untyped-call]
        return (drawn + int(self.lower)).to(self.value_dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        index = value - self.lower
        inside = (index >= 0) & (index < self._num_events) & (index == index.floor())
        safe = torch.where(inside, index, torch.zeros_like(index))
        log_prob: Tensor = super().log_prob(safe)  # type: ignore[no-untyped-call]
        return torch.where(inside, log_prob, -torch.inf)


class CategoricalHead(ProposalHead):
    """Categorical over a small integer range, ``logits = prior log-probabilities + a``.

    Its value features are one-hot: a category is a label, not a magnitude.
    """

    kind = "categorical"

    @classmethod
    def spec_for(cls, prior: Distribution, blank: HeadSpec, max_categories: int) -> HeadSpec | None:
        bounds = _integer_range(prior)
        if bounds is None or bounds["num_categories"] > max_categories:
            return None
        return replace(blank, kind=cls.kind, **bounds)

    @classmethod
    def examples(cls) -> tuple[Distribution, ...]:
        return (Categorical(torch.tensor([0.1, 0.2, 0.3, 0.4])), Binomial(10, torch.tensor(0.3)))

    @classmethod
    def value_feature_size(cls, spec: HeadSpec) -> int:
        return math.prod(spec.natural_shape) * spec.num_categories

    @classmethod
    def value_features(cls, spec: HeadSpec, value: Tensor, rows: int) -> Tensor:
        index = (value.reshape(rows, -1) - spec.lower).long().clamp(0, spec.num_categories - 1)
        return (
            nn.functional.one_hot(index, spec.num_categories)
            .reshape(rows, -1)
            .to(torch.get_default_dtype())
        )

    def __init__(self, spec: HeadSpec, hidden_size: int, components: int = 1) -> None:
        super().__init__(spec, hidden_size, spec.num_categories)
        self.values = torch.arange(spec.num_categories, dtype=torch.float64) + spec.lower

    def forward(self, hidden: Hidden, prior: Distribution) -> Distribution:
        raw = self.raw(hidden, prior)
        prior_logits = getattr(prior, "logits", None)
        if isinstance(prior, Categorical) and prior_logits is not None:
            if prior_logits.shape[-1] != self.spec.num_categories:
                raise ModelError(
                    f"a Categorical with {prior_logits.shape[-1]} categories where the network "
                    f"was built for {self.spec.num_categories}"
                )
            logits = raw + prior_logits.detach()
        else:
            grid = self.values.to(raw).view((-1,) + (1,) * len(prior.batch_shape))
            logits = raw + prior.log_prob(grid).detach().movedim(0, -1)
        dtype = getattr(torch, self.spec.value_dtype)
        return IntegerCategorical(logits, self.spec.lower, dtype)


class OneHotHead(ProposalHead):
    """OneHotCategorical with ``logits = prior logits + a``."""

    kind = "one_hot"
    covered = constraints._OneHot

    @classmethod
    def spec_for(cls, prior: Distribution, blank: HeadSpec, max_categories: int) -> HeadSpec | None:
        spec = super().spec_for(prior, blank, max_categories)
        return None if spec is None else replace(spec, num_categories=prior.event_shape[-1])

    @classmethod
    def examples(cls) -> tuple[Distribution, ...]:
        return (OneHotCategorical(torch.ones(3)),)

    def __init__(self, spec: HeadSpec, hidden_size: int, components: int = 1) -> None:
        super().__init__(spec, hidden_size, spec.num_categories)

    def forward(self, hidden: Hidden, prior: Distribution) -> Distribution:
        raw = self.raw(hidden, prior)
        prior_logits = getattr(prior, "logits", None)
        logits = raw if prior_logits is None else raw + prior_logits.detach()
        return OneHotCategorical(logits=logits, validate_args=False)


class CountHead(ProposalHead):
    """A mixture of K discretized logistics on ``[lower, upper]``, relative to the prior:
    locations ``m + s·a_k``, scales ``s·softplus(b_k)·√3/π`` (so that b = 0 matches the
    prior's standard deviation). An integer interval whose upper bound varies between
    elements (a Binomial with a total count per particle) is truncated at each element's
    own bound."""

    kind = "count"

    @classmethod
    def spec_for(cls, prior: Distribution, blank: HeadSpec, max_categories: int) -> HeadSpec | None:
        bounds = _integer_range(prior)
        if bounds is not None:  # a range too large for the categorical head
            return replace(blank, kind=cls.kind, **bounds)
        base = _base_constraint(prior.support)
        # Counts from a constant lower bound; an upper bound that varies (a Binomial's
        # total count differing between particles) is taken from the prior at each call.
        if isinstance(base, (constraints._IntegerGreaterThan, constraints._IntegerInterval)):
            lower = _constant(base.lower_bound)
            if lower is not None:
                return replace(blank, kind=cls.kind, lower=lower, upper=math.inf)
        return None

    @classmethod
    def examples(cls) -> tuple[Distribution, ...]:
        return (
            Poisson(3.0),
            Geometric(0.3),
            NegativeBinomial(5.0, torch.tensor(0.5)),
            Binomial(1000, torch.tensor(0.5)),
        )

    def __init__(self, spec: HeadSpec, hidden_size: int, components: int) -> None:
        self.components = components
        super().__init__(spec, hidden_size, 3 * components)
        with torch.no_grad():
            bias = self.linear.bias.view(self.elements, components, 3)
            offsets = torch.linspace(-1.0, 1.0, components) if components > 1 else torch.zeros(1)
            bias[:, :, 1] = offsets.view(1, components)

    def forward(self, hidden: Hidden, prior: Distribution) -> Distribution:
        raw = self.raw(hidden, prior).reshape(prior.batch_shape + (self.components, 3))
        loc, spread = location_and_spread(prior)
        loc, spread = loc.unsqueeze(-1), spread.unsqueeze(-1)
        scale = (
            spread * nn.functional.softplus(raw[..., 2] + SOFTPLUS_ONE) * (math.sqrt(3) / math.pi)
        )
        return DiscretizedLogisticMixture(
            raw[..., 0],
            loc + spread * raw[..., 1],
            scale + 1e-3,
            lower=self.spec.lower,
            upper=self._upper(prior, loc),
            validate_args=False,
        )

    def _upper(self, prior: Distribution, like: Tensor) -> float | Tensor:
        """The largest value: the spec's, or the prior's own where it varies."""
        base = _base_constraint(prior.support)
        if math.isinf(self.spec.upper) and isinstance(base, constraints._IntegerInterval):
            return torch.as_tensor(base.upper_bound).to(like).expand(prior.batch_shape)
        return self.spec.upper


HEADS: list[type[ProposalHead]] = [
    BernoulliHead,
    OneHotHead,
    CategoricalHead,
    CountHead,
    FlowHead,
    RealHead,
    ConstrainedHead,
]
"""The registry of heads, in priority order: :func:`head_spec` gives a prior the first head
that covers it. A head of your own goes in with ``HEADS.insert(0, MyHead)`` (before the
heads whose supports overlap its own), before any network is built or loaded."""
