"""The main job: importance sampling on the Gaussian with unknown mean, next to the exact answer.

Run ``python -m infcomp.demo``. The model is z ~ N(1, √5); x1, x2 ~ N(z, √2), observed
at (8, 9); the exact posterior is N(7.25, √(5/6)) and log p(8, 9) = -8.2394. Prior
importance sampling with 50 particles shows what a poor proposal looks like (few
effective samples, a high k-hat and a warning); with 10⁶ particles it is accurate.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Sequence

import torch

import infcomp as ic
from infcomp.examples.gaussian import DATA, exact_log_evidence, exact_posterior, gaussian


def report(num_samples: Sequence[int], seed: int = 0) -> str:
    """Run prior importance sampling at each N and return a table beside the exact values."""
    exact = exact_posterior()
    columns = []
    notes = []
    for n in num_samples:
        torch.manual_seed(seed)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ic.InferenceWarning)
            post = ic.importance(gaussian, DATA, num_samples=n)
        seconds = time.perf_counter() - start
        notes += [
            f"N = {n}: {w.message}" for w in caught if issubclass(w.category, ic.InferenceWarning)
        ]
        columns.append(
            [
                f"{float(post.mean('z')):.4f}",
                f"{float(post.std('z')):.4f}",
                f"{float(post.ess):.1f}",
                f"{float(post.log_evidence):.4f} ± {float(post.log_evidence_stderr):.4f}",
                f"{float(post.khat):.2f}",
                f"{seconds:.3f}",
            ]
        )
    exact_column = [
        f"{float(exact.mean):.4f}",
        f"{float(exact.stddev):.4f}",
        "N",
        f"{exact_log_evidence():.4f}",
        "-",
        "-",
    ]
    rows = ["mean z", "std z", "ESS", "log evidence", "Pareto k-hat", "seconds"]
    header = ["", *[f"prior IS, N = {n:,}" for n in num_samples], "exact"]
    widths = [14, *[max(22, len(h)) for h in header[1:]]]
    lines = [
        "Gaussian with unknown mean: z ~ N(1, √5), x1, x2 ~ N(z, √2), data (8, 9)",
        "  ".join(h.rjust(w) for h, w in zip(header, widths)),
    ]
    for i, row in enumerate(rows):
        cells = [row, *[column[i] for column in columns], exact_column[i]]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    if notes:
        lines += ["", "Warnings the library gave:", *[f"  {note}" for note in notes]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--num-samples", type=int, nargs="+", default=[50, 1_000_000], help="particle counts"
    )
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    print(report(options.num_samples, options.seed))


if __name__ == "__main__":
    main()
