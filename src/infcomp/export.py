"""A weighted posterior as ArviZ's ``InferenceData``: :meth:`Posterior.to_arviz`.

ArviZ (Kumar, Carroll, Hartikainen & Martin, JOSS 2019) is an optional extra
(``pip install 'infcomp[arviz]'``), imported only when a conversion is asked for.

**What goes where, and why.** ArviZ's summaries and plots take every draw in the
``posterior`` group with the same weight; none of them accepts importance weights. So
the ``posterior`` group holds *equally weighted draws*: the N particles resampled
systematically in proportion to their normalized weights ``w̄ = softmax(log w)``
(one chain; ``num_draws`` draws, N by default). Their means and quantiles then
estimate the weighted posterior's, with a little extra resampling noise. The draws
are not independent (a heavy particle is copied many times), so ArviZ's MCMC
diagnostics on them (``ess_bulk``, ``r_hat``) do not measure importance sampling:
read the importance-sampling ESS and k-hat from the ``sample_stats`` group and the
attributes instead.

The weights are not thrown away: ``sample_stats`` keeps **all N particles' log
weights** ``log_weight`` (dimension ``particle``, in the posterior's particle order),
and ``source_particle`` (per draw: the particle it copies), so that anything weight-based
(PSIS, ``az.psislw``, the evidence) can be recomputed from the file alone. The
``observed_data`` group holds the observations, and the attributes ``num_particles``,
``ess``, ``log_evidence``, ``log_evidence_stderr`` and ``pareto_khat``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from infcomp.resampling import systematic_indices

if TYPE_CHECKING:
    from infcomp.posterior import Posterior

#: The optional extra that brings ArviZ.
EXTRA = "arviz"


def import_arviz() -> Any:
    """``arviz``, or an ImportError that says how to install it."""
    try:
        import arviz
    except ImportError as error:
        raise ImportError(
            f"to_arviz needs ArviZ, an optional dependency of infcomp: "
            f"pip install 'infcomp[{EXTRA}]' (or pip install arviz)"
        ) from error
    return arviz


def import_arviz_module(name: str) -> Any:
    """A dependency of ArviZ (``xarray``), once :func:`import_arviz` has succeeded."""
    import_arviz()
    import importlib

    return importlib.import_module(name)


def to_inference_data(
    posterior: Posterior, num_draws: int | None = None, sites: list[str] | None = None
) -> Any:
    """``posterior`` as an ``arviz.InferenceData`` (see the module's docstring).

    Args:
        posterior: the weighted posterior.
        num_draws: equally weighted draws in the ``posterior`` group (default N).
        sites: the latent sites to export (default: those present in every particle;
            the others, of branches some particles do not take, are named in the
            attribute ``sites_not_in_every_particle`` (comma-separated), and their values
            stay available from the posterior, by structure).

    Raises:
        ImportError: ArviZ is not installed (it names the extra to install).
        ValueError: ``num_draws`` is not a positive integer.
        ModelError: a requested site that some particles lack.
    """
    az = import_arviz()
    n = posterior.num_particles if num_draws is None else num_draws
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}")
    names = posterior._latent_names() if sites is None else list(sites)
    index = systematic_indices(posterior.weights, n)
    # A random order of the draws: systematic resampling returns them sorted.
    index = index[torch.randperm(n)]
    draws = {name: posterior.values(name)[index].detach().cpu()[None].numpy() for name in names}
    observed = _observations(posterior)
    attributes = {
        "inference_library": "infcomp",
        "num_particles": posterior.num_particles,
        "ess": float(posterior.ess),
        "log_evidence": float(posterior.log_evidence),
        "log_evidence_stderr": float(posterior.log_evidence_stderr),
        "pareto_khat": float(posterior.khat),
        # A string (netCDF's attributes hold no lists of strings): "" when none.
        "sites_not_in_every_particle": ", ".join(
            name
            for name in dict.fromkeys(
                name
                for trace in posterior.traces
                for name, site in trace.sites.items()
                if site.kind == "sample"
            )
            if name not in names and not all(name in t for t in posterior.traces)
        ),
    }
    data = az.from_dict(posterior=draws, observed_data=observed)
    data.posterior.attrs.update(attributes)
    # The log weights belong to the N particles, not to the draws: their own dimension.
    xr = import_arviz_module("xarray")
    stats = xr.Dataset(
        {
            "log_weight": (("chain", "particle"), posterior.log_weights.cpu()[None].numpy()),
            "source_particle": (("chain", "draw"), index[None].numpy()),
        },
        coords={"chain": [0], "draw": range(n), "particle": range(posterior.num_particles)},
        attrs=dict(data.posterior.attrs),
    )
    data.add_groups(sample_stats=stats)
    return data


def _observations(posterior: Posterior) -> dict[str, Any]:
    """Each observe site's value, without the particle dimension."""
    observed: dict[str, Any] = {}
    for trace, size in zip(posterior.traces, posterior.sizes):
        for name, site in trace.sites.items():
            if site.kind != "observe" or name in observed or site.value is None:
                continue
            value = site.value
            # Observations are broadcast along the particles: keep one copy.
            if value.dim() > 0 and value.shape[0] == size and bool((value == value[:1]).all()):
                value = value[0]
            observed[name] = value.detach().cpu().numpy()
    return observed
