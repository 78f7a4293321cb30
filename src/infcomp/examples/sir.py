"""The 1978 influenza outbreak in an English boys' boarding school, as a stochastic SIR model.

Data (Anonymous, "Influenza in a boarding school", BMJ 1978;1:587; the data set of
Stan's case study "Bayesian workflow for disease transmission modeling in Stan",
Grinsztajn, Semenova, Margossian & Riou, Statistics in Medicine 2021): of 763 pupils,
one was ill on day 0; the numbers confined to bed on days 1-14 were
3, 8, 26, 76, 225, 298, 258, 233, 189, 128, 68, 29, 14, 4.

The model is a discrete-time chain-binomial SIR (one step per day), a program with
31 latent sites, 28 of them counts with large ranges:

- infection rate β ~ LogNormal(0, 1) per day (median 1; 90 % prior interval 0.19-5.2);
- recovery rate γ ~ LogNormal(log 0.4, 0.5) per day (median 0.4: 2.5 days in bed);
- each day t = 1..14, from (S, I) of the day before:
  ``infections_t ~ Binomial(S, 1 - exp(-β / N)^I)`` (each susceptible pupil escapes
  each of the I infectious ones independently), ``recoveries_t ~ Binomial(I, 1 - exp(-γ))``,
  then ``S -= infections_t``, ``I += infections_t - recoveries_t``;
- reporting: ``in_bed_t ~ NegativeBinomial(mean I_t + 0.1, dispersion φ)``, variance
  ``μ + μ²/φ``, with ``1/φ = phi_inv ~ Exponential(5)`` as in the Stan case study (the
  0.1 lets a day with I = 0 report a case).

R0 = β / γ, the expected number of pupils one case infects in a susceptible school.
The program broadcasts over leading particle (and data-set) dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Binomial, Exponential, LogNormal, NegativeBinomial

import infcomp as ic

POPULATION = 763
INITIAL_CASES = 1
DAYS = 14
IN_BED = (3, 8, 26, 76, 225, 298, 258, 233, 189, 128, 68, 29, 14, 4)
#: The observations: ``in_bed_1`` .. ``in_bed_14``.
DATA = {f"in_bed_{t}": torch.tensor(float(count)) for t, count in enumerate(IN_BED, start=1)}
BETA_PRIOR = (0.0, 1.0)
GAMMA_PRIOR = (float(torch.tensor(0.4).log()), 0.5)
#: The rate of phi_inv's exponential prior (the Stan case study's).
PHI_INV_RATE = 5.0
#: Added to the reporting mean so that a day with no one infectious can still report a case.
REPORTING_FLOOR = 0.1


def sir(days: int = DAYS) -> Tensor:
    """The chain-binomial SIR of the module's docstring; returns the infectious counts
    ``I_1..I_days`` stacked on the last dimension.

    Example:
        >>> import torch
        >>> import infcomp as ic
        >>> from infcomp.examples.sir import sir
        >>> trace = ic.trace(sir).get_trace()
        >>> len(trace.names("sample")), len(trace.names("observe"))
        (31, 14)
    """
    beta = ic.sample("beta", LogNormal(*BETA_PRIOR))
    gamma = ic.sample("gamma", LogNormal(*GAMMA_PRIOR))
    phi_inv = ic.sample("phi_inv", Exponential(PHI_INV_RATE))
    infections: list[Tensor] = []
    recoveries: list[Tensor] = []
    for t in range(1, days + 1):
        # The state is recomputed from the sampled counts, never carried across an observe
        # statement: ic.smc resamples the sampled values in place (see its docstring).
        susceptible, infectious = state(beta, infections, recoveries)
        # Each susceptible pupil escapes each infectious one with probability e^(-β/N).
        infected = 1 - torch.exp(-beta * infectious / POPULATION)
        infections.append(ic.sample(f"infections_{t}", Binomial(susceptible, infected)))
        recovery = 1 - torch.exp(-gamma)
        recoveries.append(ic.sample(f"recoveries_{t}", Binomial(infectious, recovery)))
        mean = state(beta, infections, recoveries)[1] + REPORTING_FLOOR
        dispersion = 1 / phi_inv
        ic.observe(f"in_bed_{t}", NegativeBinomial(dispersion, probs=mean / (mean + dispersion)))
    return torch.stack(
        [state(beta, infections[:t], recoveries[:t])[1] for t in range(1, days + 1)], -1
    )


def state(
    like: Tensor, infections: list[Tensor], recoveries: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """``(S, I)`` after the given days' counts (shaped like ``like`` on day 0). Clamped at
    0: a guide's proposal above a count's total (weight zero already) must not give the next
    day's distributions a negative total count."""
    infected = sum(infections, torch.zeros_like(like))
    recovered = sum(recoveries, torch.zeros_like(like))
    susceptible = (POPULATION - INITIAL_CASES - infected).clamp(min=0)
    return susceptible, (INITIAL_CASES + infected - recovered).clamp(min=0)


def r0(trace: ic.Trace) -> Tensor:
    """R0 = β / γ of each particle (a function of the trace, for ``posterior.mean(r0)``)."""
    beta, gamma = trace["beta"].value, trace["gamma"].value
    assert beta is not None and gamma is not None
    return beta / gamma


def infectious_curve(trace: ic.Trace, days: int = DAYS) -> Tensor:
    """``I_1..I_days`` of each particle, recomputed from its counts: shape ``(..., days)``."""
    beta = trace["beta"].value
    assert beta is not None
    infections = [trace[f"infections_{t}"].value for t in range(1, days + 1)]
    recoveries = [trace[f"recoveries_{t}"].value for t in range(1, days + 1)]
    curve = [
        state(beta, infections[:t], recoveries[:t])[1]  # type: ignore[arg-type]
        for t in range(1, days + 1)
    ]
    return torch.stack(curve, dim=-1)
