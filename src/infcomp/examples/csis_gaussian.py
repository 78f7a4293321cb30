"""Compiled inference on the Gaussian with unknown mean: the CSIS seed notebook, reproduced.

The model z ~ N(1, √5); x1, x2 ~ N(z, √2). The guide is an MLP 2→10→20→10→5→2 with
ReLU whose two outputs are the mean and log-std of a Normal proposal for z. It is
trained with Adam (lr 1e-3) for 2,000 steps on batches of 10 joint simulations, then
importance sampling with 50 samples at (x1, x2) = (8, 9) is compared with 50 samples
of prior importance sampling and with the analytic posterior N(7.25, √(5/6)).

Run ``python -m infcomp.examples.csis_gaussian`` to train and save the figure.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributions import Normal

import infcomp as ic
from infcomp.examples.gaussian import DATA, PRIOR_MEAN, PRIOR_VARIANCE, exact_posterior, gaussian


def guide_network() -> nn.Sequential:
    """The seed notebook's MLP: 2→10→20→10→5→2 with ReLU between the layers."""
    widths = [2, 10, 20, 10, 5, 2]
    layers: list[nn.Module] = []
    for width_in, width_out in itertools.pairwise(widths):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class Guide(nn.Module):
    """q(z; x1, x2) = N(μ, exp(log σ)) with (μ, log σ) = MLP(x1, x2); broadcasts over batches."""

    def __init__(self) -> None:
        super().__init__()
        self.network = guide_network()

    def forward(
        self, prior_mean: float = PRIOR_MEAN, observations: dict[str, Tensor] | None = None
    ) -> Tensor:
        assert observations is not None
        inputs = torch.stack([observations["x1"], observations["x2"]], dim=-1)
        outputs = self.network(inputs)
        return ic.sample("z", Normal(outputs[..., 0], outputs[..., 1].exp()))


class SingleTraceGuide(Guide):
    """The same guide written for one trace at a time, as in the seed notebook
    (each observation reshaped with ``.view(1, 1)``): CSIS calls it trace by trace."""

    def forward(
        self, prior_mean: float = PRIOR_MEAN, observations: dict[str, Tensor] | None = None
    ) -> Tensor:
        assert observations is not None
        inputs = torch.cat((observations["x1"].view(1, 1), observations["x2"].view(1, 1)), dim=1)
        outputs = self.network(inputs)
        return ic.sample("z", Normal(outputs[0, 0], outputs[0, 1].exp()))


def compile_gaussian(
    num_steps: int = 2000,
    batch_size: int = 10,
    seed: int = 0,
    guide: nn.Module | None = None,
    progress: bool = False,
) -> ic.CSIS:
    """Train the guide with the seed notebook's settings (Adam, lr 1e-3)."""
    torch.manual_seed(seed)
    csis = ic.CSIS(gaussian, guide if guide is not None else Guide(), learning_rate=1e-3)
    csis.train(num_steps, batch_size, progress=progress)
    return csis


def save_figure(csis_posterior: ic.Posterior, prior_posterior: ic.Posterior, path: Path) -> None:
    """The seed notebook's figure: prior, analytic posterior, and weighted histograms of
    the CSIS and the prior importance samples of z."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.linspace(-6.0, 12.0, 500, dtype=torch.float64)
    prior = Normal(torch.tensor(PRIOR_MEAN, dtype=torch.float64), math.sqrt(PRIOR_VARIANCE))
    exact = exact_posterior()
    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.plot(grid, prior.log_prob(grid).exp(), color="grey", label="prior N(1, √5)")
    axes.plot(grid, exact.log_prob(grid).exp(), color="black", label="analytic posterior")
    for posterior, label, color in (
        (csis_posterior, "CSIS", "tab:blue"),
        (prior_posterior, "prior importance sampling", "tab:orange"),
    ):
        heights, edges = posterior.marginal("z").histogram(bins=30, range=(-6.0, 12.0))
        ess = float(posterior.ess)
        axes.stairs(
            heights.numpy(),
            edges.numpy(),
            fill=True,
            alpha=0.45,
            color=color,
            label=f"{label}, {posterior.num_particles} particles (ESS {ess:.1f})",
        )
    axes.set_xlabel("z")
    axes.set_ylabel("density")
    axes.set_title("Gaussian with unknown mean, observed x1 = 8, x2 = 9")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Reproduce the CSIS seed notebook.")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--num-particles", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", type=Path, default=Path("csis_gaussian.png"))
    options = parser.parse_args(argv)
    csis = compile_gaussian(options.steps, options.batch_size, options.seed, progress=True)
    csis_posterior = csis.run(DATA, options.num_particles)
    prior_posterior = ic.importance(gaussian, DATA, options.num_particles)
    for name, posterior in (("CSIS", csis_posterior), ("prior", prior_posterior)):
        print(f"{name:>6}: {posterior!r}, mean {float(posterior.mean('z')):.4f}")
    save_figure(csis_posterior, prior_posterior, options.figure)
    print(f"figure: {options.figure}")


if __name__ == "__main__":
    main()
