"""The weighted posterior: importance-sampled traces and what users ask of them.

A :class:`Posterior` holds N particles (traces x_i with log weights log w_i) and
answers, with normalized weights ``w̄ = softmax(log w)``:

- expectations ``E[f] ≈ sum_i w̄_i f(x_i)``: :meth:`Posterior.mean`, ``variance``,
  ``std``, weighted :meth:`Posterior.quantile`, for a site or any function of a trace,
  with the Monte Carlo standard error of the mean and std (:meth:`Posterior.mcse`);
- the evidence ``log Ẑ = logsumexp(log w) - log N`` with its standard error;
- ``ESS = (sum w)^2 / sum w^2`` and the Pareto k-hat diagnostic;
- resampling into an equally weighted posterior, and marginals as distributions.

Particles whose traces have the same structure are stored together, batched along a
leading dimension; a program with varying structure gives several such groups.

The statistics themselves (weighted moments and quantiles, the diagnostics and the
problems report) are the pure functions of :mod:`infcomp.diagnostics`; the classes here
hold the particles and say which values to give them.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from infcomp import diagnostics
from infcomp._deprecation import renamed_argument, warn_renamed
from infcomp.empirical import Empirical
from infcomp.errors import ModelError
from infcomp.resampling import multinomial_indices, systematic_indices
from infcomp.runtime import Site, Trace
from infcomp.traces import index_trace

Quantity = str | Callable[[Trace], Tensor]
"""A site name, or a function of a trace whose result has a leading particle dimension."""

#: Below this ESS/N a posterior warns that almost all its weight sits on few particles
#: (defined in :mod:`infcomp.diagnostics`, with the rest of the problems report).
MIN_ESS_FRACTION = diagnostics.MIN_ESS_FRACTION


class WeightedParticles:
    """Weight diagnostics shared by the posteriors: everything reduces over the particle
    dimension 0 of :attr:`log_weights`, trailing dimensions (data sets) are kept."""

    log_weights: Tensor

    #: Whether :meth:`problems` judges the weights by their Pareto k-hat (not for
    #: sequential Monte Carlo, whose final weights are not importance weights).
    khat_diagnostic = True

    @property
    def num_particles(self) -> int:
        """The number of particles N (per data set, for a batch)."""
        return self.log_weights.shape[0]

    @property
    def num_samples(self) -> int:
        """Deprecated name of :attr:`num_particles`."""
        name = type(self).__name__
        warn_renamed(f"{name}.num_samples", f"{name}.num_particles")
        return self.num_particles

    @functools.cached_property
    def weights(self) -> Tensor:
        """Normalized weights ``w̄ = softmax(log w)`` over the particles."""
        return diagnostics.normalized_weights(self.log_weights)

    def _mcse_of(self, values: Tensor, method: str) -> Tensor:
        """``mcse`` of values ``(N, ...)``, over the particles (sequential Monte Carlo's
        follows the genealogy: :func:`~infcomp.inference.smc.genealogy_mcse`)."""
        return _mcse(values, self.log_weights, method)

    @functools.cached_property
    def ess(self) -> Tensor:
        """Kish's effective sample size ``(sum w)^2 / sum w^2``, between 1 and N.

        It ignores the quantity estimated: quote :meth:`Posterior.mcse` as the error of
        an estimate (see :func:`~infcomp.diagnostics.effective_sample_size` for what
        the ESS does and does not promise)."""
        return diagnostics.effective_sample_size(self.log_weights)

    @functools.cached_property
    def log_evidence(self) -> Tensor:
        """``log Ẑ = logsumexp(log w) - log N``, the log of an unbiased estimate of p(y)."""
        return diagnostics.log_evidence(self.log_weights)

    @functools.cached_property
    def log_evidence_stderr(self) -> Tensor:
        """Monte Carlo standard error of ``log Ẑ``: ``sqrt(1/ESS - 1/N)`` (delta method)."""
        return diagnostics.log_evidence_stderr(self.log_weights)

    @functools.cached_property
    def khat(self) -> Tensor:
        """Pareto k-hat of the weights (Vehtari et al., JMLR 2024); reliable below
        ``khat_threshold``, hopeless above 1."""
        return diagnostics.pareto_khat(self.log_weights)

    @property
    def khat_threshold(self) -> float:
        """The sample-size-dependent k-hat threshold ``min(1 - 1/log10 N, 0.7)``."""
        return diagnostics.khat_threshold(self.log_weights.shape[0])


class Posterior(WeightedParticles):
    """N weighted particles from importance sampling.

    Args:
        traces: groups of particles, each a trace whose values carry one leading
            particle dimension; the particles are the groups' concatenation.
        sizes: the number of particles in each group.
        log_weights: ``log w_i``, shape ``(N,)``, in the order of the groups.
        nonfinite_sites: for reporting, how many particles got a NaN or +inf log
            density at each site.
        invalid_sites: for reporting, how many particles met a distribution with
            invalid parameters (a scale of 0) at each site; their weight is zero.

    Example:
        >>> import torch
        >>> import infcomp as ic
        >>> from infcomp.examples.gaussian import gaussian, DATA
        >>> _ = torch.manual_seed(0)
        >>> post = ic.importance(gaussian, DATA, 50_000)
        >>> post  # doctest: +ELLIPSIS
        Posterior(num_particles=50000, ess=..., log_evidence=...)
        >>> print(f"{float(post.mean('z')):.2f} ± {float(post.std('z')):.2f}")
        7.27 ± 0.91
        >>> round(float(post.mcse("z")), 3)  # the Monte Carlo error of that mean (exact: 7.25)
        0.044
        >>> post.quantile("z", [0.05, 0.95]).round(decimals=1)
        tensor([5.8000, 8.7000], dtype=torch.float64)
        >>> post.problems()
        []
    """

    def __init__(
        self,
        traces: Sequence[Trace],
        sizes: Sequence[int],
        log_weights: Tensor,
        nonfinite_sites: dict[str, int] | None = None,
        invalid_sites: dict[str, int] | None = None,
    ) -> None:
        self.traces = list(traces)
        self.log_weights = log_weights.to(torch.float64)
        self.sizes = [int(size) for size in sizes]
        if len(self.sizes) != len(self.traces):
            raise ValueError(f"{len(self.traces)} trace groups but {len(self.sizes)} sizes")
        if sum(self.sizes) != self.log_weights.numel() or self.log_weights.dim() != 1:
            raise ValueError(
                f"{sum(self.sizes)} particles in the traces but log weights of shape "
                f"{tuple(self.log_weights.shape)}"
            )
        self.nonfinite_sites = dict(nonfinite_sites or {})
        self.invalid_sites = dict(invalid_sites or {})

    # -- weights and diagnostics -------------------------------------------------------

    @property
    def num_nan_weights(self) -> int:
        """How many log weights are NaN (kept: they make the estimates NaN)."""
        return int(torch.isnan(self.log_weights).sum())

    @property
    def num_infinite_weights(self) -> int:
        """How many log weights are +inf (kept: they make the estimates NaN)."""
        return int(torch.isposinf(self.log_weights).sum())

    @property
    def num_zero_weights(self) -> int:
        """How many log weights are -inf: particles the data rule out."""
        return int(torch.isneginf(self.log_weights).sum())

    def problems(self) -> list[str]:
        """Reasons not to trust this posterior as it is; empty when none are found.

        Checks NaN and +inf weights (naming the sites that produced them), weights
        that are all zero, ``ESS/N < MIN_ESS_FRACTION`` and ``k̂`` above its threshold:
        :func:`~infcomp.diagnostics.weight_problems`.
        """
        return _problems(self)

    # -- quantities --------------------------------------------------------------------

    def values(self, quantity: Quantity) -> Tensor:
        """The particles' values of a site (or of a function of the trace), shape ``(N, ...)``.

        Args:
            quantity: a site name, or a function that takes a trace (values with a
                leading particle dimension) and returns a tensor with that dimension.
        """
        parts = [
            self._group_values(trace, size, quantity)
            for trace, size in zip(self.traces, self.sizes)
        ]
        shapes = {part.shape[1:] for part in parts}
        if len(shapes) > 1:
            raise ModelError(
                f"{_describe(quantity)} has different shapes in different particles "
                f"({sorted(tuple(s) for s in shapes)}); use a function of the trace that "
                f"returns one shape"
            )
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _group_values(self, trace: Trace, size: int, quantity: Quantity) -> Tensor:
        if isinstance(quantity, str):
            if quantity not in trace:
                having = sum(s for t, s in zip(self.traces, self.sizes) if quantity in t)
                raise ModelError(
                    f"site {quantity!r} is present in {having} of {self.num_particles} particles; "
                    f"for programs whose sites vary between particles, ask for a function of "
                    f"the trace, e.g. post.mean(lambda trace: ...)"
                )
            value = trace[quantity].value
        else:
            value = quantity(trace)
        if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != size:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ModelError(
                f"{_describe(quantity)} gave {shape}; expected a tensor with a leading "
                f"particle dimension of {size}"
            )
        return value

    def mean(self, quantity: Quantity) -> Tensor:
        """Self-normalized estimate ``E[f] ≈ sum_i w̄_i f(x_i)``, in float64."""
        return diagnostics.weighted_mean(self.values(quantity), self.log_weights)

    expectation = mean

    def variance(self, quantity: Quantity) -> Tensor:
        """``Var[f] ≈ sum_i w̄_i (f(x_i) - E[f])^2``, in float64."""
        return diagnostics.weighted_variance(self.values(quantity), self.log_weights)

    def std(self, quantity: Quantity) -> Tensor:
        """Square root of :meth:`variance`."""
        return self.variance(quantity).sqrt()

    def mcse(self, quantity: Quantity, method: Literal["mean", "sd"] = "mean") -> Tensor:
        """Monte Carlo standard error of :meth:`mean` (``method="mean"``) or :meth:`std`
        (``"sd"``), elementwise, in float64.

        For the mean, ``sqrt(sum_i w̄_i² (f(x_i) - E[f])²)``, the delta-method error of a
        self-normalized estimate (Owen 2013, ch. 9): :func:`~infcomp.diagnostics.mcse_mean`
        and :func:`~infcomp.diagnostics.mcse_sd`. Prefer it to ``std / sqrt(ESS)``, which
        ignores how ``f`` and the weights vary together and can be several times too
        small, e.g. for the probability of a rare discrete assignment. Sequential Monte
        Carlo's (:class:`~infcomp.inference.smc.SMCPosterior`) follows the particles'
        genealogy instead (:func:`~infcomp.inference.smc.genealogy_mcse`).

        Raises:
            ValueError: ``method`` is neither "mean" nor "sd".
        """
        return self._mcse_of(self.values(quantity), method)

    def quantile(self, quantity: Quantity, probs: float | Sequence[float] | Tensor) -> Tensor:
        """Weighted quantiles, elementwise: the smallest value v with ``sum_{x_i <= v} w̄_i >= q``.

        Returns shape ``probs.shape + value shape``; see
        :func:`~infcomp.diagnostics.weighted_quantile`.
        """
        return diagnostics.weighted_quantile(self.values(quantity), self.log_weights, probs)

    def marginal(self, quantity: Quantity) -> Empirical:
        """The weighted marginal of a site or function, as a distribution."""
        return Empirical(self.values(quantity), self.log_weights)

    # -- resampling --------------------------------------------------------------------

    def resample(
        self,
        num_particles: int | None = None,
        method: Literal["systematic", "multinomial"] = "systematic",
        *,
        num_samples: int | None = None,
    ) -> Posterior:
        """An equally weighted posterior of ``num_particles`` particles (default N).

        Particles are drawn in proportion to their weights, systematically (less
        variance) or multinomially (independent draws). The result keeps the log
        evidence estimate: all its log weights equal ``log Ẑ``. ``num_samples`` is the
        deprecated name of ``num_particles``.
        """
        num_particles = renamed_argument("num_samples", num_samples, "num_particles", num_particles)
        n = self.num_particles if num_particles is None else num_particles
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        n = int(n)
        if method == "systematic":
            index = systematic_indices(self.weights, n)
        elif method == "multinomial":
            index = multinomial_indices(self.weights, n)
        else:
            raise ValueError(f"method must be 'systematic' or 'multinomial', got {method!r}")
        return self.select(index, log_weights=self.log_evidence.expand(n))

    def select(self, index: Tensor, log_weights: Tensor | None = None) -> Posterior:
        """The particles ``index`` (into 0..N-1), with their own or the given log weights."""
        index = index.to(torch.long)
        traces, sizes, order = [], [], []
        start = 0
        for trace, size in zip(self.traces, self.sizes):
            chosen = torch.nonzero((index >= start) & (index < start + size)).squeeze(1)
            if chosen.numel():
                traces.append(index_trace(trace, index[chosen] - start))
                sizes.append(chosen.numel())
                order.append(chosen)
            start += size
        positions = torch.cat(order)
        weights = self.log_weights[index] if log_weights is None else log_weights
        return Posterior(traces, sizes, weights[positions])

    # -- reporting ---------------------------------------------------------------------

    def to_arviz(self, num_draws: int | None = None, sites: Sequence[str] | None = None) -> Any:
        """This posterior as an ``arviz.InferenceData``: ``num_draws`` (default N)
        equally weighted draws, resampled systematically, in the ``posterior`` group (ArviZ
        weighs every draw equally); all N particles' log weights in ``sample_stats``
        (``log_weight``, dimension ``particle``); the observations in ``observed_data``;
        ESS, log evidence ± its error and k-hat as attributes. See :mod:`infcomp.export`.

        Raises:
            ImportError: ArviZ is not installed (``pip install 'infcomp[arviz]'``).
            ValueError: ``num_draws`` is not a positive integer.
            ModelError: a site that some particles lack.

        Example:
            >>> import torch
            >>> import infcomp as ic
            >>> from infcomp.examples.gaussian import gaussian, DATA
            >>> _ = torch.manual_seed(0)
            >>> data = ic.importance(gaussian, DATA, 10_000).to_arviz()
            >>> data.posterior["z"].shape, data.sample_stats["log_weight"].shape
            ((1, 10000), (1, 10000))
        """
        from infcomp.export import to_inference_data

        return to_inference_data(self, num_draws, None if sites is None else list(sites))

    def summary(self, sites: str | Sequence[str] | None = None) -> str:
        """A text table, one row per element of each site (``w[0]``, ``w[1]``, ... for a
        vector site), then the diagnostics.

        Columns: mean, std, their Monte Carlo standard errors ``mcse_mean`` and ``mcse_sd``
        (:meth:`mcse`), and the 5/50/95% quantiles. ``sites`` (a name or a list of names)
        defaults to the latent sites present in every particle.

        Raises:
            ModelError: a site that some particles lack (as :meth:`values`).
        """
        if sites is None:
            names = self._latent_names()
        else:
            names = [sites] if isinstance(sites, str) else list(sites)
        rows = []
        for name in names:
            values = self.values(name)
            flat = values.reshape(values.shape[0], -1)  # (N, elements)
            statistics = [
                diagnostics.weighted_mean(flat, self.log_weights),
                diagnostics.weighted_variance(flat, self.log_weights).sqrt(),
                self._mcse_of(flat, "mean"),
                self._mcse_of(flat, "sd"),
                *diagnostics.weighted_quantile(flat, self.log_weights, [0.05, 0.5, 0.95]),
            ]
            for column, label in enumerate(_element_labels(name, values.shape[1:])):
                rows.append((label, [float(statistic[column]) for statistic in statistics]))
        width = max([12, *(len(label) for label, _ in rows)])
        columns = ["mean", "std", "mcse_mean", "mcse_sd", "5%", "50%", "95%"]
        lines = [f"{'site':>{width}} " + " ".join(f"{column:>10}" for column in columns)]
        for label, row in rows:
            lines.append(f"{label:>{width}} " + " ".join(f"{number:10.4f}" for number in row))
        lines.append(
            f"N = {self.num_particles}, ESS = {float(self.ess):.1f}, "
            f"log Z = {float(self.log_evidence):.4f} ± {float(self.log_evidence_stderr):.4f}, "
            f"k-hat = {_khat_text(float(self.khat))}"
        )
        return "\n".join(lines)

    def _latent_names(self) -> list[str]:
        names: list[str] = []
        for trace in self.traces:
            for name, site in trace.sites.items():
                latent = site.kind == "sample" and site.value is not None
                if latent and name not in names and all(name in t for t in self.traces):
                    names.append(name)
        return names

    def __repr__(self) -> str:
        return (
            f"Posterior(num_particles={self.num_particles}, ess={float(self.ess):.1f}, "
            f"log_evidence={float(self.log_evidence):.4f})"
        )


def EmpiricalMarginal(posterior: Posterior, sites: Quantity) -> Empirical:  # noqa: N802
    """Pyro's name for a posterior's marginal: ``posterior.marginal(sites)``.

    Pyro's ``EmpiricalMarginal(trace_posterior, sites)`` makes the weighted
    distribution of a site's values; here that is :meth:`Posterior.marginal`, which
    this calls, so that code ported from Pyro keeps working. ``sites`` is one site name
    (or a function of the trace); for several sites ask for each one.

    Example:
        >>> import torch
        >>> import infcomp as ic
        >>> from infcomp.examples.gaussian import gaussian, DATA
        >>> from infcomp.posterior import EmpiricalMarginal
        >>> _ = torch.manual_seed(0)
        >>> marginal = EmpiricalMarginal(ic.importance(gaussian, DATA, 50_000), "z")
        >>> round(float(marginal.mean), 2), round(float(marginal.variance), 2)
        (7.27, 0.84)
    """
    if isinstance(sites, (list, tuple)):
        raise ValueError(f"EmpiricalMarginal takes one site, got {list(sites)}")
    return posterior.marginal(sites)


def _khat_text(khat: float) -> str:
    """k-hat for a summary: ``-`` where it is not computable (NaN, or -inf for equal
    weights)."""
    return f"{khat:.2f}" if math.isfinite(khat) else "-"


def _problems(posterior: Posterior | StreamedPosterior) -> list[str]:
    """The problems report of one posterior, from its counts and diagnostics."""
    khat_diagnostic = getattr(posterior, "khat_diagnostic", True)
    problems = diagnostics.weight_problems(
        posterior.num_particles,
        posterior.ess,
        posterior.khat if khat_diagnostic else None,
        posterior.num_nan_weights,
        posterior.num_infinite_weights,
        posterior.num_zero_weights,
        posterior.nonfinite_sites,
    )
    invalid = getattr(posterior, "invalid_sites", {})
    if invalid:
        sites = ", ".join(f"{name!r} ({count})" for name, count in invalid.items())
        problems.append(
            f"particles met distributions with invalid parameters (weight zero) at sites "
            f"{sites}: the posterior is conditioned on valid parameters"
        )
    return problems


def _element_labels(name: str, shape: torch.Size) -> list[str]:
    """``name`` for a scalar, else one label per element in row-major order: ``w[0,1]``."""
    if not shape:
        return [name]
    return [
        f"{name}[{','.join(map(str, index))}]"
        for index in itertools.product(*(range(size) for size in shape))
    ]


def _mcse(values: Tensor, log_weights: Tensor, method: str) -> Tensor:
    """The Monte Carlo standard error of the weighted mean or sd (see Posterior.mcse)."""
    if method == "mean":
        return diagnostics.mcse_mean(values, log_weights)
    if method == "sd":
        return diagnostics.mcse_sd(values, log_weights)
    raise ValueError(f"method must be 'mean' or 'sd', got {method!r}")


def _describe(quantity: Quantity) -> str:
    if isinstance(quantity, str):
        return f"site {quantity!r}"
    return f"function {getattr(quantity, '__name__', repr(quantity))}"


class BatchPosterior(WeightedParticles):
    """Posteriors for B data sets from one batched run of N particles each.

    Weights, diagnostics and moments are computed for all data sets at once, over the
    particle dimension: ``log_evidence``, ``ess``, ``log_evidence_stderr`` and ``khat``
    have shape ``(B,)``; ``mean(site)`` has shape ``(B, ...)``. ``batch[b]`` (or
    :meth:`posterior`) is data set b's :class:`Posterior`.

    Args:
        log_weights: shape ``(N, B)``.
        trace: the batched trace (values ``(N, B, ...)``) of a vectorized run, or
        posteriors: one :class:`Posterior` per data set (a run trace by trace).
    """

    def __init__(
        self,
        log_weights: Tensor,
        trace: Trace | None = None,
        posteriors: Sequence[Posterior] | None = None,
    ) -> None:
        if log_weights.dim() != 2:
            raise ValueError(f"log weights must have shape (N, B), got {tuple(log_weights.shape)}")
        if (trace is None) == (posteriors is None):
            raise ValueError("give either the batched trace or the per-data-set posteriors")
        self.log_weights = log_weights.to(torch.float64)
        self.trace = trace
        self._posteriors = list(posteriors) if posteriors is not None else None

    @property
    def num_datasets(self) -> int:
        """The number of data sets, B."""
        return self.log_weights.shape[1]

    def __len__(self) -> int:
        return self.num_datasets

    def posterior(self, index: int) -> Posterior:
        """Data set ``index``'s weighted posterior."""
        if not -self.num_datasets <= index < self.num_datasets:
            raise IndexError(f"data set {index} of {self.num_datasets}")
        if self._posteriors is not None:
            return self._posteriors[index]
        assert self.trace is not None
        single = Trace(batch_ndim=1)
        for name, site in self.trace.sites.items():
            assert site.value is not None
            single.add(Site(name, site.kind, None, site.value[:, index]))
        returned = self.trace.return_value
        if isinstance(returned, Tensor) and returned.dim() >= 2:
            single.return_value = returned[:, index]
        return Posterior([single], [self.num_particles], self.log_weights[:, index])

    __getitem__ = posterior

    def values(self, quantity: Quantity) -> Tensor:
        """Values of a site or function for every particle and data set, ``(N, B, ...)``
        (a vectorized run only; otherwise ask each :meth:`posterior`)."""
        if self.trace is None:
            raise ModelError(
                "this batch ran trace by trace: ask each data set's posterior (batch[b])"
            )
        value = self.trace[quantity].value if isinstance(quantity, str) else quantity(self.trace)
        if not isinstance(value, Tensor) or tuple(value.shape[:2]) != tuple(self.log_weights.shape):
            raise ModelError(
                f"{_describe(quantity)} gave no tensor with leading dimensions "
                f"{tuple(self.log_weights.shape)} (particles, data sets)"
            )
        return value

    def mean(self, quantity: Quantity) -> Tensor:
        """``E_b[f] ≈ sum_i w̄_ib f(x_ib)`` for every data set, shape ``(B, ...)``."""
        if self.trace is None:
            assert self._posteriors is not None
            return torch.stack([p.mean(quantity) for p in self._posteriors])
        return diagnostics.weighted_mean(self.values(quantity), self.log_weights)

    def variance(self, quantity: Quantity) -> Tensor:
        """``Var_b[f]`` for every data set, shape ``(B, ...)``."""
        if self.trace is None:
            assert self._posteriors is not None
            return torch.stack([p.variance(quantity) for p in self._posteriors])
        return diagnostics.weighted_variance(self.values(quantity), self.log_weights)

    def std(self, quantity: Quantity) -> Tensor:
        """Square root of :meth:`variance`."""
        return self.variance(quantity).sqrt()

    def mcse(self, quantity: Quantity, method: Literal["mean", "sd"] = "mean") -> Tensor:
        """:meth:`Posterior.mcse` for every data set, shape ``(B, ...)``."""
        if self.trace is None:
            assert self._posteriors is not None
            return torch.stack([p.mcse(quantity, method) for p in self._posteriors])
        return self._mcse_of(self.values(quantity), method)

    def problems(self) -> str:
        """One line summarizing the data sets whose results look unreliable, or ``""``.

        The checks of :meth:`Posterior.problems`, counted over the data sets
        (:func:`~infcomp.diagnostics.weight_problems` with a batch dimension).
        """
        log_weights = self.log_weights
        counts = diagnostics.weight_problems(
            self.num_particles,
            self.ess,
            self.khat if self.khat_diagnostic else None,
            torch.isnan(log_weights).sum(0),
            torch.isposinf(log_weights).sum(0),
            torch.isneginf(log_weights).sum(0),
        )
        if not counts:
            return ""
        return f"of {self.num_datasets} data sets: " + ", ".join(counts)

    def __repr__(self) -> str:
        return (
            f"BatchPosterior(num_datasets={self.num_datasets}, num_particles={self.num_particles})"
        )


@dataclass
class StreamedPosterior:
    """What streaming importance sampling keeps of N particles (see
    :func:`~infcomp.inference.streaming.importance_stream`): sums of the weights,
    weighted moments per site, k-hat, and an equally weighted resample.

    Attributes:
        num_particles: N (``num_samples`` is its deprecated name).
        log_sum_weights, log_sum_squared_weights: ``log Σ w`` and ``log Σ w²``.
        khat: Pareto k-hat of all N weights (from the largest ones).
        means, variances: weighted moments per kept site.
        samples: K particles resampled from the whole stream (equal weights), or None
            when there is nothing to resample from: every weight zero, or some weight NaN
            or +inf (then every estimate is NaN too).
        num_nan_weights, num_infinite_weights, num_zero_weights: as for
            :class:`Posterior`; nonfinite_sites names where NaN or +inf arose.
    """

    num_particles: int
    log_sum_weights: Tensor
    log_sum_squared_weights: Tensor
    khat: Tensor
    means: dict[str, Tensor]
    variances: dict[str, Tensor]
    samples: Posterior | None
    num_nan_weights: int = 0
    num_infinite_weights: int = 0
    num_zero_weights: int = 0
    nonfinite_sites: dict[str, int] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        """Deprecated name of :attr:`num_particles`."""
        warn_renamed("StreamedPosterior.num_samples", "StreamedPosterior.num_particles")
        return self.num_particles

    @property
    def log_evidence(self) -> Tensor:
        """``log Ẑ = log Σ w - log N``."""
        return self.log_sum_weights - math.log(self.num_particles)

    @property
    def ess(self) -> Tensor:
        """``(Σ w)² / Σ w²``."""
        return (2 * self.log_sum_weights - self.log_sum_squared_weights).exp()

    @property
    def log_evidence_stderr(self) -> Tensor:
        """``sqrt(1/ESS - 1/N)``, as for :class:`Posterior`."""
        return (1 / self.ess - 1 / self.num_particles).clamp(min=0).sqrt()

    @property
    def khat_threshold(self) -> float:
        return diagnostics.khat_threshold(self.num_particles)

    def _moment(self, table: dict[str, Tensor], name: str) -> Tensor:
        if name not in table:
            raise ModelError(f"site {name!r} was not kept; the kept sites are {sorted(table)}")
        return table[name]

    def mean(self, name: str) -> Tensor:
        """The weighted mean of a kept site over all N particles."""
        return self._moment(self.means, name)

    def variance(self, name: str) -> Tensor:
        """The weighted variance of a kept site over all N particles."""
        return self._moment(self.variances, name)

    def std(self, name: str) -> Tensor:
        """Square root of :meth:`variance`."""
        return self.variance(name).sqrt()

    def problems(self) -> list[str]:
        """As :meth:`Posterior.problems`, with the same messages."""
        return _problems(self)
