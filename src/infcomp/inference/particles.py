"""The particle engine: runs a program for many particles, vectorized or one by one.

Every inference algorithm runs particles through one :class:`ParticleEngine`. Given a
:class:`Job` (a program, a proposal, the program's arguments), it

1. probes: one unbatched run (in a random state it leaves untouched) checks the data
   and the proposal against the program, with errors that name the site, and gives
   each site's *natural shape*, its batch shape in a single run;
2. runs every particle at once, each site's distribution expanded to
   ``particles + natural shape`` (:class:`~infcomp.handlers.particles`), when the
   program broadcasts; if it does not (control flow on sampled values), it says so
   once (:class:`~infcomp.errors.VectorizationNotice`) and from then on runs particle
   by particle, in worker processes when asked, grouping the traces by structure.

3. tells apart why a batched run failed (see :meth:`ParticleEngine._choose`): only a
   shape error means the program does not vectorize; an exception the program raises
   is the user's :class:`~infcomp.errors.ModelError` (naming the last site reached,
   chained to it), or with ``on_error="skip"`` a dropped and counted simulation;
   invalid distribution parameters in some particles give those particles weight
   zero; running out of memory fails at once, pointing to streaming.

How often the program runs: one probe per call (cached per data structure, and per
simulation or replay structure, for the engine's lifetime), then one batched run, or
N single runs after a failed batched attempt when it does not vectorize (one more run
where a batch is retried or redone for invalid parameters). The README has the table
per entry point.

It has three modes: :meth:`ParticleEngine.run` (proposal and model on observed data,
for importance sampling), :meth:`ParticleEngine.simulate` (joint simulation, for
training proposals) and :meth:`ParticleEngine.replay` (a program run on given latent
values, for scoring a guide). What a proposal does inside a run is the
:class:`Proposal` protocol's business (see :mod:`infcomp.inference.proposals`).
Algorithms with runs of their own (sequential Monte Carlo) use the parts:
:meth:`ParticleEngine.probe`, :meth:`ParticleEngine.choose` and
:meth:`ParticleEngine.single`, with a :class:`Monitor` and replayed ``values`` in the
:class:`Request`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import multiprocessing
import pickle
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from typing import Any, Literal, Protocol, TypeVar

import torch
from torch import Tensor
from torch.distributions import Distribution, biject_to, constraints
from torch.distributions.utils import lazy_property

from infcomp.errors import (
    GuideError,
    InferenceWarning,
    ModelError,
    VectorizationError,
    VectorizationNotice,
)
from infcomp.handlers import condition, particles, replay, trace, uncondition
from infcomp.inference.common import (
    Program,
    check_finite,
    check_positive_int,
    check_vectorize,
    program_name,
    untouched_random_state,
    warn_user,
)
from infcomp.runtime import (
    Messenger,
    Site,
    Trace,
    as_value,
    sum_rightmost,
    support_depends_on_parameters,
)
from infcomp.traces import group_size, group_traces, index_trace, structure_key

_T = TypeVar("_T")

#: What simulation does when the user's program raises: raise a ModelError, or skip.
OnError = Literal["raise", "skip"]

#: With an inference network as proposal (hidden, cell and readout state per particle),
#: a batched run on the CPU of N particles for each of B data sets goes through the
#: program in groups of data sets of about this many particles (at least one data set
#: per group), so that each site's tensors stay in the CPU's caches: 20 data sets of 10⁴
#: particles of a 25-site program took 0.83 times the CPU time of one run of all 2·10⁵
#: particles in groups of 2 to 4 data sets (and of a loop over the data sets). Other
#: proposals keep little state per particle and run all data sets at once (the groups'
#: Python overhead would cost more than the cache saves).
GROUP_ROWS = 32_768

#: The key of :attr:`JointBatch.failures` for simulations that failed before any site.
BEFORE_ANY_SITE = "(before any site)"


# -- records -----------------------------------------------------------------------------


@dataclasses.dataclass
class SingleRun:
    """One run of a proposal and the model (one particle, or a batch of them).

    Attributes:
        model_trace: the model's sites, observations included.
        proposal_trace: the proposal's sites (their ``fn`` is q); None when the prior
            is the proposal.
    """

    model_trace: Trace
    proposal_trace: Trace | None


class Monitor(Messenger):
    """A handler that follows a run from outside every other one (sequential Monte Carlo
    weighs and resamples the particles at each observe statement). The proposal shows
    it the handler that chooses the latent values (:meth:`watch`): that handler's
    ``trace`` holds the proposal's sites, and its ``reindex(index)``, if any, resamples
    the proposal's state of each particle."""

    def watch(self, handler: Messenger) -> None:
        """The handler that proposes this run's latent values (none: the prior)."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One run to make: the observations, the particle shape (``()``: one unbatched,
    validated run) and, for a batched run, the probe (an unbatched run of the same job)
    whose natural shapes it extends by the particle shape.

    For sequential Monte Carlo, also: a :class:`Monitor` entered outermost, and
    ``values``: latent values by site name that the proposal reuses instead of drawing
    them, as its own (a particle's past, replayed through its proposal's state)."""

    data: dict[str, Tensor]
    batch_shape: tuple[int, ...] = ()
    probe: SingleRun | None = None
    monitor: Monitor | None = None
    values: Mapping[str, Tensor] | None = None


class Proposal(Protocol):
    """How the latent sites of a run are proposed: the prior, a program, a network.

    Implementations are in :mod:`infcomp.inference.proposals`.
    """

    #: How messages name the proposal after the model's name ("" for the prior).
    label: str

    def run(self, job: Job, request: Request) -> SingleRun:
        """One run of the proposal and ``job.program`` as ``request`` says."""
        ...

    def log_prob(self, batch: JointBatch, job: Job) -> Tensor:
        """``log q(x_i; y_i)`` of joint simulations of ``job``'s program (whose arguments
        the proposal gets too), shape ``(batch.size,)``, in the order of the batch's
        groups, differentiable in the proposal's parameters."""
        ...


@dataclasses.dataclass(frozen=True)
class Job:
    """What to run: a program, its proposal, and the program's arguments."""

    program: Program
    proposal: Proposal
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(self.program):
            raise TypeError(
                f"the model must be a callable (a function or nn.Module), got "
                f"{type(self.program).__name__}: {self.program!r:.60}"
            )
        # A generator or coroutine "runs" without executing its statements: refuse it.
        function = getattr(self.program, "forward", self.program)
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            kind = "a generator function"
        elif inspect.iscoroutinefunction(function):
            kind = "a coroutine function (async def)"
        else:
            return
        raise ModelError(
            f"{program_name(self.program)} is {kind}: a model or guide must be a plain "
            f"function (or nn.Module) whose statements run when it is called"
        )

    def call(self, **extra: Any) -> Any:
        """Call the program with the job's arguments (and ``extra`` keywords).

        Raises:
            ModelError: the call returned a generator or coroutine (a callable object or
                wrapper around one): its statements would never run.
        """
        result = self.program(*self.args, **self.kwargs, **extra)
        if inspect.isgenerator(result) or inspect.iscoroutine(result) or inspect.isasyncgen(result):
            if not inspect.isasyncgen(result):
                result.close()  # no "never awaited" warning
            raise ModelError(
                f"program {program_name(self.program)} returned a {type(result).__name__}: its "
                f"sample and observe statements would not run; write it as a plain function"
            )
        return result


@dataclasses.dataclass
class ParticleRun:
    """The particles of one run, before any summary.

    With one data set, particles have shape ``(N,)``; with a batch of B data sets,
    ``(N, B)``: N particles for each data set.

    Attributes:
        traces: model traces whose values carry the particle dimensions, one per group
            of particles that share a structure (one group when vectorized).
        sizes: the number of particles in each group.
        log_weights: ``log w = log p(x, y) - log q(x)``, float64, shape ``(N,)`` in
            group order, or ``(N, B)``.
        log_proposal: ``log q(x)`` (None with the prior as proposal), as ``log_weights``.
        vectorized: whether the particles ran as one batch.
        nonfinite_sites: per site, how many particles got a NaN or +inf log density
            (filled only when some log weight is NaN or +inf).
        per_dataset: with batched data run particle by particle, one run per data set
            (then ``traces`` is empty and ``log_weights`` stacks theirs).
        invalid_sites: per site, how many particles met a distribution whose parameters
            are invalid there (a scale of 0, a NaN); those particles have weight zero
            (log weight ``-inf``). A guide's sites are named ``"guide <name>"``.
    """

    traces: list[Trace]
    sizes: list[int]
    log_weights: Tensor
    log_proposal: Tensor | None
    vectorized: bool
    nonfinite_sites: dict[str, int]
    per_dataset: list[ParticleRun] | None = None
    invalid_sites: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class JointBatch:
    """Joint simulations (x_i, y_i) ~ p(x, y), grouped by structure.

    Attributes:
        traces: one trace per group, values with a leading dimension of the group's size.
        sizes: the number of simulations in each group.
        vectorized: whether the model ran once for the whole batch.
        failures: with ``on_error="skip"``, the simulations that raised in the user's
            program and were dropped, counted by the last site each reached
            (:data:`BEFORE_ANY_SITE` when none); a batched run that failed, and whose
            retry succeeded, counts as one failure at the site it reached. The batch
            then holds fewer simulations than asked (``size`` says how many).
        invalid: simulations dropped because a distribution got invalid parameters in
            them (a scale of 0, a NaN), counted by that site; they are not failures of
            the program, and the batch stays vectorized.
    """

    traces: list[Trace]
    sizes: list[int]
    vectorized: bool
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    invalid: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> int:
        """The total number of simulations."""
        return sum(self.sizes)


# -- data --------------------------------------------------------------------------------


def as_data(
    data: Mapping[str, Any] | None, device: torch.device | str | None = None
) -> dict[str, Tensor]:
    """Observations by site name as tensors; numbers, lists, booleans and integer tensors
    become floats (of the default dtype), as torch's distributions score them. With
    ``device``, every value is moved there."""
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
        value = as_value(value, f"data for site {name!r}")
        result[name] = value if device is None else value.to(device)
    return result


def data_argument(data: Any, observations: Any) -> Any:
    """The data, given positionally or by Pyro's keyword ``observations=``."""
    if observations is not None:
        if data is not None:
            raise TypeError("give the data once: positionally or as observations=")
        return observations
    return data


def stack_datasets(
    datasets: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Data sets as one dict whose values share a leading dimension B (checked)."""
    if isinstance(datasets, Mapping):
        stacked = as_data(datasets, device)
    else:
        if not datasets:
            raise ModelError("no data sets given")
        sets = [as_data(d, device) for d in datasets]
        names = set(sets[0])
        for index, d in enumerate(sets):
            if set(d) != names:
                raise ModelError(
                    f"data set {index} names {sorted(d)}, data set 0 names {sorted(names)}"
                )
        for name in sets[0]:
            shapes = [tuple(d[name].shape) for d in sets]
            other = next((i for i, shape in enumerate(shapes) if shape != shapes[0]), None)
            if other is not None:
                raise ModelError(
                    f"observe site {name!r}: data set {other} has shape {shapes[other]}, "
                    f"data set 0 {shapes[0]}: data sets of different shapes cannot be "
                    f"batched"
                )
        stacked = {name: torch.stack([d[name] for d in sets]) for name in sets[0]}
    sizes = {name: (value.shape[0] if value.dim() else None) for name, value in stacked.items()}
    if not sizes or None in sizes.values() or len(set(sizes.values())) != 1:
        raise ModelError(
            f"batched data need one leading dimension (the data set) of the same size "
            f"for every observation; got shapes "
            f"{ {name: tuple(v.shape) for name, v in stacked.items()} }"
        )
    if 0 in sizes.values():
        raise ModelError("no data sets given: the observations' leading dimension B is 0")
    return stacked


def check_value(
    site: Site, value: Tensor, source: str, error: type[ModelError], dependent_support: bool
) -> None:
    """Check that ``value`` fits a site's distribution in an unbatched run.

    The value's shape must equal the distribution's ``batch_shape + event_shape`` and
    the value must lie in its support; otherwise ``error`` names the site and ``source``
    (e.g. "the observed value"). A support computed from the distribution's parameters
    (``Uniform(r, r + 1)``) is checked only with ``dependent_support``: an observation
    outside it in one run is a zero weight, not bad data.
    """
    fn = site.fn
    assert fn is not None
    expected = fn.batch_shape + fn.event_shape
    if value.shape != expected:
        hint = ""
        events = len(fn.event_shape)
        repeats = value.shape[: value.dim() - events]
        same_event = value.shape[value.dim() - events :] == fn.event_shape
        if site.kind == "observe" and same_event and len(repeats) > len(fn.batch_shape):
            hint = (
                f"; for independent repeated observations expand the distribution, e.g. "
                f"{type(fn).__name__}(...).expand({list(repeats)})"
            )
        raise error(
            f"{site.kind} site {site.name!r}: {source} has shape {tuple(value.shape)} but "
            f"{type(fn).__name__} has shape {tuple(expected)} (batch_shape + event_shape){hint}"
        )
    support = fn.support
    if support is None or constraints.is_dependent(support):
        return
    if support_depends_on_parameters(fn) and not dependent_support:
        return
    if not bool(support.check(value).all()):
        raise error(
            f"{site.kind} site {site.name!r}: {source} lies outside the support ({support}) "
            f"of {type(fn).__name__}"
        )


class validate(Messenger):  # noqa: N801 (a handler)
    """Check, in an unbatched run, every observation (and with ``latents``, every latent
    value a guide proposed) against its site's distribution; a missing observation is
    an error. Sits outside ``condition`` and ``replay``, so it sees their values."""

    def __init__(self, data: Mapping[str, Tensor], latents: bool = False) -> None:
        super().__init__()
        self.data = data
        self.latents = latents
        self.observed: set[str] = set()

    def process_message(self, site: Site) -> None:
        if site.kind == "observe":
            if site.value is None:
                unused = sorted(set(self.data) - self.observed)
                hint = f"; the data also name {unused}, which no site used so far" if unused else ""
                raise ModelError(
                    f"observe site {site.name!r} has no observed value: pass it in data "
                    f"(data={{{site.name!r}: ...}}) or give observe(..., value=...){hint}"
                )
            self.observed.add(site.name)
            source = "the observed value" if site.name in self.data else "the fixed value"
            check_value(site, site.value, source, ModelError, False)
        elif site.kind == "sample" and self.latents and site.value is not None:
            check_value(site, site.value, "the proposal's value", GuideError, True)


def run_model(
    job: Job,
    request: Request,
    proposal_handler: Messenger | None = None,
    check_latents: bool = False,
) -> Trace:
    """One run of ``job.program`` conditioned on the request's data, its latent sites
    chosen by ``proposal_handler`` (a replay or propose handler; none: the prior).
    Unbatched runs are validated; batched ones use the probe's natural shapes."""
    batch_shape, probe = request.batch_shape, request.probe
    with ExitStack() as stack:
        if request.monitor is not None:
            stack.enter_context(request.monitor)
        tracer = stack.enter_context(trace(batch_ndim=len(batch_shape)))
        if not batch_shape:
            stack.enter_context(validate(request.data, check_latents))
        if proposal_handler is not None:
            stack.enter_context(proposal_handler)
        stack.enter_context(condition(data=request.data))
        if batch_shape:
            assert probe is not None
            natural = particles.natural_shapes_of(probe.model_trace)
            stack.enter_context(particles(batch_shape=batch_shape, natural_shapes=natural))
        tracer.trace.return_value = job.call()
    return tracer.trace


# -- the engine --------------------------------------------------------------------------


class ParticleEngine:
    """Runs a :class:`Job` for many particles (see the module docstring).

    The engine remembers what it learned: the probe runs (per data structure, per
    simulation structure) and, once a program has fallen back to running particle by
    particle, that it cannot be vectorized (announced once).

    Args:
        job: the program, its proposal and arguments.
        vectorize: ``True`` runs particles as one batch (a failure is a
            :class:`~infcomp.errors.VectorizationError`), ``False`` one by one, ``None``
            tries the batch and falls back.
        workers: processes for the particle-by-particle path of :meth:`run`, each with
            its own random stream seeded from this process's generator.
        what: how messages name the program (default: "model <name>").
    """

    def __init__(
        self, job: Job, vectorize: bool | None = None, workers: int = 1, what: str | None = None
    ) -> None:
        self.job = job
        self.vectorize = check_vectorize(vectorize)
        self.workers = check_positive_int("workers", workers)
        self.what = what or f"model {program_name(job.program)}{job.proposal.label}"
        self._probes: dict[Any, Any] = {}

    def with_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> ParticleEngine:
        """This engine for other program arguments; it keeps what it learned about
        vectorizing, not the probes (shapes may depend on the arguments)."""
        if _same_objects(args, self.job.args) and _same_objects(kwargs, self.job.kwargs):
            return self
        job = dataclasses.replace(self.job, args=tuple(args), kwargs=dict(kwargs))
        return ParticleEngine(job, self.vectorize, self.workers, self.what)

    # -- the shared mechanism ----------------------------------------------------------

    def _probe(self, key: Any, single: Callable[[], _T]) -> _T:
        """An unbatched run, once per key, leaving the random state as it was."""
        if key not in self._probes:
            with untouched_random_state(), torch.no_grad():
                self._probes[key] = single()
        return self._probes[key]  # type: ignore[no-any-return]

    def _choose(
        self,
        batched: Callable[[], _T],
        sequential: Callable[[], _T],
        recover: Callable[[_ProgramError, _T], _T] | None = None,
    ) -> _T:
        """Run ``batched()``, or ``sequential()`` when the program cannot be vectorized.

        Why a batched run failed decides what happens (the only reason to fall back is
        a program that does not vectorize):

        - a :class:`~infcomp.errors.ModelError` is the user's error and propagates;
        - running out of memory raises a ``MemoryError`` at once (see
          :meth:`_out_of_memory`), never a particle-by-particle loop;
        - a shape error (torch's message for control flow on a batch, mismatched
          shapes, a batch turned into a number; or infcomp's particle handler saw the
          structure change) means the program does not vectorize: a one-time notice
          (a :class:`~infcomp.errors.VectorizationError` when ``vectorize=True``) and
          from then on the sequential path;
        - any other exception the program raised: the batch is retried once, since a
          program that fails at random (a simulator that raises now and then) rarely
          fails twice running, while one that does not vectorize always does. If the
          retry succeeds, the first failure was the user's: ``recover(failure,
          result)`` decides (by default a ModelError naming the last site reached).
          If it fails too, the batch is redone one at a time: a trace that fails there
          is the user's error (``sequential`` raises it, or with ``on_error="skip"``
          drops and counts it, and later batches stay vectorized); if none fails, the
          batched failure is the user's all the same (``recover`` decides), and the
          program stays vectorized.

        Invalid distribution parameters in some particles are no failure at all (see
        :meth:`_tolerant`).
        """
        if self.vectorize is False:
            return sequential()
        result, failure = self._attempt(batched)
        if failure is None:
            return result  # type: ignore[return-value]
        shape_error = _looks_unvectorized(failure.error)
        if not shape_error:
            result, again = self._attempt(batched)
            if again is None:
                if recover is None:
                    raise self._user_error(failure) from failure.error
                return recover(failure, result)  # type: ignore[arg-type]
            if _looks_unvectorized(again.error):
                failure, shape_error = again, True
        if shape_error:
            self._fall_back(failure)
            return sequential()
        result = sequential()  # a trace that fails there raises the user's error
        if isinstance(result, JointBatch) and result.failures:
            return result  # the program failed in some traces, skipped: stay vectorized
        # No trace failed alone, yet the batch failed twice with an error that is not
        # about shapes: the program raises on something of the whole batch (say
        # ``if (z > c).any(): raise``). That is the user's error, not a reason to stop
        # vectorizing: ``recover`` decides (skip and count it, or raise it).
        if recover is None:
            raise self._user_error(failure) from failure.error
        return recover(failure, result)

    def _fall_back(self, failure: _ProgramError) -> None:
        """The program does not vectorize: an error if forced, else say so (once) and
        keep to the particle-by-particle path from now on."""
        error = failure.error
        if self.vectorize:
            raise VectorizationError(
                f"{self.what} cannot run with a leading batch dimension: {error}"
            ) from error
        warn_user(
            f"{self.what} runs one trace at a time because it could not be vectorized "
            f"({type(error).__name__}: {error}); pass vectorize=False to choose this "
            f"path directly",
            VectorizationNotice,
        )
        self.vectorize = False

    def _attempt(self, batched: Callable[[], _T]) -> tuple[_T | None, _ProgramError | None]:
        """``batched()``'s result, or why it failed; user's errors and memory raise."""
        try:
            return batched(), None
        except ModelError:
            raise
        except _ProgramError as failure:
            return None, failure
        except Exception as error:
            if _is_out_of_memory(error):
                raise self._out_of_memory(error) from error
            # The particle handler, or infcomp's handling of the batched trace, failed.
            return None, _ProgramError(error, None)

    def _guarded(self, call: Callable[[], _T]) -> _T:
        """``call()``, a run of the user's program; an exception it raises (other than
        infcomp's own and running out of memory) becomes a :class:`_ProgramError`
        that knows the last site the run reached."""
        with _Progress() as progress:
            try:
                return call()
            except (ModelError, VectorizationError):
                raise
            except Exception as error:
                if _is_out_of_memory(error):
                    raise self._out_of_memory(error) from error
                raise _ProgramError(error, progress.site) from error

    def _tolerant(self, call: Callable[[], _T]) -> tuple[_T, bool]:
        """``(call(), reran)``: a run that constructs a distribution with invalid
        parameters in some particles (torch's argument validation raises) is redone in
        the same random state with validation off, so the particles are the same and
        those with invalid parameters can be found (:func:`_invalid_particles`)."""
        restore = _random_state()
        try:
            return self._guarded(call), False
        except _ProgramError as failure:
            if not _is_invalid_parameter(failure.error):
                raise
        restore()
        with _validation_off(), _SafeDraws():
            return self._guarded(call), True

    def _user_error(self, failure: _ProgramError, hint: str = "") -> ModelError:
        """The user's program raised: a ModelError naming the last site reached (raise
        it ``from failure.error`` to keep the program's traceback)."""
        error = failure.error
        where = (
            f"the last site it reached was {failure.site!r}"
            if failure.site is not None
            else "before it reached any site"
        )
        return ModelError(
            f"{self.what} raised {type(error).__name__}: {error} ({where}); this is an "
            f"error in the program itself, not in how infcomp runs it (see the traceback "
            f"above){hint}"
        )

    def _out_of_memory(self, error: BaseException) -> Exception:
        """Running out of memory: say so at once and point to streaming."""
        message = (
            f"out of memory running {self.what} for many particles at once "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            f"run fewer at a time: infcomp.importance_stream(model, data, num_particles, "
            f"chunk_size=...) keeps memory at one chunk, or use fewer particles (a smaller "
            f"batch_size for simulation)"
        )
        if isinstance(error, torch.OutOfMemoryError):
            return torch.OutOfMemoryError(message)
        return MemoryError(message)

    # -- importance sampling -----------------------------------------------------------

    def run(
        self, data: Mapping[str, Tensor], num_particles: int, batched_data: bool = False
    ) -> ParticleRun:
        """``num_particles`` particles of the proposal and the model on ``data``
        (tensors, see :func:`as_data`), weighed by ``log w = log p(x, y) - log q(x)``.

        With ``batched_data`` every observation has a leading data-set dimension B and
        the particles have shape ``(N, B)``. The probe runs on the first data set, once
        per data structure (names and shapes), so minibatches of one collection are
        checked once. Gradients flow through the log weights when the caller allows.
        """
        num_particles = check_positive_int("num_particles", num_particles)
        data = dict(data)
        probe = self.probe(data, batched_data)
        batch_shape: tuple[int, ...] = (num_particles,)
        if batched_data:
            batch_shape += (next(iter(data.values())).shape[0],)
        result = self._choose(
            lambda: self._vectorized(data, batch_shape, probe),
            lambda: self._each_dataset(data, batch_shape, probe),
        )
        if result.invalid_sites:
            sites = ", ".join(f"{name!r} ({count})" for name, count in result.invalid_sites.items())
            warn_user(
                f"{self.what}: distributions with invalid parameters (a scale of 0, a NaN, "
                f"...) in some of the {result.log_weights.numel()} particles, at sites "
                f"{sites}; those particles have weight zero",
                InferenceWarning,
            )
        return result

    def probe(self, data: Mapping[str, Tensor], batched_data: bool = False) -> SingleRun:
        """The probe of ``data`` (checked against the program; with ``batched_data``, on
        the first data set, and every data set's values against the supports), run once
        per data structure (names and shapes)."""
        data = dict(data)
        first = {name: value[0] for name, value in data.items()} if batched_data else data
        key = ("run", tuple((name, tuple(value.shape)) for name, value in data.items()))
        try:
            probe = self._probe(key, lambda: _check_precision(self._unbatched(Request(first))))
        except ModelError as error:
            if not batched_data:
                raise
            raise type(error)(f"data set 0: {error}") from error
        if batched_data:
            _check_every_dataset(data, probe)
        return probe

    def choose(self, batched: Callable[[], _T], sequential: Callable[[], _T]) -> _T:
        """``batched()``, or ``sequential()`` when the program does not vectorize, for
        algorithms with their own batched and sequential runs (see :meth:`_choose`;
        ``batched`` makes its runs with :meth:`single`)."""
        return self._choose(batched, sequential)

    def single(self, request: Request) -> tuple[SingleRun, bool]:
        """``(run, reran)``: one run of the proposal and the program; ``reran``: it was
        redone with argument validation off because some particles met invalid
        distribution parameters (see :meth:`_tolerant`). An exception in an unbatched
        run is the user's :class:`~infcomp.errors.ModelError`; in a batched run it is
        left for :meth:`choose` to judge."""
        if request.batch_shape:
            return self._tolerant(lambda: self._single(request))
        try:
            return self._tolerant(lambda: self._single(request))
        except _ProgramError as failure:
            raise self._user_error(failure) from failure.error

    def _single(self, request: Request) -> SingleRun:
        return self.job.proposal.run(self.job, request)

    def _unbatched(self, request: Request) -> SingleRun:
        """One unbatched run (the probe): an exception in the program is the user's;
        invalid parameters there are not (they may be a rare draw, like the particles')."""
        try:
            return self._tolerant(lambda: self._single(request))[0]
        except _ProgramError as failure:
            raise self._user_error(failure) from failure.error

    def _vectorized(
        self, data: dict[str, Tensor], batch_shape: tuple[int, ...], probe: SingleRun
    ) -> ParticleRun:
        """One batched run; on the CPU, with a proposal that keeps much state per
        particle (its ``group_rows``, an inference network's :data:`GROUP_ROWS`), many
        data sets run in groups of about that many particles, joined."""
        on_cpu = all(value.device.type == "cpu" for value in data.values())
        group_rows = getattr(self.job.proposal, "group_rows", None)
        if group_rows and len(batch_shape) == 2 and batch_shape[1] > 1 and on_cpu:
            num, count = batch_shape
            size = max(1, group_rows // num)
            if size < count:
                groups = [
                    self._vectorized_once(
                        {name: value[start : start + size] for name, value in data.items()},
                        (num, min(size, count - start)),
                        probe,
                    )
                    for start in range(0, count, size)
                ]
                joined = _join_datasets(groups)
                if joined is not None:
                    return joined
        return self._vectorized_once(data, batch_shape, probe)

    def _vectorized_once(
        self, data: dict[str, Tensor], batch_shape: tuple[int, ...], probe: SingleRun
    ) -> ParticleRun:
        run, reran = self._tolerant(lambda: self._single(Request(data, batch_shape, probe)))
        _check_data_used(data, [probe, run])
        for site in run.model_trace.sites.values():
            # Observed values carry no particle dimension; give them one (a view) so that
            # every value of the posterior's trace is indexed by particle, and so that
            # float64 data are scored in float64 (torch lets a tensor with dimensions
            # decide the dtype over one with fewer).
            if site.kind == "observe" and site.value is not None and site.fn is not None:
                site.value = site.value.expand(site.fn.batch_shape + site.fn.event_shape)
        log_weights, log_proposal = _log_weight(run)
        log_weights = torch.broadcast_to(log_weights, batch_shape)
        # Invalid parameters can also come without a rerun: from a distribution built
        # with validate_args=False, or while another thread's rerun has validation off.
        invalid = _invalid_particles(run, batch_shape) if reran or _bad(log_weights) else None
        if invalid is not None:
            log_weights = log_weights.masked_fill(invalid[0], -torch.inf)
        if log_proposal is not None:
            log_proposal = torch.broadcast_to(log_proposal, batch_shape)
        nonfinite = _nonfinite_sites([run], len(batch_shape)) if _bad(log_weights) else {}
        return ParticleRun(
            [run.model_trace],
            [batch_shape[0]],
            log_weights,
            log_proposal,
            True,
            nonfinite,
            invalid_sites={} if invalid is None else invalid[1],
        )

    def _each_dataset(
        self, data: dict[str, Tensor], batch_shape: tuple[int, ...], probe: SingleRun
    ) -> ParticleRun:
        """Particle by particle; with batched data, one data set after another."""
        if len(batch_shape) == 1:
            return self._sequential(data, batch_shape[0], probe)
        runs = [
            self._sequential({n: v[b] for n, v in data.items()}, batch_shape[0], probe)
            for b in range(batch_shape[1])
        ]
        merged = _concatenate(runs, dim=1)
        merged.per_dataset = runs
        return merged

    def _sequential(
        self, data: dict[str, Tensor], num_particles: int, probe: SingleRun
    ) -> ParticleRun:
        if self.workers > 1 and num_particles > 1:
            return self._in_workers(data, num_particles)
        runs: list[SingleRun] = []
        reruns: list[bool] = []
        invalid_sites: dict[str, int] = {}
        invalid_indices: list[int] = []
        for _ in range(num_particles):
            try:
                run, reran = self._tolerant(lambda: self._single(Request(data)))
            except _ProgramError as failure:
                raise self._user_error(failure) from failure.error
            runs.append(run)
            reruns.append(reran)
        _check_data_used(data, [probe, *runs])
        weights = [_log_weight(run) for run in runs]
        log_weights = torch.stack([w for w, _ in weights])
        # As in _vectorized: invalid parameters can also come without a rerun.
        suspect = torch.isnan(log_weights) | torch.isposinf(log_weights) | torch.tensor(reruns)
        for index in suspect.nonzero().flatten().tolist():
            invalid = _invalid_particles(runs[index], ())
            if invalid is not None:
                invalid_indices.append(index)
                for name, count in invalid[1].items():
                    invalid_sites[name] = invalid_sites.get(name, 0) + count
        log_weights[invalid_indices] = -torch.inf
        traces, sizes, order = group_traces([run.model_trace for run in runs], distributions=False)
        log_proposal = None
        if weights[0][1] is not None:
            log_proposal = torch.stack([q for _, q in weights])[order]  # type: ignore[misc]
        nonfinite = _nonfinite_sites(runs, 0) if _bad(log_weights) else {}
        return ParticleRun(
            traces,
            sizes,
            log_weights[order],
            log_proposal,
            False,
            nonfinite,
            invalid_sites=invalid_sites,
        )

    def _in_workers(self, data: dict[str, Tensor], num_particles: int) -> ParticleRun:
        """The particle-by-particle path split over spawned worker processes, each with
        its own random stream seeded from this process's generator (so seeded runs
        repeat); job must be picklable (model and guide defined at module level)."""
        workers = self.workers
        shares = [num_particles // workers + (i < num_particles % workers) for i in range(workers)]
        shares = [share for share in shares if share > 0]
        seeds = torch.randint(0, 2**62, (len(shares),)).tolist()
        try:
            pickle.dumps(self.job)
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise ModelError(
                f"workers > 1 runs the model in other processes, so model, guide and "
                f"arguments must be picklable (defined at module level): {error}"
            ) from error
        _check_importable(self.job)
        try:
            pool = worker_pool(workers)
            futures = [
                pool.submit(_worker, self.job, data, share, seed)
                for share, seed in zip(shares, seeds)
            ]
            return _concatenate([future.result() for future in futures], dim=0)
        except BrokenProcessPool as error:
            _WORKER_POOLS.pop(workers, None)
            raise ModelError(
                "a worker process died before it could run the model; a script run "
                "directly must make its inference calls under `if __name__ == "
                "'__main__':` (each worker imports the script again), or use workers=1"
            ) from error

    # -- joint simulation --------------------------------------------------------------

    def simulate(
        self, batch_size: int, prior_inflation: float = 1.0, on_error: OnError = "raise"
    ) -> JointBatch:
        """``batch_size`` joint simulations (x, y) ~ p(x, y): the program runs with its
        observe statements sampling (no gradients: it is never differentiated). With
        ``prior_inflation`` > 1, latent draws come from priors widened by that factor
        (see :class:`inflate`).

        Simulations that meet a distribution with invalid parameters (a scale of 0, a NaN)
        are dropped and counted by site in :attr:`JointBatch.invalid`. A simulation that
        raises in the user's program is a :class:`~infcomp.errors.ModelError` naming the
        last site it reached, chained to the program's exception, with ``on_error=
        "raise"``. With ``"skip"`` failing simulations are dropped and counted in
        :attr:`JointBatch.failures`: a batched run that fails is retried, then redone
        trace by trace for that batch only (later batches stay vectorized), so the batch
        may hold fewer simulations than asked; if all fail, the error is raised.
        Simulations that do not fail are draws from p(x, y | the program does not fail).
        """
        batch_size = check_positive_int("batch_size", batch_size)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        hint = "; pass on_error='skip' to drop and count failing simulations"

        def recover(failure: _ProgramError, batch: JointBatch) -> JointBatch:
            if on_error == "raise":
                raise self._user_error(failure, hint) from failure.error
            batch.failures = {failure.site or BEFORE_ANY_SITE: 1}
            return batch

        def unbatched() -> Trace:
            # With "skip", a probe that fails is tried again (a few times: a program that
            # always fails is the user's error all the same). Invalid parameters are no
            # failure (the probe gives shapes, and a rare draw may meet them).
            for _ in range(1 if on_error == "raise" else _PROBE_ATTEMPTS):
                try:
                    return self._tolerant(lambda: self._joint((), None, prior_inflation))[0]
                except _ProgramError as failure:
                    last = failure
            raise self._user_error(last, hint) from last.error

        with torch.no_grad():
            probe = self._probe(("simulate", prior_inflation), unbatched)
            return self._choose(
                lambda: self._joint_batched(batch_size, probe, prior_inflation),
                lambda: self._joint_sequential(batch_size, prior_inflation, on_error, hint),
                recover,
            )

    def _joint_batched(self, batch_size: int, probe: Trace, prior_inflation: float) -> JointBatch:
        """One batched run of ``batch_size`` simulations, without those that met
        distributions with invalid parameters (counted in ``JointBatch.invalid``)."""
        joint, _ = self._tolerant(lambda: self._joint((batch_size,), probe, prior_inflation))
        kept, invalid = _without_invalid(joint, batch_size)
        return JointBatch(
            [kept] if kept else [], [group_size(kept)] if kept else [], True, invalid=invalid
        )

    def _joint(
        self, batch_shape: tuple[int, ...], probe: Trace | None, prior_inflation: float
    ) -> Trace:
        with ExitStack() as stack:
            tracer = stack.enter_context(trace(batch_ndim=len(batch_shape)))
            stack.enter_context(uncondition())
            stack.enter_context(inflate(factor=prior_inflation))
            if batch_shape:
                assert probe is not None
                natural = particles.natural_shapes_of(probe)
                stack.enter_context(particles(batch_shape=batch_shape, natural_shapes=natural))
            tracer.trace.return_value = self.job.call()
        factors = tracer.trace.names("factor")
        if factors:
            raise ModelError(
                f"the model has factor site {factors[0]!r}: running its statements forward "
                f"does not sample p(x, y) when factors reweigh it, so it cannot be simulated "
                f"jointly"
            )
        return tracer.trace

    def _joint_sequential(
        self, batch_size: int, prior_inflation: float, on_error: OnError, hint: str
    ) -> JointBatch:
        singles: list[Trace] = []
        failures: dict[str, int] = {}
        for _ in range(batch_size):
            try:
                singles.append(self._tolerant(lambda: self._joint((), None, prior_inflation))[0])
            except _ProgramError as failure:
                if on_error == "raise" or (
                    not singles and sum(failures.values()) + 1 == batch_size
                ):
                    raise self._user_error(failure, hint) from failure.error
                site = failure.site or BEFORE_ANY_SITE
                failures[site] = failures.get(site, 0) + 1
        groups, sizes, _ = group_traces(singles)
        # Invalid parameters are found group by group (one tensor check per site).
        traces: list[Trace] = []
        invalid: dict[str, int] = {}
        for group, size in zip(groups, sizes):
            kept, counts = _without_invalid(group, size)
            traces.extend([kept] if kept else [])
            for name, count in counts.items():
                invalid[name] = invalid.get(name, 0) + count
        return JointBatch(traces, [group_size(t) for t in traces], False, failures, invalid)

    # -- replaying given values --------------------------------------------------------

    def replay(
        self, joint: Trace, size: int, score: Callable[[Trace, Trace, int], Tensor]
    ) -> Tensor:
        """Run the program on each of ``size`` simulations' latent values (``joint``, a
        group of one structure, values with one leading dimension), the simulation's
        observations passed as ``observations=``, and reduce each run with
        ``score(simulations, program_trace, batch_ndim)``: batched over the group (one
        call, ``batch_ndim`` 1) or simulation by simulation (``batch_ndim`` 0, results
        stacked). The probe (per structure) scores one simulation first."""

        def run_one(index: int) -> tuple[Trace, Trace]:
            one = index_trace(joint, index)

            def call() -> Trace:
                with trace() as tracer, replay(trace=one):
                    self.job.call(observations=observations_of(one))
                return tracer.trace

            try:
                return one, self._guarded(call)
            except _ProgramError as failure:
                raise self._user_error(failure) from failure.error

        def natural_shapes() -> dict[str, torch.Size]:
            one, program_trace = run_one(0)
            score(one, program_trace, 0)  # checks the program on one simulation first
            return particles.natural_shapes_of(program_trace)

        def batched() -> Tensor:
            natural = self._probe(("replay", structure_key(joint)), natural_shapes)

            def call() -> Trace:
                with (
                    trace(batch_ndim=1) as tracer,
                    replay(trace=joint),
                    particles(batch_shape=(size,), natural_shapes=natural),
                ):
                    self.job.call(observations=observations_of(joint))
                return tracer.trace

            return score(joint, self._guarded(call), 1)

        def sequential() -> Tensor:
            return torch.stack([score(*run_one(index), 0) for index in range(size)])

        return self._choose(batched, sequential)


def observations_of(joint_trace: Trace) -> dict[str, Tensor]:
    """The observe sites' values of a (joint) trace, by name."""
    values = {}
    for name, site in joint_trace.sites.items():
        if site.kind == "observe":
            assert site.value is not None
            values[name] = site.value
    return values


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
        self.factor = check_finite("the inflation factor", factor, minimum=1)

    def process_message(self, site: Site) -> None:
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


# -- helpers -----------------------------------------------------------------------------


_WORKER_POOLS: dict[int, ProcessPoolExecutor] = {}


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes, started on first use and kept for later
    calls (starting one costs seconds: a new interpreter importing torch); the pools stop
    when the interpreter exits. The job travels with each task."""
    pool = _WORKER_POOLS.get(workers)
    if pool is None:
        context = multiprocessing.get_context("spawn")
        pool = _WORKER_POOLS[workers] = ProcessPoolExecutor(workers, mp_context=context)
    return pool


def _worker(job: Job, data: dict[str, Tensor], num_particles: int, seed: int) -> ParticleRun:
    """One worker's share of the particle-by-particle path (in a spawned process)."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    engine = ParticleEngine(job, vectorize=False)
    with torch.no_grad():
        return engine.run(data, num_particles)


def _check_importable(job: Job) -> None:
    """Worker processes import the model's module; an interactive ``__main__`` (python -c,
    standard input, a notebook) cannot be imported, so say so before starting them."""
    proposal = job.proposal
    programs = [job.program, getattr(proposal, "guide", None)]
    main = sys.modules.get("__main__")
    for program in programs:
        module = getattr(program, "__module__", None) or type(program).__module__
        if module == "__main__" and getattr(main, "__file__", None) is None:
            raise ModelError(
                f"workers > 1 needs {program_name(program)} in a module the worker processes "
                f"can import, but it is defined in an interactive session (python -c, "
                f"standard input or a notebook): move it to a .py file and import it, or use "
                f"workers=1"
            )


def _concatenate(runs: list[ParticleRun], dim: int) -> ParticleRun:
    """Runs of particles (``dim`` 0) or of data sets (``dim`` 1) as one."""
    nonfinite: dict[str, int] = {}
    for run in runs:
        for name, count in run.nonfinite_sites.items():
            nonfinite[name] = nonfinite.get(name, 0) + count
    invalid: dict[str, int] = {}
    for run in runs:
        for name, count in run.invalid_sites.items():
            invalid[name] = invalid.get(name, 0) + count
    log_proposals = [run.log_proposal for run in runs]
    # Particles, or data sets: run after run ((N,) each, stacked) or groups ((N, B_g)).
    join = torch.cat if dim == 0 or runs[0].log_weights.dim() == 2 else torch.stack
    return ParticleRun(
        [trace for run in runs for trace in run.traces] if dim == 0 else [],
        [size for run in runs for size in run.sizes] if dim == 0 else [],
        join([run.log_weights for run in runs], dim=dim),
        None if log_proposals[0] is None else join(log_proposals, dim=dim),  # type: ignore[arg-type]
        False,
        nonfinite,
        invalid_sites=invalid,
    )


def _join_datasets(runs: list[ParticleRun]) -> ParticleRun | None:
    """Vectorized runs of consecutive groups of data sets, particles ``(N, B_g)``, as one
    run of ``(N, ΣB_g)``: each site's values joined along the data-set dimension (the
    joined sites keep no distribution: none holds all groups). None where the groups'
    traces differ in their sites, or where a return value is not ``None`` or a tensor
    with the particle dimensions."""
    traces = [run.traces[0] for run in runs]
    first = traces[0]
    names = list(first.sites)
    if any(list(trace.sites) != names for trace in traces[1:]):
        return None
    shapes = [run.log_weights.shape for run in runs]
    try:
        returned = _join_values([trace.return_value for trace in traces], shapes)
    except _CannotJoinError:
        return None
    joined = Trace(batch_ndim=2)
    for name, site in first.sites.items():
        values = [trace[name].value for trace in traces]
        value = None if values[0] is None else torch.cat(values, dim=1)  # type: ignore[arg-type]
        joined.add(Site(name, site.kind, None, value, site.scale))
    joined.return_value = returned
    merged = _concatenate(runs, dim=1)
    merged.traces, merged.sizes, merged.vectorized = [joined], [runs[0].sizes[0]], True
    return merged


class _CannotJoinError(Exception):
    pass


def _join_values(values: list[Any], shapes: list[torch.Size]) -> Any:
    """The groups' return values joined along the data-set dimension: tensors with the
    particle dimensions, and dicts, lists and tuples of them; None stays None."""
    first = values[0]
    if first is None and all(value is None for value in values):
        return None
    same_type = all(type(value) is type(first) for value in values)
    if isinstance(first, Tensor) and same_type:
        if all(value.shape[:2] == shape for value, shape in zip(values, shapes)):
            return torch.cat(values, dim=1)
    elif type(first) is dict and same_type:
        if all(value.keys() == first.keys() for value in values):
            return {key: _join_values([value[key] for value in values], shapes) for key in first}
    elif type(first) in (list, tuple) and same_type and len({len(v) for v in values}) == 1:
        parts = [_join_values([v[i] for v in values], shapes) for i in range(len(first))]
        return type(first)(parts)
    raise _CannotJoinError


def _log_weight(run: SingleRun) -> tuple[Tensor, Tensor | None]:
    """``(log w, log q)``; with the prior as proposal ``(log p(y | x) + factors, None)``."""
    if run.proposal_trace is None:
        # Prior as proposal: log p(x) - log q(x) = 0 for every latent site.
        return run.model_trace.log_prob_sum(("observe", "factor")), None
    log_proposal = run.proposal_trace.log_prob_sum()
    return run.model_trace.log_prob_sum() - log_proposal, log_proposal


def _check_data_used(data: Mapping[str, Tensor], runs: Sequence[SingleRun]) -> None:
    observed = {name for run in runs for name in run.model_trace.names("observe")}
    unknown = sorted(set(data) - observed)
    if unknown:
        raise ModelError(
            f"data names {unknown}, but the model has no such site; its observe sites are "
            f"{runs[0].model_trace.names('observe')}"
        )


def _check_precision(run: SingleRun) -> SingleRun:
    """``run`` (a probe), unless a site's log density in it is ``-inf`` only because the
    model computes in a narrow float type: rescored with its value in float64 (which
    promotes the arithmetic of torch's distributions) it is finite. Then the "zero
    weights" that follow would be wrong, so a ModelError names the site and the remedy."""
    traces = [run.model_trace] + ([run.proposal_trace] if run.proposal_trace else [])
    for site in (site for t in traces for site in t.sites.values()):
        value, fn = site.value, site.fn
        if fn is None or value is None or not value.is_floating_point():
            continue
        log_density = site.log_prob()
        if log_density.dtype == torch.float64 or not bool(torch.isneginf(log_density).any()):
            continue
        try:
            wide = fn.log_prob(value.double().expand(fn.batch_shape + fn.event_shape))
        except (ValueError, RuntimeError):
            continue
        if bool(torch.isfinite(wide).all()) and bool(torch.isfinite(value).all()):
            raise ModelError(
                f"{site.kind} site {site.name!r}: the log density of the value "
                f"{float(value.abs().max()):.4g} is -inf in {log_density.dtype} but "
                f"{float(wide.sum()):.6g} in float64: the model's precision overflowed. Call "
                f"torch.set_default_dtype(torch.float64) before running (with float64 "
                f"parameters and data), or rescale the data"
            )
    return run


def _check_every_dataset(data: Mapping[str, Tensor], probe: SingleRun) -> None:
    """The probe checked data set 0; check the others' values against the supports too
    (those that do not depend on latent values), naming the first bad data set."""
    for name, site in probe.model_trace.sites.items():
        fn = site.fn
        if name not in data or site.kind != "observe" or fn is None:
            continue
        support = fn.support
        if support is None or constraints.is_dependent(support):
            continue
        if support_depends_on_parameters(fn):
            continue
        inside = support.check(data[name]).reshape(data[name].shape[0], -1).all(1)
        if not bool(inside.all()):
            index = int((~inside).nonzero()[0])
            raise ModelError(
                f"data set {index}: observe site {name!r}: the observed value lies outside "
                f"the support ({support}) of {type(fn).__name__}"
            )


def _bad(log_weights: Tensor) -> bool:
    return bool((torch.isnan(log_weights) | torch.isposinf(log_weights)).any())


def _nonfinite_sites(runs: list[SingleRun], batch_ndim: int) -> dict[str, int]:
    """How many particles got a NaN or +inf log density at each site (for reports)."""
    counts: dict[str, int] = {}
    for run in runs:
        for prefix, tr in (("", run.model_trace), ("guide ", run.proposal_trace)):
            if tr is None:
                continue
            for name, site in tr.sites.items():
                log_density = sum_rightmost(site.log_prob(), batch_ndim)
                bad = int((torch.isnan(log_density) | torch.isposinf(log_density)).sum())
                if bad:
                    counts[prefix + name] = counts.get(prefix + name, 0) + bad
    return counts


def _same_objects(a: Any, b: Any) -> bool:
    """Whether two argument tuples or dicts hold the very same objects."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(a[k] is b[k] for k in a)
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


# -- failures ----------------------------------------------------------------------------

#: How often a failing probe is tried with ``on_error="skip"``.
_PROBE_ATTEMPTS = 10


class _ProgramError(Exception):
    """The user's program raised ``error`` in a run; ``site``: the last site it reached."""

    def __init__(self, error: Exception, site: str | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.site = site


class _Progress(Messenger):
    """Remembers the last site a run reached (outermost, so it sees every site)."""

    def __init__(self) -> None:
        super().__init__()
        self.site: str | None = None

    def process_message(self, site: Site) -> None:
        self.site = site.name


# Torch's messages when a program does not broadcast over leading particle dimensions:
# control flow on a batch (`if z > 0:`), a batch turned into a number, shapes that do not
# match. Such a failure is not retried before running one trace at a time.
_SHAPE_ERROR = re.compile(
    r"Boolean value of Tensor with more than one value|cannot be converted to (Python )?"
    r"[Ss]calar|only one element tensors|size of tensor|must match the size|shapes? |"
    r"Sizes of tensors|same number of dimensions|too many indices|Dimension out of range|"
    r"expand|broadcast"
)


def _looks_unvectorized(error: BaseException) -> bool:
    if isinstance(error, VectorizationError):
        return True
    return (
        isinstance(error, (RuntimeError, ValueError, IndexError, TypeError))
        and not _is_invalid_parameter(error)
        and _SHAPE_ERROR.search(str(error)) is not None
    )


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError)
        and ("can't allocate memory" in str(error) or "out of memory" in str(error))
    )


def _is_invalid_parameter(error: BaseException) -> bool:
    """Whether torch's argument validation rejected a distribution's parameters."""
    return isinstance(error, ValueError) and str(error).startswith("Expected parameter ")


def _random_state() -> Callable[[], None]:
    """A function that puts torch's random state (CPU, and CUDA if in use) back as now."""
    cpu = torch.default_generator.get_state()  # once per particle on the sequential path
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore() -> None:
        torch.default_generator.set_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

    return restore


class _Validation:
    """Torch's argument validation is one process-wide switch; runs that need it off
    (see :meth:`ParticleEngine._tolerant`) count themselves in and out, so that it is
    turned back on only when the last one ends, in whatever thread."""

    lock = threading.Lock()
    users = 0
    saved = True


@contextlib.contextmanager
def _validation_off() -> Iterator[None]:
    with _Validation.lock:
        if _Validation.users == 0:
            _Validation.saved = bool(Distribution._validate_args)
            Distribution.set_default_validate_args(False)
        _Validation.users += 1
    try:
        yield
    finally:
        with _Validation.lock:
            _Validation.users -= 1
            if _Validation.users == 0:
                Distribution.set_default_validate_args(_Validation.saved)


class _SafeDraws(Messenger):
    """Draw latent values even where a distribution's parameters are invalid in some
    particles (torch refuses to sample a negative scale): those particles' parameters
    are replaced by valid stand-ins (see :func:`_repaired`) for the draw alone, since
    their weight is zero whatever they draw. Outermost, so it draws last."""

    def process_message(self, site: Site) -> None:
        if site.value is not None or site.fn is None:
            return
        try:
            site.value = site.fn.sample()
        except (RuntimeError, ValueError):
            site.value = _repaired(site.fn).sample()


def _repaired(fn: Distribution) -> Distribution:
    """A copy of ``fn`` whose parameters outside their constraints (its own, and those
    of the distributions it wraps) are replaced by a point inside, elementwise."""
    fn = copy.copy(fn)
    try:
        arg_constraints = fn.arg_constraints
    except NotImplementedError:
        arg_constraints = {}
    for param, constraint in arg_constraints.items():
        value = vars(fn).get(param)
        if not isinstance(value, Tensor) or constraints.is_dependent(constraint):
            continue
        inside = constraint.check(value)
        inside = inside.reshape(inside.shape + (1,) * (value.dim() - inside.dim()))
        to_constraint = biject_to(constraint)
        stand_in = to_constraint(value.new_zeros(to_constraint.inverse_shape(value.shape)))
        setattr(fn, param, torch.where(inside, value, stand_in))
    for name, inner in list(vars(fn).items()):
        if isinstance(inner, Distribution):
            setattr(fn, name, _repaired(inner))
    return fn


def _without_invalid(joint: Trace, size: int) -> tuple[Trace | None, dict[str, int]]:
    """A group of ``size`` joint simulations without those whose distributions have
    invalid parameters (None when none is left), and how many of those per site.
    Checked whether or not validation raised: a distribution built with
    ``validate_args=False`` (or while another thread's rerun had validation off) too."""
    invalid = _invalid_particles(SingleRun(joint, None), (size,))
    if invalid is None:
        return joint, {}
    mask, counts = invalid
    keep = (~mask).nonzero().squeeze(-1)
    return (index_trace(joint, keep, distributions=True) if len(keep) else None), counts


def _invalid_particles(
    run: SingleRun, batch_shape: tuple[int, ...]
) -> tuple[Tensor, dict[str, int]] | None:
    """The particles (a mask of ``batch_shape``) whose distributions have parameters
    outside their ``arg_constraints`` at some site, and how many per site, each counted
    at the first site where it went wrong (a NaN passed on to later sites is not counted
    again); None if none."""
    invalid = torch.zeros(batch_shape, dtype=torch.bool)
    counts: dict[str, int] = {}
    guide = run.proposal_trace.sites if run.proposal_trace is not None else {}
    # In the order the run met them: at each model site, the guide's proposal first.
    order = [
        (label, site)
        for name, model_site in run.model_trace.sites.items()
        for label, site in (("guide " + name, guide.get(name)), (name, model_site))
    ] + [("guide " + name, site) for name, site in guide.items() if name not in run.model_trace]
    for label, site in order:
        if site is None or site.fn is None:
            continue
        bad = _invalid_parameters(site.fn, len(batch_shape))
        if bad is None or not bool(bad.any()):
            continue
        bad = torch.broadcast_to(bad.to(invalid.device), batch_shape)
        new = bad & ~invalid.to(bad.device)
        if bool(new.any()):
            counts[label] = int(new.sum())
        invalid = invalid.to(bad.device) | bad
    return (invalid, counts) if counts else None


def _invalid_parameters(fn: Distribution, batch_ndim: int) -> Tensor | None:
    """Per particle (the leading ``batch_ndim`` dimensions), whether a parameter of ``fn``
    or of a distribution it wraps violates its constraint (torch's own check)."""
    bad: Tensor | None = None
    try:
        arg_constraints = fn.arg_constraints
    except NotImplementedError:
        arg_constraints = {}
    for param, constraint in arg_constraints.items():
        if constraints.is_dependent(constraint):
            continue
        if param not in vars(fn) and isinstance(getattr(type(fn), param, None), lazy_property):
            continue  # a parametrization not given (probs when logits were), as torch skips
        value = getattr(fn, param, None)
        if not isinstance(value, Tensor):
            continue
        outside = ~constraint.check(value)
        if outside.dim() > batch_ndim:
            outside = outside.reshape(outside.shape[:batch_ndim] + (-1,)).any(-1)
        bad = outside if bad is None else bad | outside
    for inner in vars(fn).values():
        if isinstance(inner, Distribution):
            inside = _invalid_parameters(inner, batch_ndim)
            if inside is not None:
                bad = inside if bad is None else bad | inside
    return bad
