"""Importance sampling: ``x_i ~ q(x; y)``, ``log w_i = log p(x_i, y) - log q(x_i; y)``.

The proposal q is the model's prior (likelihood weighting, ``log w_i = log p(y | x_i)``),
a guide, or an inference network (:mod:`infcomp.inference.proposals`); the particles
run through the :class:`~infcomp.inference.particles.ParticleEngine`, vectorized when
the model broadcasts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import Tensor

from infcomp._deprecation import renamed_argument, warn_renamed
from infcomp.errors import InferenceWarning
from infcomp.inference.common import Program, warn_user
from infcomp.inference.particles import ParticleRun, as_data, data_argument, stack_datasets
from infcomp.inference.proposals import engine_for
from infcomp.posterior import BatchPosterior, Posterior

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from infcomp.inference.particles import ParticleEngine

#: The number of particles when none is given.
DEFAULT_NUM_PARTICLES = 1000


class Options(TypedDict, total=False):
    """The keyword options of :func:`importance`, :func:`importance_batch` and
    :func:`~infcomp.importance_stream` (documented in :func:`importance`)."""

    guide: Any
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] | None
    vectorize: bool | None
    workers: int
    device: torch.device | str | None
    observations: Any
    num_samples: int | None


OPTIONS = sorted(Options.__annotations__)


def importance(
    model: Program,
    data: Mapping[str, Any] | None = None,
    num_particles: int | None = None,
    **options: Unpack[Options],
) -> Posterior:
    """Importance sampling of ``model`` given ``data``.

    Draws ``x_i ~ q(x; y)`` for i = 1..N and weighs each by
    ``log w_i = log p(x_i, y) - log q(x_i; y)``; with no guide q is the prior and
    ``log w_i = log p(y | x_i)`` (plus any factors). Returns a :class:`Posterior`:
    ``E[f] ≈ Σ_i softmax(log w)_i f(x_i)``, ``log Ẑ = logsumexp(log w) - log N``.
    Warns (:class:`~infcomp.errors.InferenceWarning`) when the result looks unreliable:
    NaN or infinite weights, tiny ESS/N, a high Pareto k-hat.

    Args:
        model: the program; its ``observe`` sites take their values from ``data``.
        data: observations by site name (``observations=`` is Pyro's keyword for it).
        num_particles: the number of particles N (default 1000; ``num_samples=`` is its
            deprecated name).
        guide: the proposal: None (the prior), a guide called as
            ``guide(*args, observations=data, **kwargs)`` that samples exactly the model's
            latent sites, an inference network, or a trained :class:`~infcomp.CSIS`
            (its :meth:`~infcomp.CSIS.compiled_proposal`).
        args, kwargs: arguments of the model (and the guide).
        vectorize: ``True`` runs all particles as one batch (the model must broadcast
            over leading particle dimensions), ``False`` one by one, ``None`` tries the
            batch and falls back, with a one-time notice, when the model's control flow
            depends on sampled values.
        workers: processes for the particle-by-particle path, each with its own random
            stream seeded from this process's generator; model and guide must then be
            picklable. The batched path ignores it.
        device: where the observations go (the model's device, e.g. ``"cuda"``).

    Raises:
        ModelError: unknown or missing observations, values of the wrong shape or
            outside the support (naming the site); GuideError: a guide that misses,
            invents or observes a site.

    Example:
        >>> import torch
        >>> import infcomp as ic
        >>> from infcomp.examples.gaussian import gaussian
        >>> _ = torch.manual_seed(0)
        >>> post = ic.importance(gaussian, {"x1": 8.0, "x2": 9.0}, num_particles=100_000)
        >>> round(float(post.mean("z")), 1)   # exact: 7.25
        7.2
    """
    engine, observed, count = prepare(model, data, num_particles, options, batched=False)
    with torch.no_grad():
        run = engine.run(observed, count)
    posterior = Posterior(
        run.traces, run.sizes, run.log_weights, run.nonfinite_sites, run.invalid_sites
    )
    for problem in posterior.problems():
        warn_user(problem, InferenceWarning)
    return posterior


def importance_batch(
    model: Program,
    datasets: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    num_particles: int | None = None,
    **options: Unpack[Options],
) -> BatchPosterior:
    """Importance sampling for many data sets at once: B × N particles in one call.

    The weights of :func:`importance`, ``log w_ib = log p(x_ib, y_b) - log q(x_ib; y_b)``,
    for each data set b, with particles of shape ``(N, B)``: a model and guide that
    broadcast run once for all. Returns a :class:`BatchPosterior` with per-data-set ESS,
    ``log Ẑ`` and its error, k-hat and moments, and each data set's :class:`Posterior`
    on request. Warns once, summarizing the data sets whose results look unreliable.

    Args:
        datasets: a list of observation dicts, or one dict whose values stack the data
            sets along a leading dimension of size B.
        Others: as in :func:`importance`.

    Example:
        >>> import torch
        >>> import infcomp as ic
        >>> from infcomp.examples.gaussian import gaussian
        >>> data = {"x1": torch.randn(1000), "x2": torch.randn(1000)}  # 1000 data sets
        >>> batch = ic.importance_batch(gaussian, data, num_particles=1000)
        >>> batch.log_evidence.shape, batch.mean("z").shape
        (torch.Size([1000]), torch.Size([1000]))
    """
    engine, observed, count = prepare(model, datasets, num_particles, options, batched=True)
    with torch.no_grad():
        run = engine.run(observed, count, batched_data=True)
    if run.per_dataset is not None:
        posteriors = [
            Posterior(r.traces, r.sizes, r.log_weights, r.nonfinite_sites, r.invalid_sites)
            for r in run.per_dataset
        ]
        batch = BatchPosterior(run.log_weights, posteriors=posteriors)
    else:
        batch = BatchPosterior(run.log_weights, trace=run.traces[0])
    problems = batch.problems()
    if problems:
        warn_user(problems, InferenceWarning)
    return batch


def prepare(
    model: Program,
    data: Any,
    num_particles: int | None,
    options: Options,
    batched: bool,
    default: int = DEFAULT_NUM_PARTICLES,
) -> tuple[ParticleEngine, dict[str, Tensor], int]:
    """The engine, the observations as tensors and N for an importance-sampling call."""
    unknown = sorted(set(options) - set(Options.__annotations__))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}; the options are {OPTIONS}")
    data = data_argument(data, options.get("observations"))
    count = renamed_argument(
        "num_samples", options.get("num_samples"), "num_particles", num_particles
    )
    engine = engine_for(
        model,
        options.get("guide"),
        options.get("args", ()),
        options.get("kwargs"),
        options.get("vectorize"),
        options.get("workers", 1),
    )
    device = options.get("device")
    if batched:
        observed = stack_datasets({} if data is None else data, device)
    else:
        observed = as_data(data, device)
    return engine, observed, default if count is None else count


def run_particles(
    model: Program,
    data: Mapping[str, Any] | None,
    num_particles: int | None = None,
    *,
    batched_data: bool = False,
    **options: Unpack[Options],
) -> ParticleRun:
    """Deprecated: use ``engine_for(model, guide, ...).run(data, num_particles)`` (see
    :class:`~infcomp.inference.particles.ParticleEngine`)."""
    warn_renamed("infcomp.run_particles", "infcomp.inference.engine_for(...).run(...)")
    engine, observed, count = prepare(model, data, num_particles, options, batched_data)
    return engine.run(observed, count, batched_data=batched_data)
