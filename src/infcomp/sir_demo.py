"""The main job: the 1978 boarding-school influenza outbreak, by compiled inference.

Run ``python -m infcomp.sir_demo`` (``make demo``). The model is the stochastic SIR of
:mod:`infcomp.examples.sir` (β, γ, the reporting dispersion and 28 daily counts: 31
latent sites; 14 observed days). The job

1. compiles the simulator (online training of the automatic inference network on fresh
   simulations), or loads the artifact a previous run saved (``--artifact``; it is
   also an artifact of the command line: ``infcomp info sir_model.pt``);
2. infers with prior importance sampling (likelihood weighting) and with the compiled
   proposal, and prints side by side the posterior of β, γ and R0 = β/γ (mean and 90 %
   interval), the ESS, log evidence ± standard error, k-hat and seconds;
3. writes a figure: the data with the posterior predictive bands of the pupils in bed,
   and R0's marginal against its prior.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.distributions import NegativeBinomial

import infcomp as ic
from infcomp.demo import render, timed
from infcomp.errors import ArtifactError, ArtifactWarning
from infcomp.examples.sir import (
    BETA_PRIOR,
    DATA,
    DAYS,
    GAMMA_PRIOR,
    IN_BED,
    REPORTING_FLOOR,
    infectious_curve,
    r0,
    sir,
)
from infcomp.posterior import Posterior

ENTRY_POINT = "infcomp.examples.sir:sir"
ROWS = ["beta", "gamma", "R0", "ESS", "log evidence", "Pareto k-hat", "seconds"]
Method = tuple[str, Callable[[], Posterior]]


def compile_sir(
    num_steps: int, batch_size: int, seed: int, progress: bool = True, attention: bool = False
) -> ic.CSIS:
    """The automatic network for the SIR program, trained online on
    ``num_steps × batch_size`` fresh simulations (the simulator is cheap)."""
    torch.manual_seed(seed)
    csis = ic.CSIS(sir, network=ic.nn.NetworkConfig(attention=attention))
    csis.metadata = {
        "entry_point": ENTRY_POINT,
        "budget": f"{num_steps} online steps of {batch_size} simulations",
        "seed": seed,
    }
    csis.train(num_steps=num_steps, batch_size=batch_size, progress=progress, validate_every=100)
    return csis


def compiled(
    artifact: Path | None, num_steps: int, batch_size: int, seed: int, notes: list[str]
) -> tuple[ic.CSIS, str]:
    """The cached artifact when it loads and was trained as asked, else a new compilation
    (saved to ``artifact``); and a line saying which."""
    if artifact is not None and artifact.exists():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", ArtifactWarning)
                csis = ic.CSIS.load(artifact, sir)
            if csis.num_steps == num_steps and csis.metadata.get("seed") == seed:
                return csis, (
                    f"loaded {artifact} (compiled in {csis.training_seconds:.0f} s on "
                    f"{csis.num_simulations:,} simulations; --recompile to train again)"
                )
            notes.append(f"{artifact} was trained otherwise: compiling again")
        except (ArtifactError, ArtifactWarning, ic.ModelError) as error:
            notes.append(f"{artifact} not used: {error}")
    csis = compile_sir(num_steps, batch_size, seed)
    if artifact is not None:
        csis.save(artifact)
    saved = f", saved to {artifact}" if artifact is not None else ""
    return csis, (
        f"compiled in {csis.training_seconds:.0f} s on {csis.num_simulations:,} simulations{saved}"
    )


def interval(posterior: Posterior, quantity: str | Callable[[ic.Trace], torch.Tensor]) -> str:
    """``mean [5 %, 95 %]``."""
    low, high = posterior.quantile(quantity, [0.05, 0.95]).tolist()
    return f"{float(posterior.mean(quantity)):.3f} [{low:.2f}, {high:.2f}]"


def table(columns: Sequence[tuple[str, Posterior, float]]) -> list[str]:
    """One column per (label, posterior, seconds), the rows of :data:`ROWS`."""
    cells = {
        label: [
            interval(post, "beta"),
            interval(post, "gamma"),
            interval(post, r0),
            f"{float(post.ess):.1f}",
            f"{float(post.log_evidence):.3f} ± {float(post.log_evidence_stderr):.3f}",
            "-" if isinstance(post, ic.SMCPosterior) else f"{float(post.khat):.2f}",
            f"{seconds:.2f}",
        ]
        for label, post, seconds in columns
    }
    return render(ROWS, cells, width=22)


def predictive(posterior: Posterior, draws: int = 2000) -> torch.Tensor:
    """Posterior predictive draws of the pupils in bed on days 1..14, ``(draws, 14)``:
    particles resampled by weight, their infectious curves, then the reporting noise."""
    sample = posterior.resample(draws, method="multinomial")
    mean = sample.values(infectious_curve) + REPORTING_FLOOR  # (draws, days)
    dispersion = 1 / sample.values("phi_inv").unsqueeze(-1)
    draws_: torch.Tensor = NegativeBinomial(dispersion, probs=mean / (mean + dispersion)).sample()
    return draws_


def save_figure(
    posteriors: Sequence[tuple[str, Posterior]], path: Path, predicted: Posterior
) -> None:
    """The data with the posterior predictive bands (50 % and 90 %) of ``predicted``, and
    R0's marginal under each posterior against its prior."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    days = torch.arange(1, DAYS + 1).numpy()
    bands = torch.quantile(
        predictive(predicted).to(torch.float64),
        torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64),
        dim=0,
    ).numpy()
    left.fill_between(
        days, bands[0], bands[4], color="tab:blue", alpha=0.2, label="90 % predictive"
    )
    left.fill_between(
        days, bands[1], bands[3], color="tab:blue", alpha=0.35, label="50 % predictive"
    )
    left.plot(days, bands[2], color="tab:blue", linewidth=1, label="predictive median")
    left.plot(days, IN_BED, "o", color="black", label="pupils in bed (data)")
    left.set_xlabel("day")
    left.set_ylabel("pupils in bed")
    left.set_title("Boarding school, 1978: posterior predictive (compiled IS)")
    left.legend(fontsize="small")

    prior_r0 = torch.distributions.LogNormal(*BETA_PRIOR).sample(
        (100_000,)
    ) / torch.distributions.LogNormal(*GAMMA_PRIOR).sample((100_000,))
    high = 8.0
    shown = prior_r0[prior_r0 < high]
    right.hist(
        shown.numpy(),
        bins=50,
        range=(0, high),
        # A density of all prior draws: the mass above `high` is left out, not piled up.
        weights=torch.full_like(shown, 50 / (high * len(prior_r0))).numpy(),
        color="grey",
        alpha=0.4,
        label=f"prior ({float((prior_r0 >= high).double().mean()):.0%} above {high:.0f})",
    )
    for (name, post), color in zip(posteriors, ["tab:orange", "tab:green", "tab:blue", "tab:red"]):
        heights, edges = post.marginal(r0).histogram(bins=50, range=(0.0, high))
        right.stairs(
            heights.numpy(), edges.numpy(), color=color, label=f"{name} (ESS {float(post.ess):.0f})"
        )
    right.set_xlabel("R0 = β / γ")
    right.set_ylabel("density")
    right.set_title("R0: posterior against prior")
    right.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def report(
    particles: int = 10_000,
    prior_particles: int = 100_000,
    num_steps: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
    artifact: Path | None = Path("sir_model.pt"),
    figure: Path | None = Path("sir_outbreak.png"),
) -> str:
    """The job's whole text (see the module's docstring)."""
    notes: list[str] = []
    lines = [
        "Influenza in a boarding school, 1978: 763 pupils, 1 initial case; in bed on days 1-14:",
        "  " + ", ".join(map(str, IN_BED)),
        "Stochastic SIR (chain binomial, negative-binomial reporting): 31 latent sites",
        "",
    ]
    csis, how = compiled(artifact, num_steps, batch_size, seed, notes)
    history = csis.validation_history
    validation = f"; validation loss {history[-1][1]:.3f}" if history else ""
    lines += [f"Compiled inference network: {how}{validation}", ""]
    methods: list[Method] = [
        (f"prior IS, N = {particles:,}", lambda: ic.importance(sir, DATA, particles)),
        (f"prior IS, N = {prior_particles:,}", lambda: ic.importance(sir, DATA, prior_particles)),
        (f"compiled IS, N = {particles:,}", lambda: csis.run(DATA, particles)),
        (f"bootstrap SMC, N = {particles:,}", lambda: ic.smc(sir, DATA, particles)),
        (f"compiled SMC, N = {particles:,}", lambda: ic.smc(sir, DATA, particles, guide=csis)),
    ]
    columns = []
    for index, (label, run) in enumerate(methods):
        torch.manual_seed(seed + 1 + index)
        post, seconds = timed(run, notes, label)
        columns.append((label, post, seconds))
    lines += ["Posterior: mean [90 % interval]", *table(columns)]
    lines += [
        "SMC resamples at the observe statements: its ESS is the last epoch's (before a final",
        "resampling), its log evidence error from the genealogy (Lee & Whiteley 2018, with",
        "multinomial resampling); k-hat does not apply.",
    ]
    if figure is not None:
        # Predictive bands of compiled IS; R0 under every method but the short prior IS.
        save_figure([(label, post) for label, post, _ in columns[1:]], figure, columns[2][1])
        lines += ["", f"figure: {figure}"]
    if notes:
        lines += ["", "Warnings the library gave:", *[f"  {note}" for note in notes]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=10_000, help="compiled and prior IS")
    parser.add_argument("--prior-particles", type=int, default=100_000, help="long prior IS")
    parser.add_argument("--steps", type=int, default=1000, help="online training steps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--artifact", type=Path, default=Path("sir_model.pt"))
    parser.add_argument("--recompile", action="store_true", help="ignore a cached artifact")
    parser.add_argument("--figure", type=Path, default=Path("sir_outbreak.png"))
    options = parser.parse_args(argv)
    # One torch thread: the demo's small batches gain nothing from more, and on a
    # loaded machine two threads contend (make demo was ~8x slower with them).
    torch.set_num_threads(1)
    if options.recompile and options.artifact.exists():
        options.artifact.unlink()
    print(
        report(
            options.particles,
            options.prior_particles,
            options.steps,
            options.batch_size,
            options.seed,
            options.artifact,
            options.figure,
        )
    )


if __name__ == "__main__":
    main()
