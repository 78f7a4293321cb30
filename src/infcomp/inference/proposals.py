"""Proposals: the prior, a program (a guide), or an inference network, behind one protocol.

Each implements :class:`~infcomp.inference.particles.Proposal`: it runs under a model
(proposing the latent sites, for importance sampling) and scores joint simulations
(``log q(x_i; y_i)``, for training it). :func:`as_proposal` chooses the implementation
once, from what the user passed as ``guide``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor

from infcomp.errors import GuideError, ModelError
from infcomp.handlers import block, particles, propose, replay, trace
from infcomp.inference.common import Program, program_name, untouched_random_state
from infcomp.inference.particles import (
    GROUP_ROWS,
    Job,
    JointBatch,
    ParticleEngine,
    Proposal,
    Request,
    SingleRun,
    run_model,
)
from infcomp.nn.network import DefensiveNetwork, InferenceNetwork
from infcomp.runtime import Messenger, Site, Trace, sum_rightmost


class PriorProposal:
    """The prior as proposal (likelihood weighting): ``log w = log p(y | x)`` + factors."""

    label = ""

    def run(self, job: Job, request: Request) -> SingleRun:
        values = None if not request.values else replay(trace=_trace_of(request.values))
        return SingleRun(run_model(job, request, values), None)

    def log_prob(self, batch: JointBatch, job: Job) -> Tensor:
        """The latent sites' prior log density (it has no parameters to train)."""
        return torch.cat([group.log_prob_sum(("sample",)) for group in batch.traces])

    def __repr__(self) -> str:
        return "PriorProposal()"


class ProgramProposal:
    """A guide: a function or ``nn.Module`` called as
    ``guide(*args, observations=data, **kwargs)`` that samples every latent site of the
    model. Its values are replayed into the model: ``log w = log p(x, y) - log q(x)``.

    For scoring simulations it runs on a whole group at once when it broadcasts over
    a leading batch dimension; one written for a single trace is detected (with a
    one-time notice) and called trace by trace.
    """

    def __init__(self, guide: Program, vectorize: bool | None = None) -> None:
        self.guide = guide
        self.label = f" with guide {program_name(guide)}"
        self._scoring = ParticleEngine(
            Job(guide, PriorProposal()), vectorize, what=f"guide {program_name(guide)}"
        )

    @property
    def vectorize(self) -> bool | None:
        """Whether the guide is scored on whole groups of simulations (True), trace by
        trace (False), or not yet decided (None)."""
        return self._scoring.vectorize

    def run(self, job: Job, request: Request) -> SingleRun:
        batch_shape, probe, data = request.batch_shape, request.probe, request.data
        if request.monitor is not None or request.values:
            # Sequential Monte Carlo: the guide runs as the model needs its values, and
            # again after each resampling, so its later values follow the new past.
            values = GuideValues(self.guide, job, request)
            if request.monitor is not None:
                request.monitor.watch(values)
            return SingleRun(run_model(job, request, values, check_latents=True), values.trace)
        with trace(batch_ndim=len(batch_shape)) as tracer:
            if batch_shape:
                assert probe is not None and probe.proposal_trace is not None
                natural = particles.natural_shapes_of(probe.proposal_trace)
                with particles(batch_shape=batch_shape, natural_shapes=natural):
                    self.guide(*job.args, observations=data, **job.kwargs)
            else:
                self.guide(*job.args, observations=data, **job.kwargs)
        model_trace = run_model(job, request, replay(trace=tracer.trace), check_latents=True)
        check_guide(model_trace, tracer.trace)
        return SingleRun(model_trace, tracer.trace)

    def log_prob(self, batch: JointBatch, job: Job) -> Tensor:
        """``log q(x_i; y_i)`` with the simulated values replayed into the guide, so that
        gradients reach its parameters; a GuideError where q misses a simulated value."""
        engine = self._scoring.with_arguments(job.args, job.kwargs)
        self._scoring = engine
        return torch.cat(
            [engine.replay(group, size, _score) for group, size in zip(batch.traces, batch.sizes)]
        )

    def __repr__(self) -> str:
        return f"ProgramProposal({program_name(self.guide)})"


@dataclasses.dataclass(frozen=True)
class NetworkProposal:
    """An :class:`~infcomp.nn.InferenceNetwork` proposing each latent site as the model
    reaches it; ``defensive = ε > 0`` mixes each proposal with its prior,
    ``(1 - ε) q + ε p``, which bounds each site's weight factor by 1/ε."""

    network: InferenceNetwork
    defensive: float = 0.0
    label = ""
    #: Many data sets run in groups of about this many particles (see the engine).
    group_rows = GROUP_ROWS

    def __post_init__(self) -> None:
        if not 0 <= self.defensive < 1:
            raise ValueError(f"the defensive weight must lie in [0, 1), got {self.defensive}")

    _fixed: dict[int, tuple[Job, dict[str, Tensor]]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def run(self, job: Job, request: Request) -> SingleRun:
        batch_ndim = len(request.batch_shape)
        data_batch_ndim = max(batch_ndim - 1, 0)
        observations = dict(request.data)
        missing = [name for name in self.network.observations if name not in observations]
        if missing:
            # Observations fixed in the program (observe(..., value=y)) are data too: the
            # network saw them simulated in training and must see the value used here.
            lead = next(iter(request.data.values())).shape[:data_batch_ndim] if request.data else ()
            for name, value in self._fixed_observations(job).items():
                if name in missing:
                    observations[name] = value.expand(torch.Size(lead) + value.shape)
        for name, value in observations.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ModelError(
                    f"observe site {name!r}: the data hold NaN or infinite values, which "
                    f"the inference network cannot condition on"
                )
        proposer = self.network.proposer(
            observations, request.batch_shape, data_batch_ndim, self.defensive
        )
        handler = propose(proposer=proposer, batch_ndim=batch_ndim, values=request.values)
        if request.monitor is not None:
            request.monitor.watch(handler)
        return SingleRun(run_model(job, request, handler), handler.trace)

    def _fixed_observations(self, job: Job) -> dict[str, Tensor]:
        """The values of observe sites that a plain run of the program sets itself (with
        ``value=``): one run of the program from its prior, cached for the last job, that leaves
        the global random state untouched."""
        cached = self._fixed.get(id(job))
        if cached is None or cached[0] is not job:
            with untouched_random_state(), trace() as tracer:
                job.call()
            values = {n: s.value for n, s in tracer.trace.sites.items() if s.kind == "observe"}
            cached = (job, {n: v for n, v in values.items() if v is not None})
            self._fixed.clear()  # the last job's only: a call's particles share one job
            self._fixed[id(job)] = cached
        return cached[1]

    def log_prob(self, batch: JointBatch, job: Job) -> Tensor:
        """``log q(x_i; y_i)`` by teacher forcing through the network, site by site."""
        return self.network.log_prob_groups(batch.traces)


class GuideValues(Messenger):
    """A guide's values for the model's latent sites in a run whose particles may be
    resampled at its observe statements (sequential Monte Carlo).

    The guide runs (batched over the particles, hidden from the model's handlers) when
    the model first needs one of its values, and again when the model needs one after a
    resampling (:meth:`reindex`), replaying the values the model has taken so far (and
    ``request.values``, a particle's past), so that its later values are drawn given
    the resampled past. That needs a guide that samples the latent sites in the model's
    order: a guide that draws a new site before a replayed one is a GuideError. The
    guide's sites that the model reached are recorded in :attr:`trace` (for log q).
    """

    def __init__(self, guide: Program, job: Job, request: Request) -> None:
        super().__init__()
        self.guide, self.job, self.request = guide, job, request
        self.trace = Trace(len(request.batch_shape))
        self.fixed = dict(request.values or {})
        self.source: Trace | None = None

    def process_message(self, site: Site) -> None:
        if site.kind != "sample" or site.value is not None:
            return
        if self.source is None or site.name not in self.source:
            self.source = self._run_guide()
        if site.name not in self.source:
            raise GuideError(
                f"the guide did not sample latent site {site.name!r} of the model (which "
                f"samples it from {site.fn}); the guide must sample every latent site"
            )
        guide_site = self.source[site.name]
        site.value = guide_site.value
        self.trace.add(guide_site)

    def reindex(self, index: Tensor) -> None:
        """The particles were resampled: the guide's values not yet taken are stale (the
        taken ones are the model's, resampled with it)."""
        self.source = None

    def _run_guide(self) -> Trace:
        request, job = self.request, self.job
        values = {**self.fixed, **{name: s.value for name, s in self.trace.sites.items()}}
        with ExitStack() as stack:
            stack.enter_context(block())  # the guide's sites are not the model's
            tracer = stack.enter_context(trace(batch_ndim=len(request.batch_shape)))
            stack.enter_context(_InOrder(values))  # type: ignore[arg-type]
            if request.batch_shape:
                assert request.probe is not None and request.probe.proposal_trace is not None
                natural = particles.natural_shapes_of(request.probe.proposal_trace)
                stack.enter_context(
                    particles(batch_shape=request.batch_shape, natural_shapes=natural)
                )
            self.guide(*job.args, observations=request.data, **job.kwargs)
        return tracer.trace


class _InOrder(Messenger):
    """Replay ``values`` into a guide, which must sample them before any new site."""

    def __init__(self, values: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.values = values
        self.new: str | None = None

    def process_message(self, site: Site) -> None:
        if site.kind != "sample":
            return
        if site.name not in self.values:
            self.new = self.new or site.name
            return
        if self.new is not None:
            raise GuideError(
                f"the guide samples {self.new!r} before {site.name!r}, which the model "
                f"samples first: for sequential Monte Carlo a guide must sample the latent "
                f"sites in the model's order"
            )
        site.value = self.values[site.name]


def _trace_of(values: Mapping[str, Tensor]) -> Trace:
    """A trace of latent sites with the given values (for :class:`replay`)."""
    result = Trace()
    for name, value in values.items():
        result.add(Site(name, "sample", None, value))
    return result


def as_proposal(guide: Any, vectorize: bool | None = None) -> Proposal:
    """The proposal for what a user passed as ``guide``: None is the prior, an
    :class:`~infcomp.nn.InferenceNetwork` a :class:`NetworkProposal`, a
    :class:`~infcomp.CSIS` its trained proposal (:meth:`~infcomp.CSIS.compiled_proposal`),
    any other callable a :class:`ProgramProposal`; a proposal is returned as it is."""
    if guide is None:
        return PriorProposal()
    if isinstance(guide, (PriorProposal, ProgramProposal, NetworkProposal)):
        return guide
    compiled = getattr(guide, "compiled_proposal", None)
    if callable(compiled):  # a CSIS (not imported here: it imports this module)
        return compiled()  # type: ignore[no-any-return]
    if isinstance(guide, InferenceNetwork):
        return NetworkProposal(guide)
    if isinstance(guide, DefensiveNetwork):  # deprecated: InferenceNetwork.defensive
        return NetworkProposal(guide.network, guide.epsilon)
    if not callable(guide):
        raise TypeError(
            f"a guide must be callable (a function or an nn.Module) or a CSIS, got {guide!r}"
        )
    return ProgramProposal(guide, vectorize)


def engine_for(
    model: Program,
    guide: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    vectorize: bool | None = None,
    workers: int = 1,
) -> ParticleEngine:
    """The particle engine that runs ``model`` with what a user passed as ``guide``."""
    job = Job(model, as_proposal(guide, vectorize), tuple(args), dict(kwargs or {}))
    return ParticleEngine(job, vectorize, workers)


def check_guide(model_trace: Trace, guide_trace: Trace) -> None:
    """Raise :class:`GuideError` unless the guide sampled exactly the model's latent sites."""
    for name, site in guide_trace.sites.items():
        if site.kind != "sample":
            raise GuideError(
                f"the guide has {site.kind} site {name!r}; a guide may only sample the "
                f"model's latent sites"
            )
    latent = model_trace.names("sample")
    missing = [name for name in latent if name not in guide_trace]
    if missing:
        name = missing[0]
        invented = [n for n in guide_trace if n not in model_trace]
        hint = f"; it samples {invented}, which the model does not have" if invented else ""
        raise GuideError(
            f"the guide did not sample latent site {name!r} of the model (which samples it "
            f"from {model_trace[name].fn}); the guide must sample every latent site{hint}"
        )
    for name in guide_trace:
        if name in model_trace and model_trace[name].kind == "observe":
            raise GuideError(
                f"the guide samples {name!r}, which the model observes; a guide proposes "
                f"latent sites only"
            )
        if name not in model_trace or model_trace[name].kind != "sample":
            raise GuideError(
                f"the guide samples {name!r}, which is not a latent site of the model; the "
                f"model's latent sites are {latent}"
            )


def _score(joint: Trace, guide_trace: Trace, batch_ndim: int) -> Tensor:
    """Check the guide's sites against the simulation's and return log q per simulation."""
    check_guide(joint, guide_trace)
    if batch_ndim == 0:
        for name, site in guide_trace.sites.items():
            value, fn = joint[name].value, site.fn
            assert value is not None and fn is not None
            expected = fn.batch_shape + fn.event_shape
            if value.shape != expected:
                raise GuideError(
                    f"guide site {name!r}: the model's value has shape {tuple(value.shape)} "
                    f"but the guide's {type(fn).__name__} has shape {tuple(expected)}"
                )
    log_q = guide_trace.log_prob_sum()
    if not bool(torch.isfinite(log_q).all()):
        bad = []
        for name, site in guide_trace.sites.items():
            count = int((~torch.isfinite(sum_rightmost(site.log_prob(), batch_ndim))).sum())
            if count:
                bad.append(f"{name!r} ({count} of {log_q.numel()})")
        raise GuideError(
            f"the guide's log density is not finite at sites {', '.join(bad)} for simulated "
            f"values: its distributions must cover the prior's support"
        )
    return log_q
