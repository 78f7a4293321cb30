"""The main job: inference on the Gaussian with unknown mean, next to the exact answer.

Run ``python -m infcomp.demo``. The model is z ~ N(1, √5); x1, x2 ~ N(z, √2), observed
at (8, 9); the exact posterior is N(7.25, √(5/6)) and log p(8, 9) = -8.2394.

1. Prior importance sampling with 50 particles shows what a poor proposal looks like
   (few effective samples, a high k-hat and a warning); with 10⁶ it is accurate.
2. Inference compilation: a neural guide is trained on joint simulations of the model
   (the CSIS seed notebook's settings), then importance sampling with it as proposal
   uses 50 samples, beside prior importance sampling with 50. The figure of the seed
   notebook is written to a PNG.
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import infcomp as ic
from infcomp.examples.csis_gaussian import compile_gaussian, save_figure
from infcomp.examples.gaussian import DATA, exact_log_evidence, exact_posterior, gaussian

ROWS = ["mean z", "std z", "ESS", "log evidence", "Pareto k-hat", "seconds"]


def timed(
    run: Callable[[], ic.Posterior], notes: list[str], label: str
) -> tuple[ic.Posterior, float]:
    """Run an inference, recording its warnings in ``notes`` instead of printing them."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ic.InferenceWarning)
        posterior = run()
    seconds = time.perf_counter() - start
    notes += [
        f"{label}: {w.message}" for w in caught if issubclass(w.category, ic.InferenceWarning)
    ]
    return posterior, seconds


def table(columns: Sequence[tuple[str, ic.Posterior, float]]) -> list[str]:
    """Estimates of each (label, posterior, seconds) column beside the exact values."""
    exact = exact_posterior()
    cells = {
        label: [
            f"{float(post.mean('z')):.4f}",
            f"{float(post.std('z')):.4f}",
            f"{float(post.ess):.1f}",
            f"{float(post.log_evidence):.4f} ± {float(post.log_evidence_stderr):.4f}",
            f"{float(post.khat):.2f}",
            f"{seconds:.3f}",
        ]
        for label, post, seconds in columns
    }
    cells["exact"] = [
        f"{float(exact.mean):.4f}",
        f"{float(exact.stddev):.4f}",
        "N",
        f"{exact_log_evidence():.4f}",
        "-",
        "-",
    ]
    return render(ROWS, cells)


def render(rows: Sequence[str], cells: dict[str, list[str]], width: int = 22) -> list[str]:
    """A right-aligned text table: one column per entry of ``cells`` (its label, then one
    cell per row), the row names on the left."""
    widths = [14] + [max(width, len(label)) for label in cells]
    lines = ["  ".join(h.rjust(w) for h, w in zip(["", *cells], widths))]
    for i, row in enumerate(rows):
        values = [row, *[column[i] for column in cells.values()]]
        lines.append("  ".join(v.rjust(w) for v, w in zip(values, widths)))
    return lines


def report(
    num_particles: Sequence[int] = (50, 1_000_000),
    seed: int = 0,
    compile_steps: int = 2000,
    compile_batch_size: int = 10,
    inference_samples: int = 50,
    figure: Path | None = None,
) -> str:
    """The demo's whole text: prior importance sampling, then compiled inference."""
    notes: list[str] = []
    lines = ["Gaussian with unknown mean: z ~ N(1, √5), x1, x2 ~ N(z, √2), data (8, 9)", ""]
    lines.append("1. Importance sampling with the prior as proposal")
    columns = []
    for n in num_particles:
        torch.manual_seed(seed)
        label = f"prior IS, N = {n:,}"
        post, seconds = timed(functools.partial(ic.importance, gaussian, DATA, n), notes, label)
        columns.append((label, post, seconds))
    lines += table(columns)

    if compile_steps > 0:
        lines += ["", f"2. Compiled inference: {compile_steps} steps, batch {compile_batch_size}"]
        start = time.perf_counter()
        csis = compile_gaussian(compile_steps, compile_batch_size, seed)
        training = time.perf_counter() - start
        lines.append(
            f"   guide MLP 2→10→20→10→5→2 trained in {training:.1f} s on "
            f"{compile_steps * compile_batch_size:,} joint simulations; validation loss "
            f"{csis.validation_history[-1][1]:.4f} (optimum 1.3276)"
        )
        torch.manual_seed(seed + 1)
        label = f"CSIS, N = {inference_samples}"
        compiled, seconds = timed(lambda: csis.run(DATA, inference_samples), notes, label)
        torch.manual_seed(seed + 1)
        prior_label = f"prior IS, N = {inference_samples}"
        prior, prior_seconds = timed(
            lambda: ic.importance(gaussian, DATA, inference_samples), notes, prior_label
        )
        lines += table([(label, compiled, seconds), (prior_label, prior, prior_seconds)])
        if figure is not None:
            save_figure(compiled, prior, figure)
            lines.append(f"   figure: {figure}")
    if notes:
        lines += ["", "Warnings the library gave:", *[f"  {note}" for note in notes]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--num-particles", type=int, nargs="+", default=[50, 1_000_000], help="prior IS particles"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compile-steps", type=int, default=2000, help="0 skips compilation")
    parser.add_argument("--compile-batch-size", type=int, default=10)
    parser.add_argument("--inference-samples", type=int, default=50)
    parser.add_argument("--figure", type=Path, default=Path("csis_gaussian.png"))
    options = parser.parse_args(argv)
    # One torch thread: the demo's small batches gain nothing from more, and on a
    # loaded machine two threads contend (make demo was ~8x slower with them).
    torch.set_num_threads(1)
    print(
        report(
            options.num_particles,
            options.seed,
            options.compile_steps,
            options.compile_batch_size,
            options.inference_samples,
            options.figure,
        )
    )


if __name__ == "__main__":
    main()
