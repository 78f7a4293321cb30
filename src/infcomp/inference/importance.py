"""Importance sampling, vectorized over particles.

The proposal is the model's prior (likelihood weighting) or a guide: a function or
``nn.Module`` called as ``guide(*args, observations=data, **kwargs)`` that samples the
model's latent sites. Particles run as a leading batch dimension when the model and the
guide broadcast; otherwise one by one.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from infcomp.errors import GuideError, InferenceWarning, ModelError
from infcomp.handlers import (
    ProposalFactory,
    as_data,
    condition,
    particles,
    propose,
    replay,
    trace,
)
from infcomp.inference.common import (
    Program,
    batched_or_sequential,
    check_positive_int,
    check_vectorize,
    program_name,
    untouched_random_state,
)
from infcomp.posterior import Posterior
from infcomp.runtime import Trace, group_traces, sum_rightmost


@dataclass
class ParticleRun:
    """The particles of one importance-sampling run, before any summary.

    Attributes:
        traces: model traces with one leading particle dimension, one per group of
            particles that share a structure (one group when vectorized).
        sizes: the number of particles in each group.
        log_weights: ``log w``, shape ``(N,)``, float64, in group order.
        vectorized: whether the particles ran as one batch.
        nonfinite_sites: per site, how many particles got a NaN or +inf log density
            (filled only when some log weight is NaN or +inf).
    """

    traces: list[Trace]
    sizes: list[int]
    log_weights: Tensor
    vectorized: bool
    nonfinite_sites: dict[str, int]


@dataclass
class _SingleRun:
    model_trace: Trace
    guide_trace: Trace | None
    used_data: set[str]


def importance(
    model: Program,
    data: Mapping[str, Any] | None = None,
    num_samples: int = 1000,
    *,
    guide: Program | ProposalFactory | None = None,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    vectorize: bool | None = None,
) -> Posterior:
    """Importance sampling of ``model`` given ``data``.

    Draws ``x_i ~ q(x; y)`` for i = 1..N and weighs each by
    ``log w_i = log p(x_i, y) - log q(x_i; y)``. With no guide, q is the prior and
    ``log w_i = log p(y | x_i)`` (plus any factors). Returns a :class:`Posterior`:
    ``E[f] ≈ sum_i softmax(log w)_i f(x_i)``, ``log Ẑ = logsumexp(log w) - log N``.
    Warns (:class:`~infcomp.errors.InferenceWarning`) when the result looks
    unreliable: NaN or infinite weights, tiny ESS/N, or a high Pareto k-hat.

    Args:
        model: the program; its ``observe`` sites take their values from ``data``.
        data: observations by observe-site name.
        num_samples: the number of particles N.
        guide: the proposal, called as ``guide(*args, observations=data, **kwargs)``;
            it must sample exactly the model's latent sites. ``None``: the prior.
        args, kwargs: arguments of the model (and the guide).
        vectorize: ``True`` runs all particles as one batch (the model must broadcast
            over leading particle dimensions), ``False`` runs them one by one, ``None``
            tries the batch and falls back, with a one-time notice, when the model's
            control flow depends on sampled values.

    Example:
        >>> post = importance(gaussian, {"x1": 8.0, "x2": 9.0}, num_samples=100_000)
        >>> post.mean("z")  # ≈ 7.25
    """
    with torch.no_grad():
        run = run_particles(
            model, data, num_samples, guide=guide, args=args, kwargs=kwargs, vectorize=vectorize
        )
    posterior = Posterior(run.traces, run.sizes, run.log_weights, run.nonfinite_sites)
    for problem in posterior.problems():
        warnings.warn(problem, InferenceWarning, stacklevel=2)
    return posterior


def run_particles(
    model: Program,
    data: Mapping[str, Any] | None,
    num_samples: int,
    *,
    guide: Program | ProposalFactory | None = None,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    vectorize: bool | None = None,
) -> ParticleRun:
    """Run model and proposal for ``num_samples`` particles and weigh them.

    The building block of :func:`importance` (which adds ``no_grad`` and the
    posterior); gradients flow through the log weights when the caller allows them.
    """
    check_positive_int("num_samples", num_samples)
    vectorize = check_vectorize(vectorize)
    observations = as_data(data)
    kwargs = dict(kwargs or {})

    # An unbatched probe run: it validates the data against the model (names, shapes,
    # supports) and the guide against the model, with errors that name the site, and
    # gives each site's natural shape, which the batched run extends by particles.
    with untouched_random_state():
        probe = _run_single(model, guide, observations, args, kwargs)
    run, _ = batched_or_sequential(
        f"model {program_name(model)}" + (f" with guide {program_name(guide)}" if guide else ""),
        vectorize,
        lambda: _run_vectorized(model, guide, observations, args, kwargs, num_samples, probe),
        lambda: _run_sequential(model, guide, observations, args, kwargs, num_samples, probe),
    )
    return run


def _run_single(
    model: Program,
    guide: Program | ProposalFactory | None,
    data: dict[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    batch_shape: tuple[int, ...] = (),
    probe: _SingleRun | None = None,
) -> _SingleRun:
    """One run of guide then model; batched over ``batch_shape`` when it is not empty.

    A :class:`~infcomp.handlers.ProposalFactory` guide (an inference network) proposes
    the latent sites during the model's run instead.
    """
    batched = bool(batch_shape)
    batch_ndim = len(batch_shape)
    guide_trace = None
    if guide is not None and not isinstance(guide, ProposalFactory):
        with ExitStack() as stack:
            guide_tracer = stack.enter_context(trace(batch_ndim=batch_ndim))
            if batched:
                assert probe is not None and probe.guide_trace is not None
                stack.enter_context(
                    particles(
                        batch_shape=batch_shape,
                        natural_shapes=particles.natural_shapes_of(probe.guide_trace),
                    )
                )
            guide(*args, observations=data, **kwargs)
        guide_trace = guide_tracer.trace
    with ExitStack() as stack:
        model_tracer = stack.enter_context(trace(batch_ndim=batch_ndim))
        if guide_trace is not None:
            stack.enter_context(replay(trace=guide_trace, validate=not batched))
        conditioner = stack.enter_context(condition(data=data, validate=not batched))
        proposal = None
        if isinstance(guide, ProposalFactory):
            proposer = guide.proposer(data, batch_shape)
            proposal = stack.enter_context(propose(proposer=proposer, batch_ndim=batch_ndim))
        if batched:
            assert probe is not None
            stack.enter_context(
                particles(
                    batch_shape=batch_shape,
                    natural_shapes=particles.natural_shapes_of(probe.model_trace),
                )
            )
        model_tracer.trace.return_value = model(*args, **kwargs)
    model_trace = model_tracer.trace
    if guide_trace is not None:
        check_guide(model_trace, guide_trace)
    if proposal is not None:
        guide_trace = proposal.trace
    return _SingleRun(model_trace, guide_trace, conditioner.used)


def _log_weight(run: _SingleRun) -> Tensor:
    if run.guide_trace is None:
        # Prior as proposal: log p(x) - log q(x) = 0 for every latent site.
        return run.model_trace.log_prob_sum(("observe", "factor"))
    return run.model_trace.log_prob_sum() - run.guide_trace.log_prob_sum()


def _run_vectorized(
    model: Program,
    guide: Program | ProposalFactory | None,
    data: dict[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    num_samples: int,
    probe: _SingleRun,
) -> ParticleRun:
    batch_shape = (num_samples,)
    run = _run_single(model, guide, data, args, kwargs, batch_shape, probe)
    _check_data_used(data, [probe.used_data, run.used_data], probe.model_trace)
    log_weights = torch.broadcast_to(_log_weight(run), batch_shape)
    model_trace = run.model_trace
    for site in model_trace.sites.values():
        # Observed values carry no particle dimension; give them one (a view) so that
        # every value of the posterior's trace is indexed by particle.
        if site.kind == "observe" and site.value is not None and site.fn is not None:
            shape = site.fn.batch_shape + site.fn.event_shape
            site.value = site.value.expand(shape)
    nonfinite = _nonfinite_sites([run], 1) if not _all_finite_or_zero(log_weights) else {}
    return ParticleRun([model_trace], [num_samples], log_weights, True, nonfinite)


def _run_sequential(
    model: Program,
    guide: Program | ProposalFactory | None,
    data: dict[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    num_samples: int,
    probe: _SingleRun,
) -> ParticleRun:
    runs = [_run_single(model, guide, data, args, kwargs) for _ in range(num_samples)]
    _check_data_used(data, [probe.used_data] + [run.used_data for run in runs], probe.model_trace)
    log_weights = torch.stack([_log_weight(run) for run in runs])
    traces, sizes, order = group_traces([run.model_trace for run in runs])
    ordered = log_weights[order]
    nonfinite = _nonfinite_sites(runs, 0) if not _all_finite_or_zero(log_weights) else {}
    return ParticleRun(traces, sizes, ordered, False, nonfinite)


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
        raise GuideError(
            f"the guide did not sample latent site {name!r} of the model (which samples it "
            f"from {model_trace[name].fn}); the guide must sample every latent site"
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


def _check_data_used(data: dict[str, Tensor], used: list[set[str]], model_trace: Trace) -> None:
    unknown = sorted(set(data) - set().union(*used))
    if unknown:
        raise ModelError(
            f"data names {unknown}, but the model has no such observe site; its observe "
            f"sites are {model_trace.names('observe')}"
        )


def _all_finite_or_zero(log_weights: Tensor) -> bool:
    return not bool((torch.isnan(log_weights) | torch.isposinf(log_weights)).any())


def _nonfinite_sites(runs: list[_SingleRun], batch_ndim: int) -> dict[str, int]:
    """How many particles got a NaN or +inf log density at each site (for reports)."""
    counts: dict[str, int] = {}
    for run in runs:
        for prefix, tr in (("", run.model_trace), ("guide ", run.guide_trace)):
            if tr is None:
                continue
            for name, site in tr.sites.items():
                log_density = sum_rightmost(site.log_prob(), batch_ndim)
                bad = int((torch.isnan(log_density) | torch.isposinf(log_density)).sum())
                if bad:
                    counts[prefix + name] = counts.get(prefix + name, 0) + bad
    return counts
