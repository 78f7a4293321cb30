"""Streaming importance sampling: more particles than fit in memory, in chunks.

Chunks of particles are drawn and weighed one after another and folded into running
summaries, so memory stays that of one chunk however many particles there are:

- the evidence: ``log Σ w`` and ``log Σ w²`` by running log-sum-exp (hence
  ``log Ẑ = log Σ w - log N``, ``ESS = (Σ w)² / Σ w²`` and the error of ``log Ẑ``);
- weighted means and variances per site, merged chunk by chunk (Chan, Golub & LeVeque)
  with weights rescaled to the running maximum log weight;
- the ``M + 1`` largest log weights, for the Pareto k-hat of all N weights;
- a multinomial resample of fixed size K: each of K slots holds a particle, and a new
  chunk replaces it with probability ``W_chunk / (W_seen + W_chunk)``, with a particle
  of the chunk drawn in proportion to its weight. Each slot's final particle is then a
  draw with probability ``w_i / Σ_j w_j`` over the whole stream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from infcomp import diagnostics
from infcomp.errors import InferenceWarning, ModelError
from infcomp.inference.common import Program, check_positive_int, warn_user
from infcomp.inference.importance import Options, prepare
from infcomp.posterior import Posterior, StreamedPosterior
from infcomp.resampling import multinomial_indices
from infcomp.runtime import Site, Trace

if TYPE_CHECKING:
    from typing_extensions import Unpack


def importance_stream(
    model: Program,
    data: Mapping[str, Any] | None = None,
    num_particles: int | None = None,
    *,
    chunk_size: int = 10**6,
    keep: int = 1000,
    sites: Sequence[str] | None = None,
    **options: Unpack[Options],
) -> StreamedPosterior:
    """Importance sampling with ``num_particles`` particles in chunks of ``chunk_size``.

    The weights are those of :func:`~infcomp.importance`; what is kept is summarized in
    the module docstring. Memory is bounded by one chunk, whatever ``num_particles``.

    Args:
        num_particles: the total number of particles N (default 10⁸; ``num_samples=`` is
            its deprecated name).
        chunk_size: particles per chunk (the last may be smaller).
        keep: the size K of the equally weighted resample kept from the whole stream.
        sites: the latent sites whose moments and resampled values are kept (default:
            every latent site of the first chunk); each must occur in every particle.
        Others: as in :func:`~infcomp.importance`.

    Example:
        >>> import infcomp as ic
        >>> from infcomp.examples.gaussian import gaussian
        >>> post = ic.importance_stream(gaussian, {"x1": 8.0, "x2": 9.0}, 10**6, chunk_size=10**5)
        >>> post.samples.values("z").shape
        torch.Size([1000])
    """
    engine, observed, num_particles = prepare(model, data, num_particles, options, False, 10**8)
    num_particles = check_positive_int("num_particles", num_particles)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    keep = check_positive_int("keep", keep)
    summary = _Accumulator(num_particles, keep, sites)
    done = 0
    with torch.no_grad():
        while done < num_particles:
            size = min(chunk_size, num_particles - done)
            run = engine.run(observed, size)
            summary.add(Posterior(run.traces, run.sizes, run.log_weights, run.nonfinite_sites))
            done += size
    result = summary.result()
    for problem in result.problems():
        warn_user(problem, InferenceWarning)
    return result


class _Accumulator:
    """Running summaries of a stream of weighted particles (see the module docstring)."""

    def __init__(self, num_particles: int, keep: int, sites: Sequence[str] | None) -> None:
        self.num_particles = num_particles
        self.keep = keep
        self.sites = list(sites) if sites is not None else None
        self.count = 0
        self.log_sum = torch.tensor(-math.inf, dtype=torch.float64)
        self.log_sum_squares = torch.tensor(-math.inf, dtype=torch.float64)
        self.reference = -math.inf  # the largest finite log weight so far
        self.total = 0.0  # Σ exp(log w - reference)
        self.means: dict[str, Tensor] = {}
        self.squares: dict[str, Tensor] = {}  # Σ w (f - mean)², scaled like total
        self.kept: dict[str, Tensor] = {}
        self.top = torch.empty(0, dtype=torch.float64)
        self.tail = min(diagnostics.pareto_tail_length(num_particles) + 1, num_particles)
        self.nan = self.posinf = self.neginf = 0
        self.nonfinite_sites: dict[str, int] = {}

    def add(self, chunk: Posterior) -> None:
        log_weights = chunk.log_weights
        self.count += chunk.num_particles
        self.nan += chunk.num_nan_weights
        self.posinf += chunk.num_infinite_weights
        self.neginf += chunk.num_zero_weights
        for name, bad in chunk.nonfinite_sites.items():
            self.nonfinite_sites[name] = self.nonfinite_sites.get(name, 0) + bad
        self.log_sum = torch.logaddexp(self.log_sum, torch.logsumexp(log_weights, 0))
        self.log_sum_squares = torch.logaddexp(
            self.log_sum_squares, torch.logsumexp(2 * log_weights, 0)
        )
        both = torch.cat([self.top, log_weights])
        self.top = torch.topk(both, min(self.tail, both.numel())).values
        if self.sites is None:
            self.sites = _latent_sites(chunk)
        if self.nan or self.posinf:
            # Counted above; every estimate of the stream is NaN now.
            for name in self.sites:
                shape = chunk.values(name).shape[1:]
                self.means.setdefault(name, torch.full(shape, math.nan, dtype=torch.float64))
                self.squares.setdefault(name, torch.full(shape, math.nan, dtype=torch.float64))
            return
        finite = log_weights[torch.isfinite(log_weights)]
        if finite.numel() == 0:
            return  # zero weights change no summary
        chunk_max = float(finite.max())
        reference = max(self.reference, chunk_max)
        seen = self.total * math.exp(self.reference - reference) if self.total else 0.0
        weights = (log_weights - reference).exp()
        chunk_total = float(weights.sum())
        combined = seen + chunk_total
        for name in self.sites:
            # The chunk's own weighted moments, then Chan's update merges them.
            values = chunk.values(name)
            chunk_mean = diagnostics.weighted_mean(values, log_weights)
            chunk_variance = diagnostics.weighted_variance(values, log_weights, chunk_mean)
            chunk_squares = chunk_variance * chunk_total  # Σ w (f - mean)², scaled like total
            if name not in self.means or not seen:
                self.means[name], self.squares[name] = chunk_mean, chunk_squares
            else:
                delta = chunk_mean - self.means[name]
                scale = math.exp(self.reference - reference)
                self.means[name] = self.means[name] + delta * (chunk_total / combined)
                self.squares[name] = (
                    self.squares[name] * scale
                    + chunk_squares
                    + delta**2 * seen * chunk_total / combined
                )
        self._resample(chunk, weights, seen, chunk_total)
        self.reference, self.total = reference, combined

    def _resample(self, chunk: Posterior, weights: Tensor, seen: float, chunk_total: float) -> None:
        assert self.sites is not None
        if not self.kept:
            replace = torch.ones(self.keep, dtype=torch.bool)
        else:
            replace = torch.rand(self.keep, dtype=torch.float64) < chunk_total / (
                seen + chunk_total
            )
        count = int(replace.sum())
        if count == 0:
            return
        index = multinomial_indices(weights, count)
        for name in self.sites:
            chosen = chunk.values(name)[index]
            if name not in self.kept:
                self.kept[name] = chosen.new_empty((self.keep,) + chosen.shape[1:])
            self.kept[name][replace] = chosen

    def result(self) -> StreamedPosterior:
        assert self.sites is not None
        if self.nan or self.posinf:
            nan = torch.tensor(math.nan, dtype=torch.float64)
            means = {name: torch.full_like(m, math.nan) for name, m in self.means.items()}
            variances = dict(means)
            log_sum, log_sum_squares = nan, nan
        else:
            means = self.means
            variances = {n: s / self.total for n, s in self.squares.items()} if self.total else {}
            log_sum, log_sum_squares = self.log_sum, self.log_sum_squares
        samples = None
        if self.kept:
            trace = Trace(batch_ndim=1)
            for name, value in self.kept.items():
                trace.add(Site(name, "sample", None, value))
            log_evidence = log_sum - math.log(self.count)
            samples = Posterior([trace], [self.keep], log_evidence.expand(self.keep))
        khat = (
            diagnostics.pareto_khat(self.top, self.count)
            if not (self.nan or self.posinf)
            else torch.tensor(math.nan if self.nan else math.inf, dtype=torch.float64)
        )
        return StreamedPosterior(
            num_particles=self.count,
            log_sum_weights=log_sum,
            log_sum_squared_weights=log_sum_squares,
            khat=khat,
            means=means,
            variances=variances,
            samples=samples,
            num_nan_weights=self.nan,
            num_infinite_weights=self.posinf,
            num_zero_weights=self.neginf,
            nonfinite_sites=self.nonfinite_sites,
        )


def _latent_sites(chunk: Posterior) -> list[str]:
    names = [name for name, site in chunk.traces[0].sites.items() if site.kind == "sample"]
    missing = [n for n in names if not all(n in trace for trace in chunk.traces)]
    if missing:
        raise ModelError(
            f"sites {missing} do not occur in every particle; name the sites to keep with "
            f"sites=[...]"
        )
    return names
