"""Handlers: context managers that change what a program's sites do.

Each handler is a :class:`~infcomp.runtime.Messenger`; use it as a context manager or
wrap a function with it. Handlers nest: the innermost processes a site first.

Example:
    >>> import infcomp as ic
    >>> from infcomp.examples.gaussian import gaussian
    >>> with ic.trace() as tracer, ic.condition(data={"x1": 8.0, "x2": 9.0}):
    ...     z = gaussian()
    >>> [(name, site.kind) for name, site in tracer.trace.sites.items()]
    [('z', 'sample'), ('x1', 'observe'), ('x2', 'observe')]
    >>> float(tracer.trace["x1"].value)
    8.0
    >>> joint = ic.trace(ic.uncondition(gaussian)).get_trace()   # (z, x1, x2) ~ p
    >>> sorted(joint.values())
    ['x1', 'x2', 'z']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.distributions import Distribution

from infcomp._deprecation import warn_renamed
from infcomp.errors import VectorizationError
from infcomp.runtime import Messenger, Site, Trace, as_value


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

    def postprocess_message(self, site: Site) -> None:
        # After the value is chosen, so the record holds what the program got.
        self.trace.add(site)

    def get_trace(self, *args: Any, **kwargs: Any) -> Trace:
        """Run the wrapped program and return its trace, return value included."""
        result = self(*args, **kwargs)
        self.trace.return_value = result
        return self.trace


class condition(Messenger):  # noqa: N801
    """Fix sites to given values, by name, as Pyro's and NumPyro's ``condition`` do.

    An observe site named in ``data`` takes that value (else it keeps its ``value=``);
    a latent site named in ``data`` takes the value and becomes an observation of it,
    so that its log density counts in the weights. Numbers become tensors of the
    default dtype. Inference checks the data (names, shapes, supports) before running.
    """

    def __init__(
        self, fn: Callable[..., Any] | None = None, data: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(fn)
        self.data = {
            name: value
            if isinstance(value, Tensor)
            else as_value(value, f"the value for site {name!r}")
            for name, value in (data or {}).items()
        }

    def process_message(self, site: Site) -> None:
        # Before sampling, so that a fixed site is never drawn.
        if site.kind != "factor" and site.name in self.data:
            site.value = self.data[site.name]
            site.kind = "observe"


class uncondition(Messenger):  # noqa: N801
    """Joint simulation: every observe site samples, ignoring data and fixed values.

    Running a model under ``uncondition`` draws (latents, observations) from the joint
    p(x, y): the sample/observe duality used to train compiled proposals (Pyro's name).
    """

    def process_message(self, site: Site) -> None:
        # Innermost handlers run first: put this inside any condition it should undo.
        if site.kind == "observe":
            site.value = None


class simulate(uncondition):  # noqa: N801
    """Deprecated name of :class:`uncondition` (removed in the next release)."""

    def __init__(self, fn: Callable[..., Any] | None = None) -> None:
        warn_renamed("infcomp.simulate", "infcomp.uncondition")
        super().__init__(fn)


class replay(Messenger):  # noqa: N801
    """Give latent (sample) sites the values recorded in ``trace``, by name.

    Used to score a proposal's values under the model; inference checks the values'
    shapes and supports against the model's distributions.
    """

    def __init__(self, fn: Callable[..., Any] | None = None, trace: Trace | None = None) -> None:
        super().__init__(fn)
        if trace is None:
            raise TypeError("replay needs a trace")
        self.source = trace

    def process_message(self, site: Site) -> None:
        # Latent sites only: observations keep the data.
        if site.kind == "sample" and site.name in self.source:
            site.value = self.source[site.name].value


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

    def process_message(self, site: Site) -> None:
        # A stopped site is processed and postprocessed by no handler outside this one.
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

    def process_message(self, site: Site) -> None:
        # Nested scales multiply.
        site.scale = site.scale * self.factor


class particles(Messenger):  # noqa: N801
    """Run a program for many particles at once, as leading batch dimensions.

    Every site's distribution is expanded to ``batch_shape + natural shape``, where the
    natural shape is the site's batch shape in an unbatched run of the same program
    (``natural_shapes``, by name; a factor's natural shape is its value's shape). A
    program written with broadcasting then runs once for all particles. A site missing
    from ``natural_shapes``, or whose distribution cannot be expanded, raises
    :class:`~infcomp.errors.VectorizationError`.
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
        return {
            name: site.fn.batch_shape if site.fn is not None else site.value.shape  # type: ignore[union-attr]
            for name, site in trace.sites.items()
        }

    def process_message(self, site: Site) -> None:
        # Innermost, so that every other handler sees the expanded distribution.
        natural = self.natural_shapes.get(site.name)
        if natural is None:
            raise VectorizationError(
                f"site {site.name!r} did not occur in the unbatched run: the program's "
                f"structure depends on random values"
            )
        target = self.batch_shape + natural
        try:
            if site.fn is None:
                site.value = site.value.expand(target)  # type: ignore[union-attr]
            elif site.fn.batch_shape != target:
                site.fn = site.fn.expand(target)
        except (RuntimeError, ValueError, NotImplementedError) as error:
            raise VectorizationError(
                f"{site.kind} site {site.name!r} of shape {tuple(natural)} does not broadcast "
                f"to the particle shape {tuple(target)} (particle dimensions must lead): {error}"
            ) from error


class Proposer(Protocol):
    """Proposes the latent sites of one run, one at a time, as the program reaches them."""

    def propose(self, site: Site) -> Distribution | None:
        """The proposal for ``site`` (whose ``fn`` is the prior); None: use the prior."""

    def accept(self, site: Site) -> None:
        """Learn the value chosen at ``site`` before the next one is proposed."""


class propose(Messenger):  # noqa: N801
    """Sample each latent site from a proposer's distribution instead of its prior.

    The proposals are recorded in :attr:`trace` (sites of kind ``"sample"`` whose
    ``fn`` is the proposal q), so that ``log w = log p(x, y) - log q(x)`` can be formed.
    A site named in ``values`` takes that value instead of a draw, still through the
    proposer (whose state follows it): a particle's past, replayed.
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        proposer: Proposer | None = None,
        batch_ndim: int = 0,
        values: Mapping[str, Tensor] | None = None,
    ) -> None:
        super().__init__(fn)
        if proposer is None:
            raise TypeError("propose needs a proposer")
        self.proposer = proposer
        self.trace = Trace(batch_ndim)
        self.values = dict(values or {})

    def reindex(self, index: Tensor) -> None:
        """The particles were resampled (sequential Monte Carlo): so is the proposer's
        state, if it keeps one per particle (a ``reindex`` method)."""
        reindex = getattr(self.proposer, "reindex", None)
        if reindex is not None:
            reindex(index)

    def process_message(self, site: Site) -> None:
        # A site that already has a value (replayed, conditioned) is left alone.
        if site.kind != "sample" or site.value is not None:
            return
        proposal = self.proposer.propose(site)
        proposal = site.fn if proposal is None else proposal
        assert proposal is not None
        value = self.values.get(site.name)
        site.value = proposal.sample() if value is None else value
        self.trace.add(Site(site.name, "sample", proposal, site.value))
        self.proposer.accept(site)
