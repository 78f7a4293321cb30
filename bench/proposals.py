"""Quality of the automatic network's proposals: ESS/N of 5,000 particles after online
training (``csis.train(steps, 256)``, Adam 1e-3) from one seed.

1. **Gaussian linear** (sbibm): θ ~ N(0, 0.1·I₁₀) as one 10-d site, x ~ N(θ, 0.1·I₁₀);
   the posterior N(x/2, 0.05·I) is independent Normals. Mean ESS/N over five
   observations drawn from the prior predictive.
2. **Gaussian tails**: z ~ N(1, √5), x1, x2 ~ N(z, √2) at x1 = x2 = c for c = 7, 8.5, 10,
   12 (exact posterior means 6.00, 7.25, 8.50, 10.17): observations in the tails of the
   simulations.
3. **SLCP** (sbibm): θ ~ U(-3, 3)⁵, four draws x_j ~ N((θ₁, θ₂), Σ(θ)) with standard
   deviations θ₃², θ₄² and correlation tanh θ₅; a multimodal posterior. Three
   observations from fixed parameters.

Run ``python bench/proposals.py --steps 390`` (10⁵ simulations); ``--no-flows`` gives
vector sites the diagonal heads (``NetworkConfig(flows=False)``).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.distributions import Independent, MultivariateNormal, Normal, Uniform

import infcomp as ic
from infcomp.examples.gaussian import gaussian
from infcomp.nn import NetworkConfig

PARTICLES = 5000


def gaussian_linear() -> None:
    theta = ic.sample("theta", Independent(Normal(torch.zeros(10), 0.1**0.5), 1))
    ic.observe("x", Independent(Normal(theta, 0.1**0.5), 1))


def slcp_scale_tril(theta: torch.Tensor) -> torch.Tensor:
    s1, s2, rho = theta[..., 2] ** 2, theta[..., 3] ** 2, torch.tanh(theta[..., 4])
    zero = torch.zeros_like(s1)
    rows = [torch.stack([s1, zero], -1), torch.stack([rho * s2, s2 * (1 - rho**2).sqrt()], -1)]
    return torch.stack(rows, -2)


def slcp() -> None:
    theta = ic.sample("theta", Independent(Uniform(-3 * torch.ones(5), 3.0), 1))
    draw = MultivariateNormal(
        theta[..., :2].unsqueeze(-2), scale_tril=slcp_scale_tril(theta)[..., None, :, :]
    )
    ic.observe("x", Independent(draw.expand(draw.batch_shape[:-1] + (4,)), 1))


def ess_fraction(csis: ic.CSIS, data: dict[str, object]) -> float:
    return float(csis.run(data, num_particles=PARTICLES).ess) / PARTICLES


def compile_model(model: object, options: argparse.Namespace) -> tuple[ic.CSIS, float]:
    torch.manual_seed(options.seed)
    csis = ic.CSIS(model, network=NetworkConfig(flows=options.flows))  # type: ignore[arg-type]
    start = time.perf_counter()
    csis.train(options.steps, 256, progress=False)
    return csis, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=390, help="training steps of 256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-flows", dest="flows", action="store_false")
    parser.add_argument("--models", default="linear,tails,slcp")
    options = parser.parse_args()
    torch.set_num_threads(1)
    models = options.models.split(",")
    print(f"{options.steps * 256} simulations, seed {options.seed}, flows={options.flows}")
    if "linear" in models:
        csis, seconds = compile_model(gaussian_linear, options)
        torch.manual_seed(100)
        fractions = []
        for _ in range(5):
            x = (torch.randn(10) + torch.randn(10)) * 0.1**0.5
            fractions.append(ess_fraction(csis, {"x": x}))
        print(
            f"gaussian linear: ESS/N {sum(fractions) / 5:.3f} "
            f"{[round(f, 3) for f in fractions]} (training {seconds:.0f} s)"
        )
    if "tails" in models:
        csis, _ = compile_model(gaussian, options)
        torch.manual_seed(1)
        tails = {c: round(ess_fraction(csis, {"x1": c, "x2": c}), 3) for c in (7, 8.5, 10, 12)}
        print(f"gaussian tails: ESS/N at x1 = x2 = c {tails}")
    if "slcp" in models:
        csis, seconds = compile_model(slcp, options)
        torch.manual_seed(7)
        fractions = []
        for theta in (
            [0.7, -2.9, -1.0, -0.9, 0.6],
            [-1.0, 1.0, 0.5, 1.5, -0.3],
            [2.0, 0.0, -2.0, 1.0, 0.9],
        ):
            theta_t = torch.tensor(theta)
            x = MultivariateNormal(theta_t[:2], scale_tril=slcp_scale_tril(theta_t)).sample((4,))
            fractions.append(ess_fraction(csis, {"x": x}))
        print(
            f"SLCP: ESS/N {sum(fractions) / 3:.3f} {[round(f, 3) for f in fractions]} "
            f"(training {seconds:.0f} s)"
        )


if __name__ == "__main__":
    main()
