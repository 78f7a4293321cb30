"""Calibration of (amortized) weighted posteriors: simulation-based calibration and coverage.

If the posterior approximation q(θ | y) is correct, then for θ* ~ p(θ), y ~ p(y | θ*) the
true θ* is just another draw from q(· | y). Two consequences are checked, for each scalar
latent (each element of each latent site), over B simulated data sets:

- **Rank statistics** (simulation-based calibration, SBC: Talts, Betancourt, Simpson,
  Vehtari & Gelman, arXiv:1804.06788, 2018): with L draws θ̃_1..L from the posterior,
  the rank ``r = #{l : θ̃_l < θ*}`` is uniform on {0, ..., L}. For a weighted posterior
  the L draws are resampled multinomially from the particles with probabilities
  ``w̄ = softmax(log w)`` (i.i.d. from the weighted empirical distribution); ties (a
  discrete latent) are broken uniformly at random, which keeps the rank uniform.
  Uniformity is tested with Pearson's χ² test on the ranks binned into ``num_bins``
  equal bins (Talts et al., §4.1: the histogram's bins have Binomial(B, 1/bins)
  counts): ``X² = Σ_j (O_j - B/bins)² / (B/bins)``, p-value ``P(χ²_{bins-1} > X²)``.
  A posterior too narrow gives a ∪-shaped histogram, one biased a slope, one too wide
  a ∩ shape.
- **Expected coverage** of central credible intervals: the fraction of data sets whose
  θ* lies in ``[q_{(1-a)/2}, q_{(1+a)/2}]`` (weighted quantiles) should be ``a`` for
  every level a, within the binomial error ``sqrt(a (1 - a) / B)``. For a discrete
  latent the closed interval holds its endpoints' whole mass, so it covers *at least* a.
  :meth:`Calibration.passed` fails a coverage more than 3 standard errors below a.

All B data sets are inferred in one batched call (:func:`~infcomp.importance_batch` or
:meth:`~infcomp.CSIS.run_batch`), B × N particles at once when the model broadcasts.
sbi's ``run_sbc``/``check_sbc`` do the same for unweighted samples.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from infcomp import diagnostics
from infcomp.errors import ModelError
from infcomp.inference import CSIS, JointSimulator, importance_batch
from infcomp.inference.common import Program, check_positive_int
from infcomp.posterior import BatchPosterior

#: The central credible intervals whose coverage is reported.
DEFAULT_LEVELS = (0.5, 0.8, 0.9, 0.95)

#: ``inference(datasets, num_particles)``: posteriors of all data sets (values stacked
#: along dimension 0 of each observation) in one :class:`BatchPosterior`.
Inference = Callable[[dict[str, Tensor], int], BatchPosterior]


@dataclass
class Calibration:
    """What :func:`calibrate` found, one column per scalar latent.

    Attributes:
        names: the scalar latents (``w[1]`` for an element of a vector site).
        true_values: θ* of each data set, shape ``(B, K)``.
        ranks: the SBC ranks in {0, ..., num_draws}, shape ``(B, K)``.
        num_draws: L, the posterior draws each rank is taken among.
        num_bins: the bins of the χ² test.
        levels: the credible levels a.
        coverage: the fraction of data sets inside each central interval, ``(levels, K)``.
        ess: the importance-sampling ESS of each data set, ``(B,)``.
    """

    names: list[str]
    true_values: Tensor
    ranks: Tensor
    num_draws: int
    num_bins: int
    levels: tuple[float, ...]
    coverage: Tensor
    ess: Tensor

    @property
    def num_datasets(self) -> int:
        """B, the number of simulated data sets."""
        return self.ranks.shape[0]

    def histogram(self) -> Tensor:
        """The rank counts in ``num_bins`` equal bins of {0..L}, shape ``(bins, K)``."""
        bins = (self.ranks * self.num_bins // (self.num_draws + 1)).clamp(max=self.num_bins - 1)
        counts = torch.zeros(self.num_bins, len(self.names), dtype=torch.float64)
        return counts.scatter_add_(0, bins, torch.ones_like(bins, dtype=torch.float64))

    @property
    def chi2(self) -> Tensor:
        """Pearson's ``X² = Σ_j (O_j - E)² / E`` of the rank histogram, shape ``(K,)``."""
        expected = self.num_datasets / self.num_bins
        return ((self.histogram() - expected) ** 2 / expected).sum(0)

    @property
    def p_values(self) -> Tensor:
        """``P(χ²_{bins-1} > X²)`` per scalar latent: small when the ranks are not uniform.

        The χ² survival function is the regularized upper incomplete gamma function
        ``Q((bins - 1) / 2, X² / 2)``. Expected counts below 5 make the χ² approximation
        rough: use B ≥ 5 × bins.
        """
        half_df = torch.tensor((self.num_bins - 1) / 2.0, dtype=torch.float64)
        p: Tensor = torch.special.gammaincc(half_df, self.chi2 / 2)
        return p

    @property
    def coverage_stderr(self) -> Tensor:
        """The binomial standard error of each coverage under calibration,
        ``sqrt(a (1 - a) / B)``, shape ``(levels,)``."""
        levels = torch.tensor(self.levels, dtype=torch.float64)
        return (levels * (1 - levels) / self.num_datasets).sqrt()

    #: How many binomial standard errors below its level a coverage may fall.
    COVERAGE_TOLERANCE = 3.0

    def undercovered(self) -> Tensor:
        """Which central intervals cover too little: ``coverage < a - 3 sqrt(a (1 - a) / B)``
        (3 binomial standard errors under the nominal level a), shape ``(levels, K)``.

        An overconfident posterior (too narrow) undercovers; a calibrated one does so
        with probability about 0.0013 per level and latent (normal approximation). Too
        much coverage is not flagged: a discrete latent's closed intervals cover more.
        """
        levels = torch.tensor(self.levels, dtype=torch.float64)[:, None]
        threshold = levels - self.COVERAGE_TOLERANCE * self.coverage_stderr[:, None]
        return self.coverage < threshold

    def passed(self, alpha: float = 0.01) -> bool:
        """Whether every scalar latent passes the χ² test at level ``alpha``, corrected
        for K tests (Bonferroni: each p-value above alpha / K), and no central interval
        covers less than its level by more than 3 binomial standard errors
        (:meth:`undercovered`)."""
        uniform = bool((self.p_values > alpha / len(self.names)).all())
        return uniform and not bool(self.undercovered().any())

    def summary(self) -> str:
        """One row per scalar latent: χ², its p-value, and the coverage at each level
        (``!`` marks a coverage more than 3 standard errors below its level)."""
        width = max(12, *(len(name) for name in self.names))
        header = ["chi2", "p-value", *(f"cov {level:.0%}" for level in self.levels)]
        lines = [
            f"SBC of {self.num_datasets} data sets, ranks among {self.num_draws} draws, "
            f"{self.num_bins} bins (chi2 with {self.num_bins - 1} degrees of freedom)",
            f"{'latent':>{width}} " + " ".join(f"{h:>9}" for h in header),
        ]
        low = self.undercovered()
        for k, name in enumerate(self.names):
            cells = [f"{float(self.chi2[k]):9.2f}", f"{float(self.p_values[k]):9.4f}"]
            cells += [
                f"{float(self.coverage[j, k]):8.3f}" + ("!" if low[j, k] else " ")
                for j in range(len(self.levels))
            ]
            lines.append(f"{name:>{width}} " + " ".join(cells))
        errors = ", ".join(
            f"{level:.0%} ± {float(e):.3f}" for level, e in zip(self.levels, self.coverage_stderr)
        )
        lines.append(f"expected coverage (± one binomial standard error): {errors}")
        lines.append(f"median ESS {float(self.ess.median()):.1f}; " + self.verdict())
        return "\n".join(lines)

    def verdict(self, alpha: float = 0.01) -> str:
        """ "calibrated" or which latents fail the χ² test at ``alpha`` (Bonferroni) or
        undercover (:meth:`undercovered`)."""
        failing = [n for n, p in zip(self.names, self.p_values) if p <= alpha / len(self.names)]
        low = self.undercovered().any(0)
        narrow = [n for k, n in enumerate(self.names) if low[k]]
        if not failing and not narrow:
            tests = len(self.names)
            return (
                f"no latent fails the uniformity test at {alpha} (Bonferroni over {tests}) "
                f"or covers less than 3 standard errors below a level"
            )
        reasons = []
        if failing:
            reasons.append(f"{', '.join(failing)} fail the uniformity test at {alpha}")
        if narrow:
            reasons.append(
                f"{', '.join(narrow)} cover less than their level by more than 3 standard "
                f"errors (intervals too narrow)"
            )
        return "not calibrated: " + "; ".join(reasons)

    def plot(self, path: str | Path | None = None) -> Any:
        """The rank histograms and the coverage curve (see
        :func:`infcomp.plots.calibration`); saved to ``path`` when given."""
        from infcomp import plots

        return plots.calibration(self, path)


def calibrate(
    model: Program,
    num_datasets: int = 200,
    num_particles: int = 1000,
    *,
    guide: Program | CSIS | None = None,
    inference: Inference | None = None,
    args: tuple[Any, ...] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    sites: Sequence[str] | None = None,
    num_draws: int = 99,
    num_bins: int = 10,
    levels: Sequence[float] = DEFAULT_LEVELS,
) -> Calibration:
    """Simulation-based calibration and coverage of importance sampling on ``model``.

    Simulates ``num_datasets`` joint draws (θ*_b, y_b) ~ p(θ, y), infers all B
    posteriors in one batched call with ``num_particles`` particles each, and computes
    the SBC ranks of θ*_b among ``num_draws`` draws of each weighted posterior and the
    coverage of its central credible intervals (see the module's docstring).

    Args:
        model: the program (its observe sites are simulated, then observed).
        guide: the proposal: None (the prior), a guide program, or a trained
            :class:`~infcomp.CSIS` (its trained proposal, on the device it trains on).
        inference: instead of ``guide``, any function ``(datasets, num_particles) ->
            BatchPosterior`` (to calibrate another inference method).
        args, kwargs: the model's arguments, for the simulations and the inference
            alike (default: with a CSIS as guide, the CSIS's; otherwise none).
        sites: the latent sites to check (default: every latent site).
        num_draws: L; ``num_draws + 1`` must be a multiple of ``num_bins``.
        num_bins: bins of the χ² uniformity test (expect B / bins ≥ 5).
        levels: credible levels in (0, 1).

    Raises:
        ValueError: bad counts or levels; both ``guide`` and ``inference``.
        ModelError: a requested site that is not a latent site of every simulation, or
            simulations of differing structure (the data sets must stack).

    Example:
        >>> import torch
        >>> from infcomp.calibration import calibrate
        >>> from infcomp.examples.gaussian import gaussian
        >>> _ = torch.manual_seed(0)
        >>> result = calibrate(gaussian, num_datasets=100, num_particles=2000)
        >>> result.ranks.shape, result.coverage.shape   # (B, K), (levels, K)
        (torch.Size([100, 1]), torch.Size([4, 1]))
        >>> result.passed()
        True
    """
    num_datasets = check_positive_int("num_datasets", num_datasets, minimum=2)
    num_particles = check_positive_int("num_particles", num_particles)
    num_draws = check_positive_int("num_draws", num_draws)
    num_bins = check_positive_int("num_bins", num_bins, minimum=2)
    if (num_draws + 1) % num_bins:
        raise ValueError(
            f"num_draws + 1 = {num_draws + 1} ranks must split into num_bins = {num_bins} "
            f"equal bins (Talts et al. 2018): choose num_draws = k * {num_bins} - 1"
        )
    levels = tuple(float(level) for level in levels)
    if not levels or not all(0 < level < 1 for level in levels):
        raise ValueError(f"levels must lie in (0, 1), got {list(levels)}")
    if guide is not None and inference is not None:
        raise ValueError("give a guide or an inference function, not both")
    if isinstance(guide, CSIS):
        args = guide.args if args is None else args
        kwargs = guide.kwargs if kwargs is None else kwargs
    args = () if args is None else tuple(args)
    if inference is None:
        inference = _inference(model, guide, args, kwargs)

    batch = JointSimulator(model, args, kwargs)(num_datasets)
    latents, observations = _stack(batch.traces, sites)
    posterior = inference(observations, num_particles)
    names: list[str] = []
    truths, values = [], []
    for name, truth in latents.items():
        particles = _values(posterior, name)  # (N, B, ...)
        truths.append(truth.reshape(num_datasets, -1).to(torch.float64))
        values.append(particles.reshape(*particles.shape[:2], -1).to(torch.float64))
        names += _labels(name, truth.shape[1:])
    true_values = torch.cat(truths, dim=1)  # (B, K)
    particle_values = torch.cat(values, dim=2)  # (N, B, K)
    log_weights = posterior.log_weights
    ranks = _ranks(particle_values, log_weights, true_values, num_draws)
    coverage = _coverage(particle_values, log_weights, true_values, levels)
    return Calibration(
        names, true_values, ranks, num_draws, num_bins, levels, coverage, posterior.ess
    )


def _inference(
    model: Program,
    guide: Program | CSIS | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None,
) -> Inference:
    device = guide.device if isinstance(guide, CSIS) else None
    return lambda datasets, n: importance_batch(
        model, datasets, n, guide=guide, args=args, kwargs=kwargs, device=device
    )


def _stack(
    traces: Sequence[Any], sites: Sequence[str] | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The latent values to check and the observations, stacked over the simulations."""
    first = traces[0]
    latent = [n for n, s in first.sites.items() if s.kind == "sample"]
    observed = [n for n, s in first.sites.items() if s.kind == "observe"]
    names = latent if sites is None else list(sites)
    for name in names:
        if name not in latent:
            raise ModelError(f"site {name!r} is not a latent site of the model; they are {latent}")
    try:
        return (
            {n: torch.cat([t[n].value for t in traces]) for n in names},
            {n: torch.cat([t[n].value for t in traces]) for n in observed},
        )
    except (KeyError, RuntimeError) as error:
        raise ModelError(
            f"calibration stacks the simulated data sets, but the model's simulations "
            f"differ in structure ({error}); calibrate a model whose sites are the same "
            f"in every run"
        ) from None


def _values(posterior: BatchPosterior, name: str) -> Tensor:
    """A site's particle values for every data set, ``(N, B, ...)``."""
    if posterior.trace is not None:
        return posterior.values(name)
    return torch.stack([posterior[b].values(name) for b in range(len(posterior))], dim=1)


def _labels(name: str, shape: torch.Size) -> list[str]:
    if not shape:
        return [name]
    indices = itertools.product(*(range(size) for size in shape))
    return [f"{name}[{','.join(map(str, index))}]" for index in indices]


def _ranks(values: Tensor, log_weights: Tensor, truth: Tensor, num_draws: int) -> Tensor:
    """SBC ranks: how many of L multinomial draws from each weighted posterior lie
    below the truth, ties broken uniformly at random; shape ``(B, K)``."""
    weights = diagnostics.normalized_weights(log_weights)  # (N, B)
    draws = torch.multinomial(weights.T.to(torch.float64), num_draws, replacement=True)  # (B, L)
    # (L, B, K): the draws' values of every scalar latent.
    drawn = values.gather(0, draws.T.unsqueeze(-1).expand(-1, -1, values.shape[2]))
    below = (drawn < truth).sum(0)
    ties = (drawn == truth).sum(0)
    # A uniform integer in {0, ..., ties}.
    return below + (torch.rand(ties.shape, dtype=torch.float64) * (ties + 1)).floor().long()


def _coverage(
    values: Tensor, log_weights: Tensor, truth: Tensor, levels: tuple[float, ...]
) -> Tensor:
    """The fraction of data sets whose truth lies in each central interval, ``(levels, K)``."""
    probs = [p for level in levels for p in ((1 - level) / 2, (1 + level) / 2)]
    bounds = diagnostics.weighted_quantile(values, log_weights, probs)  # (2 levels, B, K)
    lower, upper = bounds[0::2], bounds[1::2]
    inside = (lower <= truth) & (truth <= upper)
    return inside.to(torch.float64).mean(1)


def expected_counts_band(num_datasets: int, num_bins: int, mass: float = 0.99) -> tuple[int, int]:
    """The central ``mass`` interval of one bin's count under uniform ranks,
    Binomial(B, 1/bins) (the grey band of Talts et al.'s histograms)."""
    binomial = torch.distributions.Binomial(num_datasets, torch.tensor(1.0 / num_bins))
    support = torch.arange(num_datasets + 1, dtype=torch.float64)
    cdf = binomial.log_prob(support).exp().cumsum(0)
    tail = (1 - mass) / 2
    low = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=torch.float64)))
    high = int(torch.searchsorted(cdf, torch.tensor(1 - tail, dtype=torch.float64)))
    return low, min(high, num_datasets)
