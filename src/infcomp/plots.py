"""The figures users look at: weights and their k-hat tail fit, marginals against the
prior, training curves, calibration, and (for sequential Monte Carlo) the ESS trace.

matplotlib is an optional extra (``pip install 'infcomp[plot]'``), imported by each
function when it is called, never by ``import infcomp``. Every function draws on a new
``matplotlib.figure.Figure`` (no pyplot, so no global state and no backend is chosen
for you), saves it when ``path`` is given, and returns the ``Figure`` (a notebook shows
it). (:meth:`~infcomp.SMCPosterior.plot` is different: it draws on pyplot's current
``Axes``, or the one given, and returns that ``Axes``.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from infcomp import diagnostics
from infcomp.posterior import Posterior

if TYPE_CHECKING:
    from infcomp.calibration import Calibration
    from infcomp.inference import CSIS

Location = str | Path | None


def _figure(columns: int = 1, rows: int = 1, width: float = 5.0, height: float = 3.6) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "plots need matplotlib, an optional dependency of infcomp: "
            "pip install 'infcomp[plot]' (or pip install matplotlib)"
        ) from error
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, axes


def _not_a_path(value: Any, argument: str, function: str) -> None:
    """A file name where ``function`` takes something else: say to pass it as ``path=``."""
    if isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{function}'s {argument} argument got {str(value)!r}, a file name: pass it by "
            f"keyword, {function}(..., path={str(value)!r})"
        )


def _finish(figure: Any, path: Location) -> Any:
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def weights(posterior: Posterior, path: Location = None) -> Any:
    """Left: the normalized weights w̄ sorted from the largest, on log axes (a flat curve
    is healthy; a few weights near 1 mean ESS ≈ 1). Right: the upper tail the Pareto k-hat
    is fitted to (Vehtari et al., JMLR 2024): the M largest weights' exceedances over the
    threshold, their empirical survival function and the fitted generalized Pareto one
    ``(1 + k x / σ)^(-1/k)`` (Zhang & Stephens' fit, before k-hat's prior). The title's
    k-hat is the reported one, ``(M k + 10 * 0.5) / (M + 10)`` with the weakly informative
    prior (:func:`~infcomp.diagnostics.pareto_khat`); the legend's raw k is the fit drawn,
    so the two differ a little.

    Raises:
        ImportError: matplotlib is not installed.
    """
    figure, axes = _figure(2)
    left, right = axes[0]
    w = posterior.weights.detach().cpu().to(torch.float64)
    ordered = w.sort(descending=True).values
    ranks = torch.arange(1, len(ordered) + 1)
    left.loglog(ranks.numpy(), ordered.numpy(), color="tab:blue")
    left.axhline(1 / len(ordered), color="grey", linestyle=":", label="equal weights 1/N")
    left.set_xlabel("rank")
    left.set_ylabel("normalized weight")
    left.set_title(
        f"N = {posterior.num_particles}, ESS = {float(posterior.ess):.1f} "
        f"({float(posterior.ess) / posterior.num_particles:.1%})"
    )
    left.legend()

    n = posterior.num_particles
    tail = diagnostics.pareto_tail_length(n)
    khat = float(posterior.khat)
    right.set_title(f"Pareto k-hat = {khat:.2f} (threshold {posterior.khat_threshold:.2f})")
    right.set_xlabel("exceedance of the tail threshold (weights / max)")
    right.set_ylabel("survival")
    log_weights = posterior.log_weights.detach().cpu()
    finite = log_weights[torch.isfinite(log_weights)]
    if len(finite) > tail and math.isfinite(khat):
        top = finite.topk(tail + 1).values
        u = (top - top[0]).exp()
        exceedances = (u[:tail] - u[tail]).flip(0)  # ascending
        survival = 1 - torch.arange(1, tail + 1, dtype=torch.float64) / (tail + 1)
        right.loglog(exceedances.numpy(), survival.numpy(), ".", label=f"{tail} largest weights")
        # The fit itself (a private helper of diagnostics: the same fit k-hat uses).
        k, sigma = diagnostics._gpd_fit_zhang_stephens(exceedances[None])
        positive = exceedances[exceedances > 0]
        grid = torch.logspace(
            math.log10(float(positive[0])),
            math.log10(float(exceedances[-1])),
            200,
            dtype=torch.float64,
        )
        k_value, sigma_value = float(k[0]), float(sigma[0])
        if abs(k_value) > 1e-9:
            fitted = (1 + k_value * grid / sigma_value).clamp(min=1e-300) ** (-1 / k_value)
        else:
            fitted = torch.exp(-grid / sigma_value)
        right.loglog(
            grid.numpy(),
            fitted.numpy(),
            color="tab:red",
            label=f"GPD fit, raw k = {k_value:.2f} (k-hat: with its prior)",
        )
        right.legend()
    else:
        right.text(0.5, 0.5, "no tail to fit", ha="center", transform=right.transAxes)
    return _finish(figure, path)


def marginals(
    posterior: Posterior,
    prior: Mapping[str, Tensor] | None = None,
    sites: str | Sequence[str] | None = None,
    bins: int = 40,
    path: Location = None,
) -> Any:
    """Weighted histograms of each scalar site's posterior marginal, each over the
    histogram of its prior draws ``prior[site]`` (e.g. from
    :class:`~infcomp.JointSimulator`) when given.

    Args:
        posterior: the weighted posterior.
        prior: prior draws by site name (one leading sample dimension).
        sites: a site or the sites to show (default: every scalar latent site in every
            particle).

    Raises:
        ImportError: matplotlib is not installed.
        ModelError: a site some particles lack.
        TypeError: a file name as ``prior`` (the file is ``path=``).
    """
    _not_a_path(prior, "prior", "marginals")
    if sites is None:
        names = posterior._latent_names()
    else:
        names = [sites] if isinstance(sites, str) else list(sites)
    if sites is None:
        names = [name for name in names if posterior.values(name).dim() == 1]
    columns = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    figure, axes = _figure(columns, rows, 4.0, 3.2)
    for index, name in enumerate(names):
        axis = axes[index // columns][index % columns]
        values = posterior.values(name).detach().to(torch.float64).cpu()
        low, high = float(values.min()), float(values.max())
        draws = None
        if prior is not None and name in prior:
            draws = prior[name].detach().to(torch.float64).cpu().reshape(-1)
            low, high = min(low, float(draws.min())), max(high, float(draws.max()))
        if high <= low:
            high = low + 1.0
        if draws is not None:
            axis.hist(
                draws.numpy(),
                bins=bins,
                range=(low, high),
                density=True,
                color="grey",
                alpha=0.5,
                label="prior",
            )
        heights, edges = posterior.marginal(name).histogram(bins=bins, range=(low, high))
        axis.stairs(
            heights.numpy(),
            edges.numpy(),
            fill=True,
            alpha=0.6,
            color="tab:blue",
            label=f"posterior (ESS {float(posterior.ess):.0f})",
        )
        axis.set_xlabel(name)
        axis.legend(fontsize="small")
    for index in range(len(names), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    return _finish(figure, path)


def loss_curve(
    csis: CSIS | None = None,
    path: Location = None,
    *,
    loss_history: Sequence[float] | None = None,
    validation_history: Sequence[tuple[int, float]] | None = None,
) -> Any:
    """The training loss of every step (``-log q`` on each minibatch) and the validation
    loss (on held-out simulations), against the step, of a :class:`~infcomp.CSIS` (its
    :attr:`loss_history` and :attr:`validation_history`, also kept in saved artifacts)
    or of the histories given.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: neither a CSIS nor any history.
    """
    if csis is not None:
        loss_history = csis.loss_history
        validation_history = csis.validation_history
    if not loss_history and not validation_history:
        raise ValueError("loss_curve needs a trained CSIS or a loss or validation history")
    figure, axes = _figure(1, 1, 6.0, 3.6)
    axis = axes[0][0]
    if loss_history:
        axis.plot(
            range(1, len(loss_history) + 1),
            list(loss_history),
            color="tab:blue",
            alpha=0.5,
            linewidth=0.8,
            label="training loss (minibatch)",
        )
    if validation_history:
        steps, values = zip(*validation_history)
        axis.plot(steps, values, "o-", color="tab:red", markersize=3, label="validation loss")
        best = min(range(len(values)), key=values.__getitem__)
        axis.axvline(steps[best], color="grey", linestyle=":", label=f"best {values[best]:.4f}")
    axis.set_xlabel("step")
    axis.set_ylabel("-log q(x; y)")
    axis.legend()
    return _finish(figure, path)


def ess_trace(
    ess: Sequence[float] | Tensor,
    num_particles: int | None = None,
    resampled: Sequence[bool] | Tensor | None = None,
    path: Location = None,
) -> Any:
    """The effective sample size after each step of sequential Monte Carlo, with the
    steps where the particles were resampled marked (for ``ic.smc``'s trace).

    Raises:
        ImportError: matplotlib is not installed.
        TypeError: a file name as ``num_particles`` or ``resampled`` (it is ``path=``).
    """
    _not_a_path(num_particles, "num_particles", "ess_trace")
    _not_a_path(resampled, "resampled", "ess_trace")
    values = torch.as_tensor(ess, dtype=torch.float64).cpu()
    figure, axes = _figure(1, 1, 6.0, 3.2)
    axis = axes[0][0]
    steps = torch.arange(len(values))
    axis.plot(steps.numpy(), values.numpy(), "o-", markersize=3, label="ESS")
    if resampled is not None:
        marks = torch.as_tensor(resampled, dtype=torch.bool).cpu()
        axis.plot(
            steps[marks].numpy(), values[marks].numpy(), "x", color="tab:red", label="resampled"
        )
    if num_particles is not None:
        axis.axhline(num_particles, color="grey", linestyle=":", label=f"N = {num_particles}")
    axis.set_xlabel("step")
    axis.set_ylabel("ESS")
    axis.set_ylim(bottom=0)
    axis.legend()
    return _finish(figure, path)


def calibration(result: Calibration, path: Location = None) -> Any:
    """Simulation-based calibration (Talts et al. 2018): one rank histogram per scalar
    latent with the 99 % band of a bin's count under uniform ranks, and the coverage of
    central credible intervals against their level (the diagonal, ± 2 binomial standard
    errors, is calibrated; below it overconfident).

    Raises:
        ImportError: matplotlib is not installed.
    """
    from infcomp.calibration import expected_counts_band

    names = result.names[:8]
    figure, axes = _figure(len(names) + 1, 1, 3.2, 3.0)
    counts = result.histogram()
    low, high = expected_counts_band(result.num_datasets, result.num_bins)
    for k, name in enumerate(names):
        axis = axes[0][k]
        axis.axhspan(low, high, color="grey", alpha=0.3, label="99 % if uniform")
        axis.bar(
            range(result.num_bins), counts[:, k].numpy(), width=1.0, color="tab:blue", alpha=0.7
        )
        axis.set_title(f"{name}: p = {float(result.p_values[k]):.3f}")
        axis.set_xlabel(f"rank bin (of {result.num_draws + 1} ranks)")
    axes[0][0].set_ylabel("data sets")
    axes[0][0].legend(fontsize="small")
    axis = axes[0][-1]
    levels = torch.tensor(result.levels, dtype=torch.float64)
    band = 2 * result.coverage_stderr
    axis.fill_between(
        levels.numpy(), (levels - band).numpy(), (levels + band).numpy(), color="grey", alpha=0.3
    )
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    for k, name in enumerate(names):
        axis.plot(levels.numpy(), result.coverage[:, k].numpy(), "o-", label=name)
    axis.set_xlabel("credible level")
    axis.set_ylabel("coverage")
    axis.set_title(f"coverage, {result.num_datasets} data sets")
    axis.legend(fontsize="small")
    return _finish(figure, path)
