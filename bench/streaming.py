"""Streaming importance sampling: peak memory against the number of particles.

Runs ``ic.importance_stream(gaussian, DATA, N, chunk_size=10**6)`` (prior proposal) for
N = 10⁶ and N = 10⁸, each in a fresh process, and compares the processes' peak resident
memory (``ru_maxrss``): bounded memory means the two are close. Target: the peak for
10⁸ within 2× the peak for 10⁶. Also the particles/s of the 10⁸ stream (one run).
Run ``python bench/streaming.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator

# isort: split
import harness
from harness import Case, Row, Section

CHILD = """
import json, resource, sys, time, warnings
import torch
import infcomp as ic
from infcomp.examples.gaussian import DATA, gaussian
torch.set_num_threads(1)
torch.manual_seed(0)
n = int(sys.argv[1])
start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    post = ic.importance_stream(gaussian, DATA, n, chunk_size=10**6)
    float(post.log_evidence), float(post.mean("z")), float(post.ess)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
SMALL, LARGE = 10**6, 10**8


def stream(n: int) -> dict[str, float]:
    """Stream ``n`` particles in a fresh process: its seconds and peak MiB."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def values() -> dict[str, float]:
    small, large = stream(SMALL), stream(LARGE)
    return {
        "ratio": large["peak"] / small["peak"],
        "peak": large["peak"],
        "rate": LARGE / large["seconds"],
    }


def cases(options: argparse.Namespace) -> Iterator[Case]:
    rows = [
        Row(
            "streaming, peak memory of N = 1e8 / N = 1e6",
            "ratio",
            "ratio",
            None,
            None,
            higher_is_better=False,
            target=("infcomp", "<=", 2.0),
        ),
        Row("streaming, peak memory of N = 1e8", "MiB", "peak", None, None, higher_is_better=False),
        Row("streaming, N = 1e8 in chunks of 1e6 (one run)", "particles/s", "rate", None, None),
    ]
    yield Case(rows, values=values)


SECTION = Section("streaming", "streaming importance sampling, Gaussian", cases)

if __name__ == "__main__":
    harness.run_alone(SECTION)
