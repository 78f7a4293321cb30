"""The runtime: site records, traces and the handler stack.

A probabilistic program is a plain Python function that calls :func:`infcomp.sample`,
:func:`infcomp.observe` and :func:`infcomp.factor`. Each call builds a :class:`Site`
and hands it to the handler stack, the only module-level state of the library. A
site's trip through the stack is minipyro's: every handler's
:meth:`Messenger.process_message`, innermost first, until one sets ``site.stop`` (see
:class:`infcomp.handlers.block`); then, if no handler gave the site a value, a draw
from its distribution; then :meth:`Messenger.postprocess_message` of the handlers that
saw the site, outermost first.

Example:
    >>> import torch
    >>> from torch.distributions import Normal
    >>> import infcomp as ic
    >>> class Log(ic.Messenger):
    ...     def process_message(self, site):
    ...         print("process", site.name)
    ...     def postprocess_message(self, site):
    ...         print("postprocess", site.name, site.value.shape)
    >>> with Log():
    ...     x = ic.sample("x", Normal(torch.zeros(2), 1.0))
    process x
    postprocess x torch.Size([2])
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, constraints

from infcomp._deprecation import warn_renamed
from infcomp.errors import GuideError, ModelError

SiteKind = Literal["sample", "observe", "factor"]

_M = TypeVar("_M", bound="Messenger")


@dataclass(eq=False, slots=True)
class Site:
    """One named random choice, observation or weight of a program run.

    Attributes:
        name: the site's address, unique within a run.
        kind: ``"sample"`` (a latent variable), ``"observe"`` (an observation) or
            ``"factor"`` (an extra log weight).
        fn: the site's distribution; ``None`` for a factor.
        value: the value, set by a handler or sampled; for a factor, its log weight.
        scale: a multiplier on the site's log density (see :class:`infcomp.handlers.scale`).
        stop: set by a handler to hide the site from the handlers outside it.
    """

    name: str
    kind: SiteKind
    fn: Distribution | None
    value: Tensor | None = None
    scale: float = 1.0
    stop: bool = False

    def log_prob(self) -> Tensor:
        """The site's scaled log density ``scale * log fn(value)``, elementwise.

        For a factor this is ``scale * value``. Where the support depends on the
        distribution's parameters (``Uniform(r, r + 1)``, a ``Binomial`` with latent
        ``total_count``), a value outside it has density zero: ``-inf``, not an error.
        Other errors from the distribution are re-raised as
        :class:`~infcomp.errors.ModelError` naming the site.
        """
        if self.value is None:
            raise ModelError(f"site {self.name!r} has no value")
        if self.fn is None:
            log_density = self.value
        else:
            try:
                log_density = self.fn.log_prob(self.value)
            except (ValueError, RuntimeError) as error:
                if not (isinstance(error, ValueError) and support_depends_on_parameters(self.fn)):
                    raise self._scoring_error(self.fn, self.value, error) from None
                log_density = _log_prob_with_zero_outside_support(self.fn, self.value)
        return log_density if self.scale == 1.0 else log_density * self.scale

    def _scoring_error(self, fn: Distribution, value: Tensor, error: Exception) -> ModelError:
        # Count the values outside the support rather than print them all.
        try:
            outside = int((~fn.support.check(value)).sum())  # type: ignore[union-attr]
        except Exception:
            outside = 0
        if outside:
            culprit = GuideError if self.kind == "sample" else ModelError
            return culprit(
                f"{self.kind} site {self.name!r}: {outside} of {value.numel()} values lie "
                f"outside the support ({fn.support}) of {type(fn).__name__}"
            )
        return ModelError(
            f"{self.kind} site {self.name!r}: cannot score a value of shape "
            f"{tuple(value.shape)} under {type(fn).__name__}: {str(error).splitlines()[0]}"
        )


def support_depends_on_parameters(fn: Distribution) -> bool:
    """Whether ``fn``'s support is computed from its parameters (a dependent property).

    Such supports (``Uniform``'s interval, ``Binomial``'s ``{0..total_count}``) may
    exclude a value for some parameters and not others: a zero density, not bad data.
    """
    if isinstance(fn, Independent):
        return support_depends_on_parameters(fn.base_dist)
    return _class_has_dependent_support(type(fn))  # type: ignore[arg-type]


@functools.cache
def _class_has_dependent_support(cls: type) -> bool:
    return isinstance(inspect.getattr_static(cls, "support", None), constraints.dependent_property)


def _log_prob_with_zero_outside_support(fn: Distribution, value: Tensor) -> Tensor:
    """``log fn(value)`` where ``value`` is in the support, ``-inf`` elsewhere.

    Values outside are replaced by a draw from ``fn`` (in a random state left as it was)
    before scoring, so that no distribution indexes out of range on them.
    """
    support = fn.support
    assert support is not None
    with torch.random.fork_rng(devices=[value.device] if value.is_cuda else []):
        stand_in = fn.sample()
    value, stand_in = torch.broadcast_tensors(value, stand_in)
    inside = support.check(value)
    events = value.dim() - inside.dim()
    safe = torch.where(inside.reshape(inside.shape + (1,) * events), value, stand_in)
    return torch.where(inside, _unvalidated(fn).log_prob(safe), -torch.inf)


def _unvalidated(fn: Distribution) -> Distribution:
    """``fn`` with argument validation off, wrapped distributions included."""
    unchecked = copy.copy(fn)
    unchecked._validate_args = False  # the support is handled by the caller, elementwise
    if isinstance(unchecked, Independent):
        unchecked.base_dist = _unvalidated(unchecked.base_dist)
    return unchecked


class Trace:
    """The sites of one program run, in program order, with the run's return value.

    In a vectorized run every value carries leading particle dimensions
    (``batch_ndim`` of them); in a single run ``batch_ndim`` is 0.
    """

    def __init__(self, batch_ndim: int = 0) -> None:
        self.sites: dict[str, Site] = {}
        self.return_value: Any = None
        self.batch_ndim = batch_ndim

    def add(self, site: Site) -> None:
        """Record a site; a second site with the same name is a :class:`ModelError`."""
        if site.name in self.sites:
            raise ModelError(
                f"site name {site.name!r} is used twice in one run; names are addresses "
                f"and must be unique (add a loop index, e.g. f'{site.name}_{{i}}')"
            )
        self.sites[site.name] = site

    def __getitem__(self, name: str) -> Site:
        try:
            return self.sites[name]
        except KeyError:
            raise KeyError(
                f"the trace has no site {name!r}; its sites are {list(self.sites)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.sites

    def __iter__(self) -> Iterator[str]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def values(self) -> dict[str, Tensor]:
        """The value of every site, by name."""
        return {name: site.value for name, site in self.sites.items() if site.value is not None}

    def names(self, kind: SiteKind) -> list[str]:
        """The names of the sites of one kind, in program order."""
        return [name for name, site in self.sites.items() if site.kind == kind]

    def log_prob_sum(self, kinds: tuple[SiteKind, ...] = ("sample", "observe", "factor")) -> Tensor:
        """Sum of the log densities of the sites of the given kinds, in float64.

        Each site's log density is summed over its own dimensions, keeping the
        ``batch_ndim`` leading particle dimensions:
        ``sum_sites sum_{dims >= batch_ndim} scale * log fn(value)``.
        """
        parts = [
            sum_rightmost(site.log_prob(), self.batch_ndim)
            for site in self.sites.values()
            if site.kind in kinds
        ]
        if not parts:
            return torch.zeros((), dtype=torch.float64)
        if all(part.shape == parts[0].shape for part in parts):
            # One stacked sum instead of a conversion and an addition per site.
            return torch.stack(parts).double().sum(0)
        total = parts[0].double()
        for part in parts[1:]:
            total = total + part.double()
        return total


def sum_rightmost(value: Tensor, keep_ndim: int) -> Tensor:
    """Sum ``value`` over every dimension after its first ``keep_ndim``."""
    if value.dim() <= keep_ndim:
        return value
    return value.sum(dim=tuple(range(keep_ndim, value.dim())))


class Messenger:
    """Base of all handlers: a context manager that sits on the handler stack.

    Subclasses override :meth:`process_message` (before a value is chosen) and/or
    :meth:`postprocess_message` (after). A handler can also wrap a function:
    ``handler(fn)(*args)`` runs ``fn`` inside the handler.
    """

    def __init__(self, fn: Callable[..., Any] | None = None) -> None:
        self.fn = fn

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Handlers written for the old method names keep working for one release, also
        # when they call super().process(site) on a handler written with the new ones.
        for old, new in (("process", "process_message"), ("postprocess", "postprocess_message")):
            if old in vars(cls) and new not in vars(cls):
                warn_renamed(f"{cls.__name__}.{old}", f"{new} (the field's name)")
                setattr(cls, new, vars(cls)[old])
            elif new in vars(cls) and old not in vars(cls):
                setattr(cls, old, vars(cls)[new])

    def __enter__(self: _M) -> _M:
        _STACK.set((*_STACK.get(), self))
        return self

    def __exit__(self, *exc: object) -> None:
        # Remove this handler even when the program raised, so that the stack never
        # keeps a handler from an aborted run.
        _STACK.set(tuple(handler for handler in _STACK.get() if handler is not self))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fn is None:
            raise TypeError(f"{type(self).__name__} wraps no function")
        with self:
            return self.fn(*args, **kwargs)

    def process_message(self, site: Site) -> None:
        """Act on a site before its value is chosen (innermost handler first)."""

    def postprocess_message(self, site: Site) -> None:
        """Act on a site after its value is chosen (outermost handler first)."""

    process = process_message  # deprecated names, for subclasses that call super()
    postprocess = postprocess_message


# One stack per thread and per asyncio task (a context variable), so that inference
# running in several threads at once never mixes their sites.
_STACK: ContextVar[tuple[Messenger, ...]] = ContextVar("infcomp_handler_stack", default=())


def apply_stack(site: Site) -> Site:
    """Send a site through the handler stack and give it a value, as minipyro does.

    Handlers process the site innermost first until one sets ``site.stop``; if none
    gave it a value, it is sampled from ``site.fn``; then the handlers that processed
    it postprocess it, outermost first.
    """
    stack = _STACK.get()
    first = 0  # the outermost handler that sees the site
    for position in range(len(stack) - 1, -1, -1):
        stack[position].process_message(site)
        if site.stop:
            first = position
            break
    if site.value is None:
        if site.fn is None:
            raise ModelError(f"{site.kind} site {site.name!r} has no value")
        site.value = site.fn.sample()
    for handler in stack[first:]:
        handler.postprocess_message(site)
    return site


def as_value(value: Any, what: str) -> Tensor:
    """``value`` as a tensor: a floating (or complex) tensor as it is; a number, boolean,
    (nested) list, array or integer tensor as floats of the default dtype, as torch's
    distributions score them.

    Raises:
        ModelError: naming ``what`` (e.g. "data for site 'x'"), for a value that is not
            numeric, or that is finite but too large for the default dtype.
    """
    if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
        return value
    dtype = torch.get_default_dtype()
    try:
        tensor = torch.as_tensor(value, dtype=dtype)
        # Infinities: were they in the value, or made by a narrow dtype?
        wide = torch.as_tensor(value, dtype=torch.float64) if bool(tensor.isinf().any()) else None
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ModelError(
            f"{what} must be a number, a tensor or a (nested) list of numbers, got "
            f"{type(value).__name__} {value!r:.60}"
        ) from error
    if wide is not None and bool((wide.isfinite() & tensor.isinf()).any()):
        largest = float(wide[wide.isfinite()].abs().max())
        raise ModelError(
            f"{what} ({largest:.4g}) overflows {dtype}, the default dtype (largest "
            f"{torch.finfo(dtype).max:.4g}): call torch.set_default_dtype(torch.float64) "
            f"first, or pass a float64 tensor"
        )
    return tensor
