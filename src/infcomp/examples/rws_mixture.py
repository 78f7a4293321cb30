"""Reweighted wake-sleep on a Gaussian mixture: a generative model with discrete latents.

The model: c ~ Categorical(softmax(logits)), y ~ N(means[c], 1), with ``means`` and
``logits`` learned (θ) together with an automatic inference network for c (φ). Data:
500 points from means (-2, 2) and weights (0.3, 0.7). Reparametrized variational
methods cannot differentiate through c; wake-sleep needs no such gradient.

Run ``python -m infcomp.examples.rws_mixture`` to train, print the learned parameters
beside the maximum-likelihood ones (by EM) and plot the estimated log p(data) as it
rises over training.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Normal

import infcomp as ic

TRUE_MEANS = (-2.0, 2.0)
TRUE_WEIGHTS = (0.3, 0.7)


class Mixture(nn.Module):
    """c ~ Categorical(softmax(logits)); y ~ N(means[c], 1); θ = (means, logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.Parameter(torch.tensor([-0.5, 0.5]))
        self.logits = nn.Parameter(torch.zeros(2))

    def forward(self) -> Tensor:
        c = ic.sample("c", Categorical(logits=self.logits))
        return ic.observe("y", Normal(self.means[c], 1.0))


def simulate_data(size: int = 500, seed: int = 0) -> Tensor:
    """``size`` points from the true mixture."""
    generator = torch.Generator().manual_seed(seed)
    c = (torch.rand(size, generator=generator) < TRUE_WEIGHTS[1]).long()
    return torch.tensor(TRUE_MEANS)[c] + torch.randn(size, generator=generator)


def maximum_likelihood(y: Tensor, iterations: int = 500) -> tuple[Tensor, Tensor, float]:
    """Means, weights and log-likelihood at the maximum, by EM (unit variances known)."""
    y = y.double()
    means = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.5], dtype=torch.float64)
    for _ in range(iterations):
        log_joint = weights.log() + Normal(means, 1.0).log_prob(y.unsqueeze(-1))
        responsibilities = torch.softmax(log_joint, dim=-1)
        weights = responsibilities.mean(0)
        means = (responsibilities * y.unsqueeze(-1)).sum(0) / responsibilities.sum(0)
    log_joint = weights.log() + Normal(means, 1.0).log_prob(y.unsqueeze(-1))
    return means, weights, float(log_joint.logsumexp(-1).sum())


def fit(
    y: Tensor, steps: int = 1000, batch_size: int = 100, every: int = 50, seed: int = 0
) -> tuple[Mixture, list[tuple[int, float, float]]]:
    """Train with RWS; every ``every`` steps estimate log p(data) (100 particles each)."""
    torch.manual_seed(seed)
    model = Mixture()
    rws = ic.RWS(model, {"y": y}, num_particles=10, model_learning_rate=0.01, learning_rate=3e-3)
    curve = [(0, *rws.log_evidence(num_particles=100))]
    while rws.num_steps < steps:
        rws.train(every, batch_size, progress=False)
        curve.append((rws.num_steps, *rws.log_evidence(num_particles=100)))
    return model, curve


def save_figure(curve: list[tuple[int, float, float]], maximum: float, path: Path) -> None:
    """Estimated log p(data) ± 2 standard errors over training, and the maximum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c[0] for c in curve]
    values = torch.tensor([c[1] for c in curve])
    errors = torch.tensor([c[2] for c in curve])
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.fill_between(steps, values - 2 * errors, values + 2 * errors, alpha=0.3)
    axes.plot(steps, values, marker="o", label="RWS: estimated log p(data)")
    axes.axhline(maximum, color="black", linestyle="--", label="maximum likelihood (EM)")
    axes.set_xlabel("training step")
    axes.set_ylabel("log p(data)")
    axes.set_title("Reweighted wake-sleep on a Gaussian mixture (500 points)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Fit a Gaussian mixture with reweighted wake-sleep."
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--figure", type=Path, default=Path("rws_mixture.png"))
    options = parser.parse_args(argv)
    y = simulate_data()
    means, weights, maximum = maximum_likelihood(y)
    model, curve = fit(y, options.steps)
    learned = torch.softmax(model.logits.detach(), 0)
    print(f"means:   RWS {model.means.detach().tolist()}, EM {means.tolist()}")
    print(f"weights: RWS {learned.tolist()}, EM {weights.tolist()}")
    for step, value, error in curve:
        print(f"step {step:5d}: log p(data) ≈ {value:.2f} ± {error:.2f} (maximum {maximum:.2f})")
    save_figure(curve, maximum, options.figure)
    print(f"figure: {options.figure}")


if __name__ == "__main__":
    main()
