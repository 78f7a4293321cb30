"""Sequential Monte Carlo: importance sampling that resamples at each observe statement.

The particles run through the program together. At each ``observe`` statement each
particle's weight is multiplied by its incremental weight, the likelihood of the
observation times ``p(x) / q(x)`` for the latent values drawn since the previous observe
(``p(y_t | ...)`` alone with the prior as proposal: the bootstrap filter); when the
effective sample size falls below ``ess_threshold × N`` the particles are resampled in
proportion to their weights and the weights reset to their mean (Del Moral 2004; Doucet
& Johansen, "A tutorial on particle filtering and smoothing", 2009, adaptive resampling).
The evidence estimate is the product over resampling epochs of the mean weights,

    ``log Ẑ = Σ_epochs logsumexp(log w) - log N``,

unbiased for p(y) (Del Moral 2004, Thm. 7.4.2). Carrying that mean as every particle's
weight after a resampling makes ``logsumexp(log w_final) - log N`` equal to ``log Ẑ``, so
the returned :class:`SMCPosterior` is a :class:`~infcomp.Posterior` like importance
sampling's.

How a program's particles are resampled:

- **Vectorized programs** (the particle engine's batched path, particle dimensions
  leading) run once for all particles. Resampling re-indexes *in place* every
  per-particle value the run has produced so far (each latent site's value,
  ``t.copy_(t[index])``) and the proposal's per-particle state (an inference network's
  LSTM state; a guide is re-run on the resampled past), so the program's local
  variables that hold sampled values see the resampled particles. A *derived* tensor
  (``mu = A @ x`` computed before an observe and used after it) cannot be re-indexed:
  state that crosses an observe must be a sampled value; compute derived values after
  the observe. That includes the return value: a running total accumulated across
  observe statements is stale; sum the sampled values at the end. The replay check
  runs up to 256 of the final particles through the program once more and compares
  every site's log density, and the return value (where it is a tensor with the particle
  dimensions, particle by particle; other return values are not compared), with those
  of the run; a difference is a :class:`~infcomp.ModelError` naming the site or the
  return value. By default (``check=None``) a call is checked until one of its runs has
  passed with sites after a resampling (where a stale value would show), and not again
  in this process; a call is the program (the same ``model`` object) with the same
  arguments (plain values: numbers, strings, tuples of them; calls with other arguments
  are checked every time) and the same observed sites. A stale value that only some
  data reach (a branch on the observed values, or resampling at other steps) can pass
  the first check and go unseen later, and the key holds nothing else the program reads:
  a helper function redefined in a notebook, a global, a closure's variable, an
  ``nn.Module``'s attributes, the guide and the resampling options. ``check=True``
  checks every run (about 20 % more time on the 100-step HMM): use it while writing or
  changing a model; ``check=False`` checks none.
- **Programs that do not vectorize** (control flow on sampled values) run particle by
  particle, aligned by their count of observe statements: at step k each particle's
  program is re-run with its (resampled) past replayed up to its k-th observe and
  fresh draws until its (k+1)-th, where it stops. That is O(T²) program work for T
  observations. A particle whose program ends before others keeps its weight. Data
  naming an observe site that no particle met at any step is a ModelError; before
  raising it, up to N whole runs of the program look for the site (a particle removed by
  resampling never reached its later observe statements), so SMC refuses such data no
  more often than importance sampling with N particles does.

:func:`smc_batch` runs B data sets at once, particles ``(N, B)``, each data set's
particles resampled on their own. Particles whose distributions get invalid parameters
(a scale of 0) get weight zero and are counted by site, as in importance sampling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import Tensor

from infcomp import diagnostics
from infcomp.errors import GuideError, InferenceWarning, ModelError
from infcomp.inference.common import (
    Program,
    check_positive_int,
    plain_value,
    untouched_random_state,
    warn_user,
)
from infcomp.inference.particles import (
    Monitor,
    ParticleEngine,
    Request,
    SingleRun,
    _check_data_used,
    _invalid_particles,
    as_data,
    data_argument,
    stack_datasets,
)
from infcomp.inference.proposals import PriorProposal, ProgramProposal, engine_for
from infcomp.posterior import BatchPosterior, Posterior
from infcomp.resampling import SCHEMES
from infcomp.runtime import Messenger, Site, Trace, sum_rightmost
from infcomp.traces import group_traces

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from typing_extensions import Unpack

#: The number of particles when none is given.
DEFAULT_NUM_PARTICLES = 1000

#: The resampling scheme when none is given: multinomial, for which the genealogy
#: standard error of log Ẑ is derived (see :attr:`SMCPosterior.log_evidence_stderr`).
DEFAULT_RESAMPLE = "multinomial"

#: How many of the final particles (evenly spaced) the replay check runs.
CHECKED_PARTICLES = 256

ONE_PARTICLE = (
    "with one particle the standard error of log Ẑ cannot be estimated: "
    "log_evidence_stderr is NaN (use more particles, or compare independent runs)"
)


class Options(TypedDict, total=False):
    """The keyword options of :func:`smc` (documented there)."""

    guide: Any
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] | None
    vectorize: bool | None
    device: torch.device | str | None
    observations: Any
    resample: str
    ess_threshold: float
    check: bool | None


OPTIONS = sorted(Options.__annotations__)


def smc(
    model: Program,
    data: Mapping[str, Any] | None = None,
    num_particles: int | None = None,
    **options: Unpack[Options],
) -> SMCPosterior:
    """Sequential Monte Carlo of ``model`` given ``data`` (see the module docstring).

    At observe statement t, each particle's log weight grows by
    ``log p(y_t | x) + Σ_{sites s since the last observe} [log p(x_s | ...) - log q(x_s)]``
    (the latent terms vanish with the prior as proposal); if
    ``ESS = (Σ w)² / Σ w² < ess_threshold × N``, ancestors ``a_i`` are drawn with
    probability ``∝ w``, particle i becomes a copy of particle ``a_i``, ``log Ẑ``
    grows by ``logsumexp(log w) - log N`` and every weight is set to that mean. The final
    ``log Ẑ = Σ_epochs (logsumexp(log w) - log N)`` is the standard unbiased SMC estimate
    of log p(y) (Del Moral 2004; Doucet & Johansen 2009).

    Args:
        model: the program; its ``observe`` sites take their values from ``data``.
        data: observations by site name (``observations=`` is Pyro's keyword for it).
        num_particles: the number of particles N (default 1000).
        guide: the proposal: None (the prior: the bootstrap particle filter), a guide
            (a function or ``nn.Module`` called as ``guide(*args, observations=data,
            **kwargs)`` that samples the model's latent sites in the model's order), an
            inference network, or an :class:`~infcomp.CSIS` (its trained proposal,
            compiled for importance sampling, used unchanged).
        resample: ``"multinomial"`` (default: the scheme for which the standard error
            of ``log Ẑ`` is derived), ``"systematic"``, ``"stratified"`` or
            ``"residual"`` (:mod:`infcomp.resampling`; these give a smaller spread of
            ``log Ẑ``, and a standard error that is too small).
        ess_threshold: resample when ``ESS < ess_threshold × N``, a number in [0, 1]
            (default 0.5; 1: whenever ESS < N, i.e. at every observe statement unless
            the weights are all equal; 0: never, which is importance sampling).
        check: replay (up to 256 of) the final particles of a vectorized run and
            compare each site's log density, and the return value (a tensor with the
            particle dimensions, particle by particle), with those of the run (one more,
            small run of the program, and the latent sites' log densities computed
            during the run): catches a derived value that crossed an observe
            statement. None (default): until a run of this call (the same ``model``
            object, plain arguments and observed sites) has passed the check with
            sites after a resampling, in this process (see the module docstring for
            what that can miss); True: every run; False: never.
        args, kwargs, vectorize, device: as in :func:`~infcomp.importance`.

    Returns:
        An :class:`SMCPosterior`: the final particles and weights, with the ESS before each
        step (:attr:`~SMCPosterior.ess_trace`), the steps that resampled, and a standard
        error of ``log Ẑ`` from the genealogy (Lee & Whiteley 2018; NaN, with a warning,
        for N = 1, or where the genealogy's variance estimate is not positive). That
        standard error is derived for the default multinomial resampling and is too
        small with the other schemes (see :attr:`SMCPosterior.log_evidence_stderr`).

    Raises:
        ValueError: an unknown ``resample`` scheme, ``ess_threshold`` outside [0, 1].
        GuideError: a guide that does not sample the latent sites in the model's order
            (checked on the first run, whether or not the particles are resampled).
        ModelError: as :func:`~infcomp.importance`; also a vectorized program whose
            recomputed log densities or return value differ from those of the run
            (``check``), and NaN or +inf weights at an observe statement (resampling
            needs weights).

    Example:
        >>> import torch
        >>> import infcomp as ic
        >>> from infcomp.examples.hmm import hmm, simulate_data, forward_log_evidence
        >>> _ = torch.manual_seed(0)
        >>> data = simulate_data(50)
        >>> post = ic.smc(hmm, data, 2000, args=(50,))
        >>> abs(float(post.log_evidence) - forward_log_evidence(data, 50)) < 0.3
        True
        >>> 0 < post.num_resampling_steps < 50
        True
    """
    result = _run(model, data, num_particles, options, batched=False)
    assert isinstance(result, SMCPosterior)
    return result


def smc_batch(
    model: Program,
    datasets: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    num_particles: int | None = None,
    **options: Unpack[Options],
) -> SMCBatchPosterior:
    """Sequential Monte Carlo for many data sets at once: N particles for each.

    The algorithm of :func:`smc` for each data set b, with particles of shape ``(N, B)``
    (a program that broadcasts runs once for all; each data set's particles are weighed
    and resampled on their own). Returns an :class:`SMCBatchPosterior`: per-data-set
    ``log_evidence``, ESS and moments, ``ess_trace`` and ``resampled`` of shape
    ``(K, B)``, and each data set's posterior on request. Warns once, summarizing the
    data sets whose results look unreliable.

    Args:
        datasets: a list of observation dicts, or one dict whose values stack the data
            sets along a leading dimension of size B.
        Others: as in :func:`smc`.

    Example:
        >>> import torch
        >>> import infcomp as ic
        >>> from infcomp.examples.hmm import hmm, simulate_data
        >>> datasets = [simulate_data(20) for _ in range(5)]
        >>> batch = ic.smc_batch(hmm, datasets, 500, args=(20,))
        >>> batch.log_evidence.shape, batch.ess_trace.shape
        (torch.Size([5]), torch.Size([20, 5]))
    """
    result = _run(model, datasets, num_particles, options, batched=True)
    assert isinstance(result, SMCBatchPosterior)
    return result


def _run(
    model: Program, data: Any, num_particles: int | None, options: Options, batched: bool
) -> SMCPosterior | SMCBatchPosterior:
    unknown = sorted(set(options) - set(Options.__annotations__))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}; the options are {OPTIONS}")
    scheme_name = options.get("resample", DEFAULT_RESAMPLE)
    if scheme_name not in SCHEMES:
        raise ValueError(f"resample must be one of {sorted(SCHEMES)}, got {scheme_name!r}")
    threshold = options.get("ess_threshold", 0.5)
    if isinstance(threshold, torch.Tensor) and threshold.numel() == 1:
        threshold = threshold.item()
    number = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
    if not number or not 0 <= threshold <= 1:  # NaN included
        raise ValueError(f"ess_threshold must be a number in [0, 1], got {threshold!r}")
    threshold = float(threshold)
    check = options.get("check")
    if check is not None and not isinstance(check, bool):
        raise ValueError(f"check must be None, True or False, got {check!r}")
    args, kwargs = options.get("args", ()), options.get("kwargs")
    engine = engine_for(model, options.get("guide"), args, kwargs, options.get("vectorize"))
    data = data_argument(data, options.get("observations"))
    device = options.get("device")
    observed = stack_datasets(data or {}, device) if batched else as_data(data, device)
    count = DEFAULT_NUM_PARTICLES if num_particles is None else num_particles
    batch_shape: tuple[int, ...] = (check_positive_int("num_particles", count),)
    if batched:
        batch_shape += (next(iter(observed.values())).shape[0],)
    filter_ = _Filter(engine, observed, batch_shape, SCHEMES[scheme_name], threshold)
    key = _call_key(args, kwargs, observed)
    result: SMCPosterior | SMCBatchPosterior
    with torch.no_grad():
        probe = engine.probe(observed, batched)
        if isinstance(engine.job.proposal, ProgramProposal) and probe.proposal_trace is not None:
            _check_guide_order(probe.model_trace, probe.proposal_trace)
        result = engine.choose(
            lambda: filter_.vectorized(probe, _needs_check(model, key, check)),
            filter_.each_dataset if batched else filter_.sequential,
        )
    if filter_.passed_check:
        _passed_check(model, key)
    result.resampling = scheme_name
    for single in getattr(result, "_posteriors", None) or []:  # data set after data set
        single.resampling = scheme_name
    problems = result.problems()
    for problem in [problems] if isinstance(problems, str) else problems:
        if problem:
            warn_user(problem, InferenceWarning)
    return result


#: For each program (held weakly, by identity), the calls (arguments, keyword arguments
#: and observed site names) on which it passed the replay check on a run that had sites
#: after a resampling: the default ``check=None`` does not replay those calls again.
_CHECKED: weakref.WeakKeyDictionary[Any, set[Hashable]] = weakref.WeakKeyDictionary()


def _call_key(args: Any, kwargs: Any, data: Mapping[str, Any]) -> Hashable | None:
    """What identifies a call for the check: None (check every time) unless its
    arguments are plain values."""
    kwargs = dict(kwargs or {})
    if not plain_value(tuple(args)) or not all(plain_value(value) for value in kwargs.values()):
        return None
    typed = [_typed(value) for value in args]
    named = sorted((name, _typed(value)) for name, value in kwargs.items())
    return (tuple(typed), tuple(named), frozenset(data))


def _typed(value: Any) -> Hashable:
    """A plain value with its type (``1``, ``1.0`` and ``True`` are equal in Python)."""
    if type(value) is tuple:
        return tuple(_typed(item) for item in value)
    return (type(value).__name__, value)


def _needs_check(model: Program, key: Hashable | None, check: bool | None) -> bool:
    if check is not None:
        return check
    try:
        return key is None or key not in _CHECKED.get(model, ())
    except TypeError:  # not weakly referenceable: checked every time
        return True


def _passed_check(model: Program, key: Hashable | None) -> None:
    if key is not None:
        with contextlib.suppress(TypeError):
            _CHECKED.setdefault(model, set()).add(key)


def _check_guide_order(model_trace: Trace, guide_trace: Trace) -> None:
    """A GuideError unless, at each of the model's observe statements, the guide samples
    the latent sites the model sampled before it ahead of any other site: what resampling
    there needs (the guide is re-run on the resampled past), checked on the probe run
    whether or not a resampling happens."""
    guide_order = guide_trace.names("sample")
    before: list[str] = []
    for name, site in model_trace.sites.items():
        if site.kind == "sample":
            before.append(name)
        elif site.kind == "observe" and set(guide_order[: len(before)]) != set(before):
            first = next(n for n in guide_order if n not in before)
            late = next(n for n in before if guide_order.index(n) > guide_order.index(first))
            raise GuideError(
                f"the guide samples {first!r} before {late!r}, which the model samples "
                f"first (before observe site {name!r}): for sequential Monte Carlo a guide "
                f"must sample the latent sites in the model's order"
            )


class SMCPosterior(Posterior):
    """The final particles of :func:`smc`, with the history of the run.

    The weights and everything computed from them are :class:`~infcomp.Posterior`'s;
    ``log_evidence`` is the SMC estimate. Besides:

    Attributes:
        steps: the observe sites at which the particles were weighed, in order (with a
            program run particle by particle: ``"observe 1"``, ``"observe 2"``, ...).
        ess_trace: the ESS at each step, before any resampling, float64 ``(K,)``.
        resampled: whether the particles were resampled at each step, bool ``(K,)``.
        ancestors: the index of each final particle's ancestor among the first
            particles (its "Eve"), ``(N,)``.
        resampling: the resampling scheme's name (``smc``'s ``resample``).

    ``ess`` is the ESS of the last epoch's weights (see :attr:`ess`), not of the final
    weights, which resampling at the last observe statement makes all equal. ``problems``
    does not judge the weights by their Pareto k-hat: the final weights of SMC are the
    incremental weights since the last resampling, not importance weights of the whole
    path, so k-hat's thresholds (Vehtari et al. 2024, derived for importance sampling)
    do not apply to them (they gave spurious warnings with an accurate log Ẑ), and after
    a resampling they tie (``khat`` is then -inf, shown as ``-`` by ``summary``). Judge
    the run by :attr:`ess_trace` and :attr:`log_evidence_stderr` instead.

    Moments (``mean``, ``std``, quantiles) count the final weights; a site early in a
    long run is estimated from the few lineages that survived resampling (path
    degeneracy). Their Monte Carlo standard errors (``mcse``, ``summary``) follow the
    genealogy (:func:`genealogy_mcse`), so they grow where few lineages carry a site. With
    few first ancestors they are uncertain themselves and run small (a review's runs of
    the linear-Gaussian example, mean reported mcse over the spread of 100 to 200 runs:
    with 50 to 75 first ancestors 0.86 to 1.01; with 11 to 17, 0.83 to 0.96 for means
    and 0.69 to 0.86 for standard deviations); :meth:`problems` cautions below
    :data:`FEW_ANCESTORS`.

    In a vectorized run the traces' values are the resampled particles', but a site's
    distribution (``fn``) is the one its value was drawn from, before later resamplings:
    read values, not distributions, from them.
    """

    def __init__(
        self,
        traces: list[Trace],
        sizes: list[int],
        log_weights: Tensor,
        history: _History,
        nonfinite_sites: dict[str, int] | None = None,
        invalid_sites: dict[str, int] | None = None,
    ) -> None:
        super().__init__(traces, sizes, log_weights, nonfinite_sites, invalid_sites)
        self.history = history
        self.steps, self.ess_trace, self.resampled = history.tensors(())
        self.ancestors = history.eve
        self.resampling = DEFAULT_RESAMPLE  # set by smc

    khat_diagnostic = False

    def _mcse_of(self, values: Tensor, method: str) -> Tensor:
        """:meth:`mcse` follows the genealogy (:func:`genealogy_mcse`)."""
        return genealogy_mcse(
            values, self.weights, self.ancestors, self.num_resampling_steps, method
        )

    @functools.cached_property
    def ess(self) -> Tensor:
        """The ESS of the last epoch's weights: where the particles were resampled at
        the last observe statement, the ESS just before that resampling,
        ``ess_trace[-1]`` (or the ESS of the final weights if smaller: latent sites after
        the last observe statement weigh the particles again); otherwise the ESS
        ``(Σ w)² / Σ w²`` of the final weights, which have grown since the last
        resampling. Kish's ESS of the final weights alone would be N after a resampling
        (the weights are then equal) however degenerate the weights were before it. The
        smallest ESS of the run is ``ess_trace.min()``."""
        return _last_epoch_ess(self.log_weights, self.ess_trace, self.resampled)

    @property
    def num_resampling_steps(self) -> int:
        """How many times the particles were resampled."""
        return int(self.resampled.sum())

    @property
    def log_evidence_stderr(self) -> Tensor:
        """Standard error of ``log Ẑ`` from the genealogy of the particles (Lee &
        Whiteley, "Variance estimation in the particle filter", Biometrika 2018; for
        resampling only at some steps, Du & Guyader 2021):

        ``V̂ / Ẑ² = 1 - (N / (N - 1))^(R + 1) (1 - Σ_e W_e²)``, ``se = sqrt(V̂) / Ẑ``,

        where R is the number of resampling steps and ``W_e`` the total normalized final
        weight of the particles whose first ancestor is e. Without resampling it is the
        unbiased importance-sampling estimate ``(N Σ w̄² - 1) / (N - 1)``. NaN for N = 1
        (it cannot be estimated from one particle; :meth:`problems` says so).

        After resampling, ``V̂`` can be zero or negative (the final particles descend
        from too few first ancestors for it); that is no estimate, and the standard error
        is NaN (:meth:`problems` says so: compare independent runs), never a false 0. So
        it is where all final particles descend from one first ancestor (then
        ``Σ W_e² = 1`` and the formula gives ``V̂ / Ẑ² = 1`` whatever the error); with
        fewer than :data:`FEW_ANCESTORS` first ancestors :meth:`problems` cautions.

        It is derived (and proven consistent) for **multinomial** resampling, the
        default. With systematic resampling (and the other schemes) it under-estimates:
        on the 20-step example HMM with N = 1000 over 100 runs, the standard deviation
        of log Ẑ was 0.169 and the mean reported standard error 0.139, the exact log Z
        inside ±1.96 se in 87 % of runs (multinomial: 0.178, 0.170 and 95 %); with a
        proposal compiled for the Gaussian example, N = 2000 and two resamplings, the
        spread was 0.012 and the variance estimate was not positive in 27 of 30 runs
        (multinomial: 0.024 and a mean standard error of 0.027). Systematic resampling
        has the smaller spread of log Ẑ, multinomial a right standard error;
        :meth:`problems` cautions after resampling with another scheme. When all
        particles descend from few first ancestors (long series) it is unreliable too:
        compare independent runs."""
        return genealogy_stderr(self.weights, self.ancestors, self.resampled.sum(0))

    def problems(self) -> list[str]:
        """:meth:`Posterior.problems` (without the k-hat checks, see the class
        docstring); a collapse at some step (the ESS before resampling below importance
        sampling's low-ESS threshold, ``max(0.001 N, 1.5)``, naming the first such step);
        and the standard error's: none with one particle, none where the genealogy
        estimate of the variance is not positive or the final particles have one first
        ancestor, a caution with fewer than :data:`FEW_ANCESTORS` of them, and a caution
        where the particles were resampled by a scheme other than multinomial (the
        estimate is derived for multinomial resampling and under-estimates with the
        others)."""
        found = super().problems()
        if self.num_particles == 1:
            return [*found, ONE_PARTICLE]
        if not bool(torch.isfinite(self.log_evidence)):
            return found  # NaN or zero weights (reported): nothing more to judge
        found += _history_problems(
            self.steps,
            self.ess_trace,
            self.ancestors,
            self.num_particles,
            self.num_resampling_steps,
        )
        return found + _stderr_problems(
            self.log_evidence_stderr, self.num_resampling_steps, self.resampling
        )

    def plot(self, ax: Axes | None = None) -> Axes:
        """ESS/N at each step, with the steps that resampled marked; needs matplotlib."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 3))
        fraction = (self.ess_trace / self.num_particles).numpy()
        ax.plot(range(1, len(fraction) + 1), fraction, label="ESS/N before the step")
        marked = self.resampled.nonzero().flatten().numpy()
        ax.plot(marked + 1, fraction[marked], "x", label="resampled")
        ax.set_xlabel("observe statement")
        ax.set_ylabel("ESS / N")
        ax.set_ylim(0, 1.05)
        ax.legend(loc="lower right")
        return ax

    def __repr__(self) -> str:
        return (
            f"SMCPosterior(num_particles={self.num_particles}, ess={float(self.ess):.4g}, "
            f"log_evidence={float(self.log_evidence):.6g}, "
            f"resampled={self.num_resampling_steps} of {len(self.steps)})"
        )


class SMCBatchPosterior(BatchPosterior):
    """The final particles of :func:`smc_batch` for B data sets, with the history of the
    run: as :class:`SMCPosterior`, with a trailing data-set dimension (``ess_trace`` and
    ``resampled`` ``(K, B)``, ``ancestors`` ``(N, B)``, ``log_evidence_stderr`` ``(B,)``).
    With data sets run one by one (a program that does not vectorize), steps that a data
    set did not reach have ESS NaN."""

    def __init__(
        self,
        log_weights: Tensor,
        history: _History,
        trace: Trace | None = None,
        posteriors: Sequence[SMCPosterior] | None = None,
    ) -> None:
        super().__init__(log_weights, trace=trace, posteriors=posteriors)
        self.history = history
        self.steps, self.ess_trace, self.resampled = history.tensors(log_weights.shape[1:])
        self.ancestors = history.eve
        self.resampling = DEFAULT_RESAMPLE  # set by smc_batch

    def posterior(self, index: int) -> SMCPosterior:
        """Data set ``index``'s :class:`SMCPosterior`, with its history (ESS trace,
        resampling steps, ancestors) and its genealogy standard error."""
        single = super().posterior(index)
        if isinstance(single, SMCPosterior):  # run data set after data set
            return single
        history = self.history
        column = _History(
            history.eve[:, index],
            list(history.steps),
            [ess[index] for ess in history.ess],
            [resampled[index] for resampled in history.resampled],
        )
        posterior = SMCPosterior(single.traces, single.sizes, single.log_weights, column)
        posterior.resampling = self.resampling
        return posterior

    __getitem__ = posterior

    khat_diagnostic = False

    def _mcse_of(self, values: Tensor, method: str) -> Tensor:
        """:meth:`mcse` follows the genealogy (:func:`genealogy_mcse`), per data set."""
        return genealogy_mcse(
            values, self.weights, self.ancestors, self.num_resampling_steps, method
        )

    @functools.cached_property
    def ess(self) -> Tensor:
        """As :attr:`SMCPosterior.ess`, per data set, ``(B,)``."""
        return _last_epoch_ess(self.log_weights, self.ess_trace, self.resampled)

    def problems(self) -> str:
        """:meth:`BatchPosterior.problems` (without the k-hat checks), and the standard
        error's problems of :meth:`SMCPosterior.problems`, counted over the data sets."""
        found = [super().problems()]
        if self.num_particles == 1:
            found.append(ONE_PARTICLE)
        else:
            stderr, resampled = self.log_evidence_stderr, self.num_resampling_steps
            num, datasets = self.num_particles, self.num_datasets
            collapsed = (self.ess_trace < diagnostics.low_ess(num)).any(0)  # NaN: not reached
            if bool(collapsed.any()):
                found.append(
                    f"{int(collapsed.sum())} of {datasets} data sets: the particles "
                    f"collapsed (ESS below {diagnostics.low_ess(num):.3g} of {num} at some "
                    f"step): log Ẑ and the estimates may be far off"
                )
            lineages = first_ancestors(self.ancestors)
            few = (resampled.cpu() > 0) & (lineages >= 2) & (lineages < FEW_ANCESTORS)
            if bool(few.any()):
                found.append(
                    f"{int(few.sum())} of {datasets} data sets: the final particles descend "
                    f"from fewer than {FEW_ANCESTORS} first ancestors, so log_evidence_stderr "
                    f"is unreliable"
                )
            judged = torch.isfinite(self.log_evidence).to(stderr.device)  # else reported
            count = int((torch.isnan(stderr) & (resampled.to(stderr.device) > 0) & judged).sum())
            if count:
                found.append(f"{count} of {datasets} data sets: {NOT_ESTIMABLE}")
            if self.resampling != "multinomial" and bool((resampled > 0).any()):
                found.append(_scheme_caution(self.resampling))
        return "; ".join(problem for problem in found if problem)

    @property
    def num_resampling_steps(self) -> Tensor:
        """How many times the particles of each data set were resampled, ``(B,)``."""
        return self.resampled.sum(0)

    @property
    def log_evidence_stderr(self) -> Tensor:
        """As :attr:`SMCPosterior.log_evidence_stderr`, per data set."""
        return genealogy_stderr(self.weights, self.ancestors, self.num_resampling_steps)

    def __repr__(self) -> str:
        return (
            f"SMCBatchPosterior(num_datasets={self.num_datasets}, "
            f"num_particles={self.num_particles}, steps={len(self.steps)})"
        )


def genealogy_stderr(weights: Tensor, ancestors: Tensor, num_resampled: Tensor) -> Tensor:
    """Lee & Whiteley's (2018) standard error of log Ẑ (see
    :attr:`SMCPosterior.log_evidence_stderr`) from the normalized final weights and each
    particle's first ancestor, shape ``(N, ...)``, and the number of resampling steps."""
    num = weights.shape[0]
    if num == 1:  # cannot be estimated (see ONE_PARTICLE)
        return torch.full(weights.shape[1:], math.nan, dtype=torch.float64)
    lineage = torch.zeros_like(weights).scatter_add_(0, ancestors.to(weights.device), weights)
    same = (lineage**2).sum(0)
    resampled = num_resampled.to(torch.float64).to(weights.device)
    relative = 1 - torch.exp((resampled + 1) * math.log(num / (num - 1))) * (1 - same)
    # Without resampling V̂ >= 0 up to rounding (equal weights: 0). After resampling a
    # non-positive V̂ is no estimate: NaN (problems() says so), never a false 0; nor is
    # V̂ / Ẑ² = 1 from particles that all descend from one first ancestor (Σ W_e² = 1).
    relative = torch.where(resampled > 0, relative, relative.clamp(min=0))
    one = first_ancestors(ancestors).to(weights.device) < 2
    estimable = (resampled == 0) | ((relative > 0) & ~one)
    return torch.where(estimable, relative, math.nan).sqrt()


def genealogy_mcse(
    values: Tensor, weights: Tensor, ancestors: Tensor, num_resampled: Tensor | int, method: str
) -> Tensor:
    """The Monte Carlo standard error of SMC's weighted mean (``method="mean"``) or
    standard deviation (``"sd"``) of ``values`` over the final particles, following
    their genealogy (Chan & Lai 2013; Lee & Whiteley 2018, the estimator of the variance
    of a normalized estimate)::

        V̂ = (N / (N - 1))^(R + 1) Σ_e (Σ_{i: E_i = e} W_i φ_i)²,   se = sqrt(V̂),

    with W the normalized final weights, E_i particle i's first ancestor, R the number of
    resampling steps and φ the estimate's influence: ``f_i - μ̂`` for the mean,
    ``((f_i - μ̂)² - v̂) / (2 sd)`` for the sd. Particles that share a first ancestor
    share their errors, which the per-particle formula (:func:`~infcomp.diagnostics.
    mcse_mean`) counts as independent: for a site early in a run it is then several
    times too small. Without resampling (R = 0) it is that per-particle formula exactly.
    NaN where it cannot be estimated: one particle, or all final particles of one first
    ancestor after resampling (the sum is then 0 whatever the error, and a spread of 0
    only says the particles are copies); otherwise 0 for the sd of a constant. Derived for
    multinomial resampling, like :func:`genealogy_stderr`; with few first ancestors it
    runs small (see :class:`SMCPosterior`).

    Shapes: ``values`` ``(N, *batch, *event)``, ``weights`` and ``ancestors``
    ``(N, *batch)``, ``num_resampled`` ``batch``; the result ``(*batch, *event)``, float64.

    Raises:
        ValueError: ``method`` is neither "mean" nor "sd".
    """
    if method not in ("mean", "sd"):
        raise ValueError(f"method must be 'mean' or 'sd', got {method!r}")
    num = values.shape[0]
    f = values.to(torch.float64)
    event = (1,) * (f.dim() - weights.dim())
    w = weights.to(torch.float64).to(f.device).reshape(weights.shape + event)
    deviation = f - (w * f).sum(0)
    spread = None
    if method == "mean":
        influence = deviation
    else:
        variance = (w * deviation.square()).sum(0)
        spread = variance.sqrt()
        influence = (deviation.square() - variance) / (2 * spread)
    index = ancestors.to(f.device).reshape(ancestors.shape + event).expand_as(f)
    lineage = torch.zeros_like(f).scatter_add_(0, index, w * influence)
    resampled = torch.as_tensor(num_resampled, dtype=torch.float64, device=f.device)
    resampled = resampled.reshape(resampled.shape + event)
    if num == 1:
        return torch.full(lineage.shape[1:], math.nan, dtype=torch.float64, device=f.device)
    factor = torch.where(resampled > 0, torch.exp((resampled + 1) * math.log(num / (num - 1))), 1.0)
    error = (factor * lineage.square().sum(0)).sqrt()
    if spread is not None:
        error = torch.where(spread == 0, 0.0, error)
    # One lineage: no estimate, even of a spread of 0 (the particles are copies).
    one = (first_ancestors(ancestors) < 2).to(f.device).reshape(resampled.shape)
    return torch.where((resampled > 0) & one, math.nan, error)


def first_ancestors(ancestors: Tensor) -> Tensor:
    """How many distinct first ancestors the final particles have, shape ``ancestors``'
    without its first (particle) dimension."""
    present = torch.zeros(ancestors.shape, dtype=torch.bool)
    present.scatter_(0, ancestors.cpu(), True)
    return present.sum(0)


def _last_epoch_ess(log_weights: Tensor, ess_trace: Tensor, resampled: Tensor) -> Tensor:
    """The ESS of :attr:`SMCPosterior.ess`: of the final weights, or where the last step
    that a data set reached resampled, the smaller of that and the ESS before it."""
    final = diagnostics.effective_sample_size(log_weights)
    if len(ess_trace) == 0:
        return final
    reached = ~torch.isnan(ess_trace)  # steps padded for data sets run one by one: NaN
    steps = torch.arange(1, len(ess_trace) + 1).reshape((-1,) + (1,) * (ess_trace.dim() - 1))
    last = (reached * steps).argmax(0, keepdim=True)  # each data set's last step reached
    before = ess_trace.gather(0, last).squeeze(0).to(final.device)
    at_last = resampled.gather(0, last).squeeze(0).to(final.device)
    return torch.where(at_last, torch.minimum(before, final), final)


NOT_ESTIMABLE = (
    "the standard error cannot be estimated from this run: the final particles descend "
    "from too few first ancestors (one, or too few for a positive genealogy estimate of "
    "the variance of Ẑ), so log_evidence_stderr is NaN; compare independent runs"
)

#: Below this many distinct first ancestors of the final particles, the genealogy
#: standard error is an average over so few lineages that it is itself uncertain
#: (relative error about sqrt(2 / (k - 1)), more than 45 % for k < 10).
FEW_ANCESTORS = 10


def _few_ancestors(count: int) -> str:
    return (
        f"the final particles descend from only {count} first ancestors: "
        f"log_evidence_stderr and the mcse of the estimates rest on {count} lineages and "
        f"are unreliable (so are the early sites' moments); compare independent runs, or "
        f"use more particles"
    )


def _collapse(step: str, ess: float, num: int) -> str:
    return (
        f"the particles collapsed at step {step!r}: ESS {ess:.2f} of {num} there, so "
        f"the run went on from the very few particles that held the weight; log Ẑ and the "
        f"estimates may be far off (a surprising observation there, or a poor proposal): "
        f"use more particles or a better proposal"
    )


def _history_problems(
    steps: list[str], ess_trace: Tensor, ancestors: Tensor, num: int, num_resampled: int
) -> list[str]:
    """One run's problems seen in its history: a collapse of the ESS at some step (the
    threshold of importance sampling's low-ESS check), few first ancestors."""
    found = []
    low = ess_trace < diagnostics.low_ess(num)
    if bool(low.any()):
        first = int(low.nonzero()[0])
        found.append(_collapse(steps[first], float(ess_trace[first]), num))
    count = int(first_ancestors(ancestors))
    if num_resampled > 0 and 2 <= count < FEW_ANCESTORS:
        found.append(_few_ancestors(count))
    return found


def _scheme_caution(scheme: str) -> str:
    """The caution for a genealogy standard error after resampling by ``scheme``."""
    return (
        f"log_evidence_stderr is derived for multinomial resampling; with {scheme} "
        f"resampling it under-estimates, most with a good proposal and few resampling "
        f"steps (there by 10× or more): use resample='multinomial', or compare independent "
        f"runs, when the standard error matters"
    )


def _stderr_problems(stderr: Tensor, num_resampled: int, scheme: str) -> list[str]:
    """The problems of one run's genealogy standard error (N > 1)."""
    found = [NOT_ESTIMABLE] if bool(torch.isnan(stderr)) else []
    if scheme != "multinomial" and num_resampled > 0:
        found.append(_scheme_caution(scheme))
    return found


@dataclasses.dataclass
class _History:
    """What a run of SMC recorded at each step, and the particles' first ancestors."""

    eve: Tensor
    steps: list[str] = dataclasses.field(default_factory=list)
    ess: list[Tensor] = dataclasses.field(default_factory=list)
    resampled: list[Tensor] = dataclasses.field(default_factory=list)

    def tensors(self, datasets: tuple[int, ...]) -> tuple[list[str], Tensor, Tensor]:
        """The step names, the ESS trace and the resampling steps as tensors."""
        if not self.ess:
            empty = torch.zeros((0, *datasets), dtype=torch.float64)
            return [], empty, empty.bool()
        return list(self.steps), torch.stack(self.ess).cpu(), torch.stack(self.resampled).cpu()


def _stack_histories(histories: list[_History]) -> _History:
    """Per-data-set histories as one, steps padded (ESS NaN, not resampled)."""
    longest = max(histories, key=lambda h: len(h.steps))
    stacked = _History(torch.stack([h.eve for h in histories], 1), list(longest.steps))
    for k in range(len(longest.steps)):
        nan = torch.tensor(math.nan, dtype=torch.float64)
        stacked.ess.append(torch.stack([h.ess[k] if k < len(h.ess) else nan for h in histories]))
        no = torch.tensor(False)
        stacked.resampled.append(
            torch.stack([h.resampled[k] if k < len(h.ess) else no for h in histories])
        )
    return stacked


def _rows(value: Tensor, index: Tensor) -> Tensor:
    """``value``'s particles ``index``: ``value[index]`` for ``(N,)`` particles, and for
    ``(N, B)`` particles, ``value[index[n, b], b]`` at ``[n, b]``."""
    if index.dim() == 1:
        return value.index_select(0, index.to(value.device))
    columns = torch.arange(index.shape[1], device=value.device)
    return value[index.to(value.device), columns]


class _Stop(BaseException):
    """Ends a particle's run at the observe statement its step stops at (a
    BaseException, so that the engine never takes it for the program's error)."""


class _Weights:
    """The particles' log weights, the evidence of past epochs, and resampling; the
    particles have shape ``(N,)``, or ``(N, B)`` for B data sets (each resampled alone)."""

    def __init__(
        self,
        batch_shape: tuple[int, ...],
        scheme: Callable[[Tensor, int], Tensor],
        threshold: float,
    ):
        self.batch_shape = batch_shape
        self.num = batch_shape[0]
        self.scheme = scheme
        self.threshold = threshold
        self.log_weights = torch.zeros(batch_shape, dtype=torch.float64)
        self.log_evidence = torch.zeros(batch_shape[1:], dtype=torch.float64)
        eve = torch.arange(self.num).reshape((-1,) + (1,) * (len(batch_shape) - 1))
        self.history = _History(eve.expand(batch_shape).clone())

    def step(self, name: str, increment: Tensor) -> Tensor | None:
        """Weigh the particles by ``increment`` at step ``name``; the ancestors' indices
        if they are resampled, else None."""
        self.log_weights = self.log_weights.to(increment.device) + increment
        ess = diagnostics.effective_sample_size(self.log_weights)
        total = torch.logsumexp(self.log_weights, 0)
        resample = (ess < self.threshold * self.num) & torch.isfinite(total)
        self.history.steps.append(name)
        self.history.ess.append(ess)
        self.history.resampled.append(resample)
        if not bool(resample.any()):
            return None
        if self.log_weights.dim() == 1:
            index = self.scheme(torch.softmax(self.log_weights, 0), self.num)
        else:
            index = self.history.eve.new_tensor(range(self.num)).unsqueeze(1)
            index = index.expand(self.batch_shape).clone()
            for column in resample.nonzero().flatten().tolist():
                weights = torch.softmax(self.log_weights[:, column], 0)
                index[:, column] = self.scheme(weights, self.num)
        index = index.to(self.log_weights.device)
        self.log_evidence = self.log_evidence.to(total.device) + torch.where(
            resample, total - math.log(self.num), 0.0
        )
        self.log_weights = torch.where(resample, 0.0, self.log_weights)
        self.history.eve = _rows(self.history.eve.to(index.device), index)
        return index

    def final(self) -> Tensor:
        """The final log weights, carrying the evidence of past epochs."""
        return self.log_weights + self.log_evidence.to(self.log_weights.device)


def _check_increment(
    increment: Tensor, segment: SingleRun, shape: tuple[int, ...], invalid_sites: dict[str, int]
) -> Tensor:
    """``increment`` with the particles whose distributions got invalid parameters at
    ``-inf`` (counted by site into ``invalid_sites``); any other NaN or +inf is a
    ModelError naming the sites."""
    bad = torch.isnan(increment) | torch.isposinf(increment)
    if not bool(bad.any()):
        return increment
    invalid = _invalid_particles(segment, shape)
    if invalid is not None:
        increment = increment.masked_fill(invalid[0].to(increment.device), -torch.inf)
        for name, count in invalid[1].items():
            invalid_sites[name] = invalid_sites.get(name, 0) + count
        bad = torch.isnan(increment) | torch.isposinf(increment)
        if not bool(bad.any()):
            return increment
    names = []
    for prefix, trace in (("", segment.model_trace), ("guide ", segment.proposal_trace)):
        for name, site in (trace.sites if trace is not None else {}).items():
            density = sum_rightmost(site.log_prob(), len(shape))
            if bool((torch.isnan(density) | torch.isposinf(density)).any()):
                names.append(prefix + name)
    raise ModelError(
        f"NaN or +inf log weights in {int(bad.sum())} particles, from sites {names}: "
        f"sequential Monte Carlo cannot resample on them"
    )


class _Recorder(Monitor):
    """Follows one run: the incremental weight of the sites since the last step, and
    every site's log density and value (for re-indexing and the replay check)."""

    def __init__(self, batch_ndim: int) -> None:
        super().__init__()
        self.batch_ndim = batch_ndim
        self.proposal: Messenger | None = None  # shown (watch) before each run enters
        self.invalid_sites: dict[str, int] = {}

    def __enter__(self) -> _Recorder:
        self.increment: Tensor | float = 0.0
        self.segment = Trace(self.batch_ndim)
        self.proposal_segment = Trace(self.batch_ndim)
        return super().__enter__()

    def watch(self, handler: Messenger) -> None:
        self.proposal = handler

    def weigh(self, site: Site) -> Tensor | None:
        """Add ``site``'s weight factor to the increment; its model log density (None
        for a latent site with the prior as proposal, where none is needed)."""
        if site.kind == "sample":
            proposal_trace = getattr(self.proposal, "trace", None)
            if proposal_trace is None or site.name not in proposal_trace:
                # The prior proposed it: p / q = 1 (kept for the parameter check).
                self.segment.add(Site(site.name, site.kind, site.fn, site.value, site.scale))
                return None
            proposed = proposal_trace[site.name]
            density = sum_rightmost(site.log_prob(), self.batch_ndim)
            log_q = sum_rightmost(proposed.log_prob(), self.batch_ndim)
            self.increment = self.increment + density.double() - log_q.double()
            self.proposal_segment.add(proposed)
        else:
            density = sum_rightmost(site.log_prob(), self.batch_ndim)
            self.increment = self.increment + density.double()
        self.segment.add(Site(site.name, site.kind, site.fn, site.value, site.scale))
        return density

    def take_increment(self, shape: tuple[int, ...]) -> Tensor:
        """The increment since the last step (checked), and start a new segment."""
        increment = torch.broadcast_to(torch.as_tensor(self.increment, dtype=torch.float64), shape)
        segment = SingleRun(self.segment, self.proposal_segment)
        increment = _check_increment(increment, segment, shape, self.invalid_sites)
        self.increment = 0.0
        self.segment = Trace(self.batch_ndim)
        self.proposal_segment = Trace(self.batch_ndim)
        return increment


class _Batched(_Recorder):
    """Weighs and resamples the particles of a batched run at each observe statement."""

    def __init__(
        self,
        batch_shape: tuple[int, ...],
        scheme: Callable[[Tensor, int], Tensor],
        threshold: float,
        check: bool,
    ) -> None:
        super().__init__(len(batch_shape))
        self.settings = (batch_shape, scheme, threshold)
        self.batch_shape = batch_shape
        self.weights = _Weights(*self.settings)
        self.check = check

    def __enter__(self) -> _Batched:
        # Entered anew when the engine redoes a run (with validation off, or a retry).
        self.weights = _Weights(*self.settings)
        self.invalid_sites = {}
        self.per_particle: dict[tuple[Any, ...], Tensor] = {}
        # Each site's log density, with the number of resamplings before it (the check
        # follows the final particles' ancestry back to it, rather than re-indexing it).
        self.densities: dict[str, tuple[Tensor, int]] = {}
        self.indices: list[Tensor] = []
        self.site_after_resampling = False
        return super().__enter__()  # type: ignore[return-value]

    def postprocess_message(self, site: Site) -> None:
        # Outermost: the site's value is final, its proposal recorded.
        self.site_after_resampling = self.site_after_resampling or bool(self.indices)
        density = self.weigh(site)
        if site.kind == "sample" and self.check and density is None:
            density = sum_rightmost(site.log_prob(), self.batch_ndim)
        if density is not None and self.check:
            self.densities[site.name] = (density, len(self.indices))
        if site.kind == "sample":
            assert site.value is not None
            self._keep(site.value)
        if site.kind == "observe":
            index = self.weights.step(site.name, self.take_increment(self.batch_shape))
            if index is not None:
                self._reindex(index)

    def _keep(self, value: Tensor) -> None:
        """Remember a per-particle tensor, to re-index it when resampling: once per
        memory it views (a site whose value views another's, as a ``Delta`` of a sampled
        value does, must not be re-indexed twice)."""
        ndim = self.batch_ndim
        if value.shape[:ndim] == self.batch_shape and all(value.stride()[:ndim]):
            key = (value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
            self.per_particle.setdefault(key, value)

    def _reindex(self, index: Tensor) -> None:
        self.indices.append(index)
        if index.dim() == 1:  # the common case, without _rows's per-call overhead
            for value in self.per_particle.values():
                value.copy_(value.index_select(0, index))
        else:
            for value in self.per_particle.values():
                value.copy_(_rows(value, index))
        reindex = getattr(self.proposal, "reindex", None)
        if reindex is not None:
            reindex(index)

    def recorded(self, particles: Tensor) -> dict[str, Tensor]:
        """The log density of each site in the ancestors of the given final particles."""
        rows = particles.reshape((-1,) + (1,) * (self.batch_ndim - 1))
        ancestors = [rows.expand((len(particles),) + self.batch_shape[1:])]
        for index in reversed(self.indices):  # ancestors[k]: k resamplings from the end
            ancestors.append(_rows(index, ancestors[-1]))
        last = len(self.indices)
        return {
            name: _rows(density, ancestors[last - epoch])
            for name, (density, epoch) in self.densities.items()
        }

    def finish(self) -> Tensor:
        """The final log weights (the sites after the last observe included)."""
        increment = self.take_increment(self.batch_shape)
        self.weights.log_weights = self.weights.log_weights.to(increment.device) + increment
        return self.weights.final()


class _Segment(_Recorder):
    """Follows one particle's run at step ``start`` of the particle-by-particle path:
    weighs the sites after its ``start``-th observe statement and stops the run at the
    next one; records all its latent values (its past for the next step)."""

    def __init__(self, start: int, observe_sites: set[str]) -> None:
        super().__init__(0)
        self.start = start
        self.observe_sites = observe_sites  # every observe site met, added to

    def __enter__(self) -> _Segment:
        self.observed = 0
        self.values: dict[str, Tensor] = {}
        return super().__enter__()  # type: ignore[return-value]

    def postprocess_message(self, site: Site) -> None:
        if site.kind == "sample":
            assert site.value is not None
            self.values[site.name] = site.value
        if site.kind == "observe":
            self.observe_sites.add(site.name)
        if self.observed >= self.start:
            self.weigh(site)
        if site.kind == "observe":
            self.observed += 1
            if self.observed == self.start + 1:
                raise _Stop


class _Filter:
    """One call of :func:`smc`: the batched algorithm and the particle-by-particle one."""

    def __init__(
        self,
        engine: ParticleEngine,
        data: dict[str, Tensor],
        batch_shape: tuple[int, ...],
        scheme: Callable[[Tensor, int], Tensor],
        threshold: float,
    ) -> None:
        self.engine = engine
        self.data = data
        self.batch_shape = batch_shape  # (N,), or (N, B) for B data sets
        self.num = batch_shape[0]
        self.scheme = scheme
        self.threshold = threshold
        self.passed_check = False  # the replay check passed, with sites after a resampling

    def each_dataset(self) -> SMCBatchPosterior:
        """Data set after data set, particle by particle."""
        posteriors = []
        for b in range(self.batch_shape[1]):
            data = {name: value[b] for name, value in self.data.items()}
            one = _Filter(self.engine, data, (self.num,), self.scheme, self.threshold)
            posteriors.append(one.sequential())
        history = _stack_histories([p.history for p in posteriors])
        log_weights = torch.stack([p.log_weights for p in posteriors], 1)
        return SMCBatchPosterior(log_weights, history, posteriors=posteriors)

    def vectorized(self, probe: SingleRun, check: bool) -> SMCPosterior | SMCBatchPosterior:
        monitor = _Batched(self.batch_shape, self.scheme, self.threshold, check)
        request = Request(self.data, self.batch_shape, probe, monitor)
        run, _ = self.engine.single(request)
        _check_data_used(self.data, [probe, run])
        log_weights = monitor.finish()
        model_trace = run.model_trace
        if check:
            self._replay(model_trace, probe, monitor)
            # A stale value shows only at a site after a resampling.
            self.passed_check = monitor.site_after_resampling
        for site in model_trace.sites.values():
            # Observed values get the particle dimension (as importance sampling's).
            if site.kind == "observe" and site.value is not None and site.fn is not None:
                site.value = site.value.expand(site.fn.batch_shape + site.fn.event_shape)
        history = monitor.weights.history
        if len(self.batch_shape) == 2:
            return SMCBatchPosterior(log_weights, history, trace=model_trace)
        invalid = monitor.invalid_sites
        return SMCPosterior([model_trace], [self.num], log_weights, history, invalid_sites=invalid)

    def _replay(self, final: Trace, probe: SingleRun, monitor: _Batched) -> None:
        """Run the program on the latent values of (up to :data:`CHECKED_PARTICLES` of)
        the final particles; a ModelError where a site's log density differs from the
        one computed during the run."""
        chosen = torch.linspace(0, self.num - 1, min(self.num, CHECKED_PARTICLES)).long()
        live = monitor.recorded(chosen)
        values = {}
        for name in final.names("sample"):
            value = final[name].value
            assert value is not None
            values[name] = value[chosen.to(value.device)]
        shape = (len(chosen), *self.batch_shape[1:])
        request = Request(self.data, shape, probe, values=values)
        # The program alone (the prior as proposal, given every latent value), tolerant of
        # invalid parameters as the run was.
        replaying = ParticleEngine(dataclasses.replace(self.engine.job, proposal=PriorProposal()))
        try:
            replayed = replaying.single(request)[0].model_trace
        except Exception as error:
            raise ModelError(
                f"the program failed when its final particles' values were replayed "
                f"({type(error).__name__}: {error}); {_RULE}"
            ) from error
        ndim = len(self.batch_shape)
        checked = f"{math.prod(shape)} particles checked" + (
            f" ({len(chosen)} in each of {shape[1]} data sets)" if ndim == 2 else ""
        )
        for name, site in replayed.sites.items():
            if name not in live:
                continue
            fresh = sum_rightmost(site.log_prob(), ndim)
            differ = ~_close(fresh, live[name])
            if bool(differ.any()):
                before_any = monitor.densities[name][1] == 0  # no resampling before it
                raise ModelError(
                    f"{site.kind} site {name!r}: its log density recomputed from the final "
                    f"particles' values differs from the one computed during the run in "
                    f"{int(differ.sum())} of {checked}; "
                    + (_NOT_DETERMINISTIC if before_any else _RULE)
                )
        ran, replayed_returns = _tensors(final.return_value), _tensors(replayed.return_value)
        if len(ran) != len(replayed_returns):
            return
        for returned, fresh in zip(ran, replayed_returns):
            expected = (*shape, *returned.shape[ndim:])
            if returned.shape[:ndim] != self.batch_shape or fresh.shape != expected:
                continue  # not one value per particle: not comparable
            recorded = returned[chosen.to(returned.device)]
            differ = ~_close(fresh.to(recorded.device), recorded)
            if differ.dim() > ndim:
                differ = differ.flatten(ndim).any(-1)
            if bool(differ.any()):
                raise ModelError(
                    f"the program's return value recomputed from the final particles' values "
                    f"differs from the one the run returned in {int(differ.sum())} of "
                    f"{checked}; {_RULE}"
                )

    def _check_observe_sites(self, observe_sites: set[str]) -> None:
        """A ModelError if the data name a site that no run met. A particle that
        resampling removed never ran on to its later observe statements, so before
        refusing, up to N whole runs of the program (as importance sampling's particles
        would have made, and with the random state left as it was) look for the sites."""
        if set(self.data) <= observe_sites:
            return
        with untouched_random_state():
            for _ in range(self.num):
                run = self.engine.single(Request(self.data))[0]
                observe_sites.update(run.model_trace.names("observe"))
                if set(self.data) <= observe_sites:
                    return
        raise ModelError(
            f"data names {sorted(set(self.data) - observe_sites)}, but the model has no such "
            f"site; the observe sites its runs met are {sorted(observe_sites)}"
        )

    def sequential(self) -> SMCPosterior:
        """Particle by particle, aligned by the count of observe statements."""
        weights = _Weights((self.num,), self.scheme, self.threshold)
        pasts: list[dict[str, Tensor]] = [{} for _ in range(self.num)]
        finished: list[SingleRun | None] = [None] * self.num
        invalid_sites: dict[str, int] = {}
        # The observe sites met by any particle at any step: the data must name only
        # these (the final particles alone may have met fewer).
        observe_sites: set[str] = set()
        step = 0
        while True:
            increments = torch.zeros(self.num, dtype=torch.float64)
            for i in range(self.num):
                if finished[i] is not None:
                    continue
                monitor = _Segment(step, observe_sites)
                request = Request(self.data, (), None, monitor, pasts[i])
                with contextlib.suppress(_Stop):  # stopped at its next observe
                    finished[i] = self.engine.single(request)[0]
                increments[i] = monitor.take_increment(())
                pasts[i] = monitor.values
                for name, count in monitor.invalid_sites.items():
                    invalid_sites[name] = invalid_sites.get(name, 0) + count
            if all(run is not None for run in finished):
                weights.log_weights = weights.log_weights + increments
                break
            step += 1
            index = weights.step(f"observe {step}", increments)
            if index is not None:
                chosen = index.tolist()
                pasts = [pasts[j] for j in chosen]
                finished = [finished[j] for j in chosen]
        self._check_observe_sites(observe_sites)
        runs = [run for run in finished if run is not None]
        traces, sizes, order = group_traces([run.model_trace for run in runs], distributions=False)
        weights.history.eve = weights.history.eve[order]
        log_weights = weights.final()[order]
        return SMCPosterior(
            traces, sizes, log_weights, weights.history, invalid_sites=invalid_sites
        )


def _tensors(value: Any) -> list[Tensor]:
    """The tensors in a return value: itself, or those in a tuple, list or dict of them."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [tensor for item in value for tensor in _tensors(item)]
    return []


def _close(fresh: Tensor, recorded: Tensor) -> Tensor:
    """Elementwise: ``fresh`` equals ``recorded`` up to float error (NaNs and infinities
    equal to themselves)."""
    same = torch.isclose(fresh.double(), recorded.double(), rtol=1e-4, atol=1e-4, equal_nan=True)
    return same | (fresh == recorded)  # equal infinities


_NOT_DETERMINISTIC = (
    "no resampling came before that site, so no stale value can explain it: the program "
    "is not a function of its sampled values (randomness outside sample statements, such "
    "as torch.randn, or state kept between runs). Make that randomness a sample site; or, "
    "if it is meant and used only until the next observe statement, pass check=False"
)
_RULE = (
    "a vectorized program's state that crosses an observe statement (what it returns "
    "included) must be a sampled value, since resampling re-indexes the sampled values in "
    "place but cannot update values derived from them: compute derived values from the "
    "sampled values after the observe statement (a running total: at the end), or run "
    "particle by particle with vectorize=False"
)
