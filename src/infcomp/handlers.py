"""Handlers: context managers that change what a program's sites do.

Each handler is a :class:`~infcomp.runtime.Messenger`; use it as a context manager or
wrap a function with it::

    with ic.trace() as tracer, ic.condition(data=data):
        gaussian()
    tracer.trace["z"].value

    trace = ic.trace(ic.simulate(gaussian)).get_trace()   # a joint sample (z, x1, x2)

Handlers nest: the innermost processes a site first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from infcomp.errors import GuideError, ModelError, VectorizationError
from infcomp.runtime import Messenger, Site, Trace, support_depends_on_parameters


def as_data(
    data: Mapping[str, Any] | None, device: torch.device | str | None = None
) -> dict[str, Tensor]:
    """Observations by site name as tensors; numbers, lists and booleans become floats
    (of the default dtype). With ``device``, every value is moved there."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ModelError(
            f"data must be a mapping from observe-site names to values, got {type(data).__name__}"
        )
    result = {}
    for name, value in data.items():
        if not isinstance(name, str):
            raise ModelError(f"data keys must be site names (str), got {name!r}")
        if not isinstance(value, Tensor) or value.dtype == torch.bool:
            value = torch.as_tensor(value, dtype=torch.get_default_dtype())
        result[name] = value if device is None else value.to(device)
    return result


def check_value(
    site: Site,
    value: Tensor,
    source: str,
    error: type[ModelError] = ModelError,
    parameter_dependent_support: bool = False,
) -> None:
    """Check that ``value`` fits a site's distribution in an unbatched run.

    The value's shape must equal the distribution's ``batch_shape + event_shape`` and
    the value must lie in its support; otherwise ``error`` names the site and ``source``
    (e.g. "the observed value"). A support computed from the distribution's parameters
    (``Uniform(r, r + 1)``) is checked only with ``parameter_dependent_support``: an
    observation outside it in one run is a zero weight, not bad data.
    """
    fn = site.fn
    assert fn is not None
    expected = fn.batch_shape + fn.event_shape
    if value.shape != expected:
        hint = ""
        if site.kind == "observe":
            hint = (
                f"; for independent repeated observations expand the distribution, e.g. "
                f"{type(fn).__name__}(...).expand({list(value.shape)})"
            )
        raise error(
            f"{site.kind} site {site.name!r}: {source} has shape {tuple(value.shape)} but "
            f"{type(fn).__name__} has shape {tuple(expected)} (batch_shape + event_shape){hint}"
        )
    support = fn.support
    if support is None or constraints.is_dependent(support):
        return
    if support_depends_on_parameters(fn) and not parameter_dependent_support:
        return
    if not bool(support.check(value).all()):
        raise error(
            f"{site.kind} site {site.name!r}: {source} lies outside the support ({support}) "
            f"of {type(fn).__name__}"
        )


class trace(Messenger):  # noqa: N801 (handlers are lower-case, like functions)
    """Record every site of a run, in program order, into :attr:`trace`.

    Args:
        fn: a program to wrap (optional).
        batch_ndim: the number of leading particle dimensions the values carry.
    """

    def __init__(self, fn: Callable[..., Any] | None = None, batch_ndim: int = 0) -> None:
        super().__init__(fn)
        self.batch_ndim = batch_ndim
        self.trace = Trace(batch_ndim)

    def __enter__(self) -> trace:
        self.trace = Trace(self.batch_ndim)
        return super().__enter__()

    def postprocess(self, site: Site) -> None:
        self.trace.add(site)

    def get_trace(self, *args: Any, **kwargs: Any) -> Trace:
        """Run the wrapped program and return its trace, return value included."""
        result = self(*args, **kwargs)
        self.trace.return_value = result
        return self.trace


class condition(Messenger):  # noqa: N801
    """Give observe sites their observed values, by site name.

    An observe site named in ``data`` takes that value; one with an explicit
    ``value=`` and no data keeps it; one with neither is an error. Naming a latent
    (sample) site in ``data`` is an error: observations are what ``observe`` declares.
    After a run, :attr:`used` holds the data names the program consumed.

    Args:
        fn: a program to wrap (optional).
        data: observations by site name.
        validate: check each value's shape and support against the site's distribution
            (for unbatched runs; vectorized runs check once beforehand).
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        data: Mapping[str, Any] | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__(fn)
        self.data = as_data(data)
        self.validate = validate
        self.used: set[str] = set()

    def process(self, site: Site) -> None:
        if site.kind == "sample" and site.name in self.data:
            raise ModelError(
                f"data names {site.name!r}, which is a latent sample site; data may only "
                f"name observe sites (use replay to fix a latent value)"
            )
        if site.kind != "observe":
            return
        if site.name in self.data:
            value = self.data[site.name]
            if self.validate:
                check_value(site, value, "the observed value")
            site.value = value
            self.used.add(site.name)
        elif site.value is None:
            raise ModelError(
                f"observe site {site.name!r} has no observed value: pass it in data "
                f"(data={{{site.name!r}: ...}}) or give observe(..., value=...)"
            )
        elif self.validate:
            check_value(site, site.value, "the fixed value")


class simulate(Messenger):  # noqa: N801
    """Joint simulation: every observe site samples, ignoring data and fixed values.

    Running a model under ``simulate`` draws (latents, observations) from the joint
    p(x, y): the sample/observe duality used to train compiled proposals.
    """

    def process(self, site: Site) -> None:
        if site.kind == "observe":
            site.value = None


class replay(Messenger):  # noqa: N801
    """Give latent (sample) sites the values recorded in ``trace``, by name.

    Used to score a proposal's values under the model. After a run, :attr:`used`
    holds the names that were replayed.

    Args:
        fn: a program to wrap (optional).
        trace: where the values come from.
        validate: check that each value has the shape the model's distribution
            expects, ``batch_shape + event_shape``, and lies in its support (raising
            :class:`~infcomp.errors.GuideError`; for unbatched runs). A proposal must
            stay inside the prior's support: outside it, particles are wasted and the
            model may fail on the value.
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        trace: Trace | None = None,
        validate: bool = False,
    ) -> None:
        super().__init__(fn)
        if trace is None:
            raise TypeError("replay needs a trace")
        self.source = trace
        self.validate = validate
        self.used: set[str] = set()

    def process(self, site: Site) -> None:
        if site.kind != "sample" or site.name not in self.source:
            return
        value = self.source[site.name].value
        assert value is not None
        if self.validate:
            check_value(site, value, "the proposal's value", GuideError, True)
        site.value = value
        self.used.add(site.name)


class block(Messenger):  # noqa: N801
    """Hide sites from the handlers outside this one.

    Args:
        fn: a program to wrap (optional).
        hide: names to hide; when neither ``hide`` nor ``expose`` is given, all sites.
        expose: names to leave visible, hiding every other site.
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        hide: Iterable[str] | None = None,
        expose: Iterable[str] | None = None,
    ) -> None:
        super().__init__(fn)
        if hide is not None and expose is not None:
            raise ValueError("block takes hide or expose, not both")
        self.hide = None if hide is None else frozenset(hide)
        self.expose = None if expose is None else frozenset(expose)

    def process(self, site: Site) -> None:
        if self.hide is not None:
            site.stop = site.name in self.hide
        elif self.expose is not None:
            site.stop = site.name not in self.expose
        else:
            site.stop = True


class scale(Messenger):  # noqa: N801
    """Multiply the log density of every site by ``factor`` (> 0)."""

    def __init__(self, fn: Callable[..., Any] | None = None, factor: float = 1.0) -> None:
        super().__init__(fn)
        if not factor > 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        self.factor = factor

    def process(self, site: Site) -> None:
        site.scale = site.scale * self.factor


class particles(Messenger):  # noqa: N801
    """Run a program for many particles at once, as leading batch dimensions.

    Every site's distribution is expanded to ``batch_shape + natural shape``, where the
    natural shape is the site's batch shape in an unbatched run of the same program
    (``natural_shapes``, by name; a factor's natural shape is its value's shape). A
    program written with broadcasting then runs once for all particles. A site that is
    missing from ``natural_shapes`` or whose distribution cannot be expanded raises
    :class:`~infcomp.errors.VectorizationError`.

    Args:
        fn: a program to wrap (optional).
        batch_shape: the particle dimensions, e.g. ``(num_particles,)``.
        natural_shapes: each site's batch shape in an unbatched run.
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        batch_shape: tuple[int, ...] = (),
        natural_shapes: Mapping[str, torch.Size] | None = None,
    ) -> None:
        super().__init__(fn)
        self.batch_shape = torch.Size(batch_shape)
        self.natural_shapes = dict(natural_shapes or {})

    @staticmethod
    def natural_shapes_of(trace: Trace) -> dict[str, torch.Size]:
        """The natural shape of every site of an unbatched trace."""
        shapes = {}
        for name, site in trace.sites.items():
            if site.fn is not None:
                shapes[name] = site.fn.batch_shape
            else:
                assert site.value is not None
                shapes[name] = site.value.shape
        return shapes

    def process(self, site: Site) -> None:
        natural = self.natural_shapes.get(site.name)
        if natural is None:
            raise VectorizationError(
                f"site {site.name!r} did not occur in the unbatched run: the program's "
                f"structure depends on random values"
            )
        target = self.batch_shape + natural
        if site.fn is None:
            assert site.value is not None
            try:
                site.value = site.value.expand(target)
            except RuntimeError as error:
                raise VectorizationError(
                    f"factor {site.name!r}: log weight of shape {tuple(site.value.shape)} "
                    f"does not broadcast to {tuple(target)}"
                ) from error
        elif site.fn.batch_shape != target:
            try:
                site.fn = site.fn.expand(target)
            except (RuntimeError, ValueError, NotImplementedError) as error:
                raise VectorizationError(
                    f"{site.kind} site {site.name!r}: {type(site.fn).__name__} with batch "
                    f"shape {tuple(site.fn.batch_shape)} does not broadcast to the particle "
                    f"shape {tuple(target)} (particle dimensions must lead)"
                ) from error


class inflate(Messenger):  # noqa: N801
    """Draw every latent site from its prior widened by ``factor`` (≥ 1), for simulation.

    Location-scale families (Normal, Laplace, Cauchy, StudentT, Gumbel, LogNormal and the
    half families) get ``scale × factor``; Bernoulli, Categorical and OneHotCategorical
    get ``logits / factor`` (tempered towards uniform); other distributions are left as
    they are. Training a proposal on inflated simulations makes it cover more than the
    prior's typical set (pyprob's "prior inflation").
    """

    def __init__(self, fn: Callable[..., Any] | None = None, factor: float = 1.0) -> None:
        super().__init__(fn)
        if not factor >= 1:
            raise ValueError(f"the inflation factor must be at least 1, got {factor}")
        self.factor = factor

    def process(self, site: Site) -> None:
        # Only the draw is widened: the site keeps its true prior, which is what a
        # proposal is later scored and parametrized against.
        if (
            site.kind == "sample"
            and site.value is None
            and site.fn is not None
            and self.factor != 1
        ):
            site.value = inflated(site.fn, self.factor).sample()


def inflated(fn: Distribution, factor: float) -> Distribution:
    """``fn`` widened by ``factor`` (see :class:`inflate`); unchanged when not supported."""
    D = torch.distributions  # noqa: N806
    if isinstance(fn, D.Independent):
        return D.Independent(inflated(fn.base_dist, factor), fn.reinterpreted_batch_ndims)
    if isinstance(fn, (D.Normal, D.Laplace, D.Cauchy, D.Gumbel, D.LogNormal)):
        return type(fn)(fn.loc, fn.scale * factor)
    if isinstance(fn, D.StudentT):
        return D.StudentT(fn.df, fn.loc, fn.scale * factor)
    if isinstance(fn, (D.HalfNormal, D.HalfCauchy)):
        return type(fn)(fn.scale * factor)
    if isinstance(fn, (D.Bernoulli, D.Categorical, D.OneHotCategorical)):
        return type(fn)(logits=fn.logits / factor)
    return fn


class Proposer(Protocol):
    """Proposes the latent sites of one run, one at a time, as the program reaches them."""

    def propose(self, site: Site) -> Distribution | None:
        """The proposal for ``site`` (whose ``fn`` is the prior); None: use the prior."""

    def accept(self, site: Site) -> None:
        """Learn the value chosen at ``site`` before the next one is proposed."""


@runtime_checkable
class ProposalFactory(Protocol):
    """Something that makes a :class:`Proposer` per run, e.g. an inference network."""

    def proposer(
        self,
        observations: Mapping[str, Tensor],
        batch_shape: tuple[int, ...],
        data_batch_ndim: int = 0,
        defensive: float = 0.0,
    ) -> Proposer: ...


class propose(Messenger):  # noqa: N801
    """Sample each latent site from a proposer's distribution instead of its prior.

    The proposals are recorded in :attr:`trace` (sites of kind ``"sample"`` whose
    ``fn`` is the proposal q), so that ``log w = log p(x, y) - log q(x)`` can be formed.
    A site that already has a value (replayed, conditioned) is left alone.
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        proposer: Proposer | None = None,
        batch_ndim: int = 0,
    ) -> None:
        super().__init__(fn)
        if proposer is None:
            raise TypeError("propose needs a proposer")
        self.proposer = proposer
        self.trace = Trace(batch_ndim)

    def process(self, site: Site) -> None:
        if site.kind != "sample" or site.value is not None:
            return
        assert site.fn is not None
        proposal = self.proposer.propose(site)
        if proposal is None:
            proposal = site.fn
        site.value = proposal.sample()
        self.trace.add(Site(site.name, "sample", proposal, site.value))
        self.proposer.accept(site)
