"""Streaming importance sampling: peak memory against the number of particles.

Runs ``ic.importance_stream`` on the Gaussian (prior proposal, chunks of 10^6) for
N = 10^6 and N = 10^8 particles, each in a fresh process, and compares the processes'
peak resident memory (``ru_maxrss``). Bounded memory means the two are close: the
target is a peak for 10^8 within 2x of the peak for 10^6. Run ``python bench/streaming.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, time, warnings
import torch
import infcomp as ic
from infcomp.examples.gaussian import DATA, gaussian
torch.set_num_threads(1)
torch.manual_seed(0)
n, chunk = int(sys.argv[1]), int(sys.argv[2])
start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    post = ic.importance_stream(gaussian, DATA, num_samples=n, chunk_size=chunk)
seconds = time.perf_counter() - start
print(json.dumps({
    "n": n, "seconds": seconds,
    "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "log_evidence": float(post.log_evidence), "stderr": float(post.log_evidence_stderr),
    "mean": float(post.mean("z")), "ess": float(post.ess), "khat": float(post.khat),
}))
"""


def measure(n: int, chunk: int) -> dict[str, float]:
    """Stream ``n`` particles in a fresh process and return what it reports."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(chunk)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10**6)
    parser.add_argument("--large", type=int, default=10**8)
    parser.add_argument("--chunk", type=int, default=10**6)
    options = parser.parse_args()
    rows = [measure(n, options.chunk) for n in (options.small, options.large)]
    header = ["N", "seconds", "peak MiB", "log Z", "± se", "mean z", "ESS"]
    widths = [10, 9, 9, 9, 7, 8, 10]
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for row in rows:
        print(
            f"{row['n']:>10.0e} {row['seconds']:>9.2f} {row['peak_mib']:>9.0f} "
            f"{row['log_evidence']:>9.4f} {row['stderr']:>7.4f} {row['mean']:>8.4f} "
            f"{row['ess']:>10.3g}"
        )
    ratio = rows[1]["peak_mib"] / rows[0]["peak_mib"]
    verdict = "MET" if ratio <= 2 else "NOT MET"
    print(
        f"check: peak memory at {options.large:.0e} is {ratio:.2f}x that at {options.small:.0e} "
        f"(target <= 2x) -> {verdict}; exact log Z = -8.2394, mean 7.25"
    )


if __name__ == "__main__":
    main()
