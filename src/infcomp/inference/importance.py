"""Importance sampling, vectorized over particles.

The proposal is the model's prior (likelihood weighting) or a guide: a function or
``nn.Module`` called as ``guide(*args, observations=data, **kwargs)`` that samples the
model's latent sites. Particles run as a leading batch dimension when the model and the
guide broadcast; otherwise one by one.
"""

from __future__ import annotations

import multiprocessing
import pickle
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
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
from infcomp.posterior import BatchPosterior, Posterior
from infcomp.runtime import Trace, group_traces, sum_rightmost


@dataclass
class ParticleRun:
    """The particles of one importance-sampling run, before any summary.

    With one data set, particles have shape ``(N,)``; with a batch of B data sets
    (``batched_data``), ``(N, B)``: N particles for each data set.

    Attributes:
        traces: model traces whose values carry the particle dimensions, one per group
            of particles that share a structure (one group when vectorized).
        sizes: the number of particles in each group.
        log_weights: ``log w = log p(x, y) - log q(x)``, float64, shape ``(N,)`` in
            group order, or ``(N, B)``.
        log_proposal: ``log q(x)`` of a guide or network (None with the prior as
            proposal, whose weights are computed without it), shaped as ``log_weights``.
        vectorized: whether the particles ran as one batch.
        nonfinite_sites: per site, how many particles got a NaN or +inf log density
            (filled only when some log weight is NaN or +inf).
        per_dataset: with batched data run trace by trace, one run per data set (then
            ``traces`` is empty and ``log_weights`` stacks theirs).
    """

    traces: list[Trace]
    sizes: list[int]
    log_weights: Tensor
    log_proposal: Tensor | None
    vectorized: bool
    nonfinite_sites: dict[str, int]
    per_dataset: list[ParticleRun] | None = None


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
    workers: int = 1,
    device: torch.device | str | None = None,
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
        workers: processes for the particle-by-particle path (each with its own random
            stream seeded from this process's generator); model and guide must then be
            picklable. The batched path ignores it.
        device: where the observations go (the model's and the guide's device, e.g.
            ``"cuda"``); by default they stay where they are (numbers on the CPU).

    Example:
        >>> post = importance(gaussian, {"x1": 8.0, "x2": 9.0}, num_samples=100_000)
        >>> post.mean("z")  # ≈ 7.25
    """
    with torch.no_grad():
        run = run_particles(
            model,
            data,
            num_samples,
            guide=guide,
            args=args,
            kwargs=kwargs,
            vectorize=vectorize,
            workers=workers,
            device=device,
        )
    posterior = Posterior(run.traces, run.sizes, run.log_weights, run.nonfinite_sites)
    for problem in posterior.problems():
        warnings.warn(problem, InferenceWarning, stacklevel=2)
    return posterior


def importance_batch(
    model: Program,
    datasets: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    num_samples: int = 1000,
    *,
    guide: Program | ProposalFactory | None = None,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    vectorize: bool | None = None,
    workers: int = 1,
    device: torch.device | str | None = None,
) -> BatchPosterior:
    """Importance sampling for many data sets at once: B × N particles in one call.

    The same weights as :func:`importance` (``log w = log p(x, y_b) - log q(x; y_b)``),
    for each data set b, with particles of shape ``(N, B)``: a model and guide that
    broadcast run once for all. Returns a :class:`BatchPosterior` with per-data-set ESS,
    ``log Ẑ`` and its error, k-hat and moments, and each data set's :class:`Posterior`
    on request. Warns once, summarizing data sets whose results look unreliable.

    Args:
        datasets: a list of observation dicts, or one dict whose values stack the data
            sets along a leading dimension of size B.
        Others: as in :func:`importance`.

    Example:
        >>> data = {"x1": torch.randn(1000), "x2": torch.randn(1000)}  # 1000 data sets
        >>> batch = importance_batch(gaussian, data, num_samples=1000)
        >>> batch.log_evidence.shape, batch.mean("z").shape   # (1000,), (1000,)
    """
    with torch.no_grad():
        run = run_particles(
            model,
            stack_datasets(datasets),
            num_samples,
            guide=guide,
            args=args,
            kwargs=kwargs,
            vectorize=vectorize,
            batched_data=True,
            workers=workers,
            device=device,
        )
    if run.per_dataset is not None:
        posteriors = [
            Posterior(r.traces, r.sizes, r.log_weights, r.nonfinite_sites) for r in run.per_dataset
        ]
        batch = BatchPosterior(run.log_weights, posteriors=posteriors)
    else:
        batch = BatchPosterior(run.log_weights, trace=run.traces[0])
    problems = batch.problems()
    if problems:
        warnings.warn(problems, InferenceWarning, stacklevel=2)
    return batch


def stack_datasets(datasets: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
    """Data sets as one dict whose values share a leading dimension B (checked)."""
    if isinstance(datasets, Mapping):
        stacked = as_data(datasets)
    else:
        if not datasets:
            raise ModelError("no data sets given")
        sets = [as_data(d) for d in datasets]
        names = set(sets[0])
        for index, d in enumerate(sets):
            if set(d) != names:
                raise ModelError(
                    f"data set {index} names {sorted(d)}, data set 0 names {sorted(names)}"
                )
        try:
            stacked = {name: torch.stack([d[name] for d in sets]) for name in sets[0]}
        except RuntimeError as error:
            raise ModelError(f"data sets of different shapes cannot be batched: {error}") from error
    sizes = {name: (value.shape[0] if value.dim() else None) for name, value in stacked.items()}
    if not sizes or None in sizes.values() or len(set(sizes.values())) != 1:
        raise ModelError(
            f"batched data need one leading dimension (the data set) of the same size "
            f"for every observation; got shapes "
            f"{ {name: tuple(v.shape) for name, v in stacked.items()} }"
        )
    return stacked


def run_particles(
    model: Program,
    data: Mapping[str, Any] | None,
    num_samples: int,
    *,
    guide: Program | ProposalFactory | None = None,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    vectorize: bool | None = None,
    batched_data: bool = False,
    workers: int = 1,
    device: torch.device | str | None = None,
    probe_cache: dict[str, Any] | None = None,
) -> ParticleRun:
    """Run model and proposal for ``num_samples`` particles and weigh them.

    The building block of :func:`importance` and :func:`importance_batch` (which add
    ``no_grad`` and the posterior); gradients flow through the log weights when the
    caller allows them (reweighted wake-sleep). With ``batched_data`` every observation
    has a leading data-set dimension B and the particles have shape ``(N, B)``.
    ``probe_cache`` is a dict a caller keeps across calls on data of one structure
    (minibatches of one data collection): the unbatched probe run that validates the
    data and finds each site's shape is then done once.
    """
    check_positive_int("num_samples", num_samples)
    check_positive_int("workers", workers)
    vectorize = check_vectorize(vectorize)
    observations = stack_datasets(data or {}) if batched_data else as_data(data)
    if device is not None:
        observations = {name: value.to(device) for name, value in observations.items()}
    kwargs = dict(kwargs or {})

    # An unbatched probe run (on the first data set): it validates the data against the
    # model (names, shapes, supports) and the guide against the model, with errors that
    # name the site, and gives each site's natural shape, which the batched run extends
    # by particles (and data sets).
    first = (
        {name: value[0] for name, value in observations.items()} if batched_data else observations
    )
    probe = probe_cache.get("probe") if probe_cache is not None else None
    if probe is None:
        with untouched_random_state(), torch.no_grad():
            probe = _run_single(model, guide, first, args, kwargs)
        if probe_cache is not None:
            probe_cache["probe"] = probe
    if batched_data:
        datasets = next(iter(observations.values())).shape[0]
        batch_shape: tuple[int, ...] = (num_samples, datasets)
    else:
        batch_shape = (num_samples,)
    run, _ = batched_or_sequential(
        f"model {program_name(model)}" + (f" with guide {program_name(guide)}" if guide else ""),
        vectorize,
        lambda: _run_vectorized(model, guide, observations, args, kwargs, batch_shape, probe),
        lambda: _run_each_dataset(
            model, guide, observations, args, kwargs, batch_shape, probe, workers
        ),
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
    # Duck-typed: isinstance against a runtime-checkable protocol costs ~25 µs a call.
    factory: ProposalFactory | None = guide if _is_factory(guide) else None  # type: ignore[assignment]
    if guide is not None and factory is None:
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
            guide(*args, observations=data, **kwargs)  # type: ignore[operator]
        guide_trace = guide_tracer.trace
    with ExitStack() as stack:
        model_tracer = stack.enter_context(trace(batch_ndim=batch_ndim))
        if guide_trace is not None:
            stack.enter_context(replay(trace=guide_trace, validate=not batched))
        conditioner = stack.enter_context(condition(data=data, validate=not batched))
        proposal = None
        if factory is not None:
            data_batch_ndim = max(batch_ndim - 1, 0)
            proposer = factory.proposer(data, batch_shape, data_batch_ndim)
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


def _is_factory(guide: object) -> bool:
    return callable(getattr(guide, "proposer", None))


def _log_weight(run: _SingleRun) -> tuple[Tensor, Tensor | None]:
    """``(log w, log q)``; with the prior as proposal ``(log p(y | x) + factors, None)``."""
    if run.guide_trace is None:
        # Prior as proposal: log p(x) - log q(x) = 0 for every latent site.
        return run.model_trace.log_prob_sum(("observe", "factor")), None
    log_proposal = run.guide_trace.log_prob_sum()
    return run.model_trace.log_prob_sum() - log_proposal, log_proposal


def _run_vectorized(
    model: Program,
    guide: Program | ProposalFactory | None,
    data: dict[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    batch_shape: tuple[int, ...],
    probe: _SingleRun,
) -> ParticleRun:
    run = _run_single(model, guide, data, args, kwargs, batch_shape, probe)
    _check_data_used(data, [probe.used_data, run.used_data], probe.model_trace)
    log_weights, log_proposal = _log_weight(run)
    log_weights = torch.broadcast_to(log_weights, batch_shape)
    if log_proposal is not None:
        log_proposal = torch.broadcast_to(log_proposal, batch_shape)
    model_trace = run.model_trace
    for site in model_trace.sites.values():
        # Observed values carry no particle dimension; give them one (a view) so that
        # every value of the posterior's trace is indexed by particle.
        if site.kind == "observe" and site.value is not None and site.fn is not None:
            shape = site.fn.batch_shape + site.fn.event_shape
            site.value = site.value.expand(shape)
    bad = not _all_finite_or_zero(log_weights)
    nonfinite = _nonfinite_sites([run], len(batch_shape)) if bad else {}
    return ParticleRun([model_trace], [batch_shape[0]], log_weights, log_proposal, True, nonfinite)


def _run_each_dataset(
    model: Program,
    guide: Program | ProposalFactory | None,
    data: dict[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    batch_shape: tuple[int, ...],
    probe: _SingleRun,
    workers: int,
) -> ParticleRun:
    """Particle by particle; with batched data, one data set after another."""
    num_samples = batch_shape[0]
    if len(batch_shape) == 1:
        return _run_sequential(model, guide, data, args, kwargs, num_samples, probe, workers)
    runs = [
        _run_sequential(
            model,
            guide,
            {n: v[b] for n, v in data.items()},
            args,
            kwargs,
            num_samples,
            probe,
            workers,
        )
        for b in range(batch_shape[1])
    ]
    log_proposals = [r.log_proposal for r in runs]
    nonfinite: dict[str, int] = {}
    for r in runs:
        for name, count in r.nonfinite_sites.items():
            nonfinite[name] = nonfinite.get(name, 0) + count
    return ParticleRun(
        [],
        [],
        torch.stack([r.log_weights for r in runs], dim=1),
        None if log_proposals[0] is None else torch.stack(log_proposals, dim=1),  # type: ignore[arg-type]
        False,
        nonfinite,
        per_dataset=runs,
    )


def _run_sequential(
    model: Program,
    guide: Program | ProposalFactory | None,
    data: dict[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    num_samples: int,
    probe: _SingleRun,
    workers: int = 1,
) -> ParticleRun:
    if workers > 1 and num_samples > 1:
        return _run_in_workers(model, guide, data, args, kwargs, num_samples, workers)
    runs = [_run_single(model, guide, data, args, kwargs) for _ in range(num_samples)]
    _check_data_used(data, [probe.used_data] + [run.used_data for run in runs], probe.model_trace)
    weights = [_log_weight(run) for run in runs]
    log_weights = torch.stack([w for w, _ in weights])
    traces, sizes, order = group_traces([run.model_trace for run in runs], distributions=False)
    log_proposal = None
    if weights[0][1] is not None:
        log_proposal = torch.stack([q for _, q in weights])[order]  # type: ignore[misc]
    nonfinite = _nonfinite_sites(runs, 0) if not _all_finite_or_zero(log_weights) else {}
    return ParticleRun(traces, sizes, log_weights[order], log_proposal, False, nonfinite)


def _run_in_workers(
    model: Program,
    guide: Program | ProposalFactory | None,
    data: dict[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    num_samples: int,
    workers: int,
) -> ParticleRun:
    """The particle-by-particle path split over worker processes.

    Each worker gets its own random stream, seeded from the parent's generator (so a
    seeded parent gives reproducible results) and runs its share of particles; the runs
    are concatenated. Processes are spawned, so model and guide must be picklable
    (defined at module level).
    """
    shares = [num_samples // workers + (i < num_samples % workers) for i in range(workers)]
    shares = [share for share in shares if share > 0]
    seeds = torch.randint(0, 2**62, (len(shares),)).tolist()
    try:
        pickle.dumps((model, guide, args, kwargs))
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise ModelError(
            f"workers > 1 runs the model in other processes, so model, guide and arguments "
            f"must be picklable (defined at module level): {error}"
        ) from error
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(shares), mp_context=context) as pool:
        futures = [
            pool.submit(_worker, model, guide, data, args, kwargs, share, seed)
            for share, seed in zip(shares, seeds)
        ]
        runs = [future.result() for future in futures]
    nonfinite: dict[str, int] = {}
    for run in runs:
        for name, count in run.nonfinite_sites.items():
            nonfinite[name] = nonfinite.get(name, 0) + count
    log_proposals = [run.log_proposal for run in runs]
    return ParticleRun(
        [trace for run in runs for trace in run.traces],
        [size for run in runs for size in run.sizes],
        torch.cat([run.log_weights for run in runs]),
        None if log_proposals[0] is None else torch.cat(log_proposals),  # type: ignore[arg-type]
        False,
        nonfinite,
    )


def _worker(
    model: Program,
    guide: Program | ProposalFactory | None,
    data: dict[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    num_samples: int,
    seed: int,
) -> ParticleRun:
    """One worker's share of the particle-by-particle path (in a spawned process)."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    with torch.no_grad():
        probe = _run_single(model, guide, data, args, kwargs)
        return _run_sequential(model, guide, data, args, kwargs, num_samples, probe)


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
