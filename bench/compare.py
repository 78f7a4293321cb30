"""infcomp's benchmark figures for two versions of the library, side by side in one run.

``python bench/compare.py [REV]`` (``make bench-compare``; REV defaults to ``HEAD``)
checks REV out into a temporary ``git worktree`` and runs this checkout's benchmark
code (``bench/all.py --only SECTION --no-peers``) against REV's library and against this
checkout's, each in a fresh process with ``PYTHONPATH=<tree>/src``, alternating: for
every repeat and every section, one process per version, the order swapped each time, so
that load from elsewhere hits both alike. Per figure it prints the median over the
repeats of each version, new/old, the spread of the repeats (largest/smallest − 1, the
worse version's) and flags a figure more than ``--threshold`` (10 %) worse. Comparing a
revision with the same library measures the noise. The benchmark code must use only
public API that both versions have.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The sections of bench/all.py, named here so that this process needs no torch.
SECTIONS = ("importance", "csis", "rws", "batched", "overhead", "streaming")


def run(tree: Path, section: str, options: argparse.Namespace, out: Path) -> dict[str, list]:
    """One process: this checkout's ``bench/all.py`` on ``tree``'s library."""
    command = [sys.executable, str(ROOT / "bench" / "all.py"), "--only", section, "--no-peers"]
    command += ["--budget", str(options.budget), "--seed", str(options.seed), "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{section} failed on {tree}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    result = json.loads(out.read_text())
    if not Path(result["infcomp"]).resolve().is_relative_to((tree / "src").resolve()):
        sys.exit(f"imported {result['infcomp']}, not the library of {tree}")
    figures: dict[str, list] = result["figures"]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", default="HEAD", help="the old version (default HEAD)")
    parser.add_argument("--repeats", type=int, default=2, help="processes per version (2)")
    parser.add_argument("--budget", type=float, default=0.2, help="bench/all.py --budget (0.2)")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="only this section")
    parser.add_argument("--threshold", type=float, default=0.10, help="flag if worse (0.10)")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    started = time.perf_counter()
    sections = options.only or SECTIONS
    values: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    higher: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="infcomp-compare-") as scratch:
        old = Path(scratch) / "old"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "--detach", str(old), options.rev], check=True)
        try:
            trees = {"old": old, "new": ROOT}
            for repeat in range(options.repeats):
                for index, section in enumerate(sections):
                    order = ("old", "new") if (repeat + index) % 2 == 0 else ("new", "old")
                    for version in order:
                        out = Path(scratch) / f"{version}.json"
                        for key, (value, up) in run(trees[version], section, options, out).items():
                            values[version].setdefault(key, []).append(value)
                            higher[key] = up
                        print(f"repeat {repeat + 1}, {section}, {version}: done", flush=True)
        finally:
            subprocess.run([*git, "remove", "--force", str(old)], check=True)

    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", options.rev],
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"\nold: {options.rev} ({rev}); new: this checkout ({ROOT}); median of {options.repeats}")
    width = max(map(len, higher))
    print(f"{'figure':<{width}} {'old':>9} {'new':>9} {'new/old':>8} {'spread':>7}")
    worse = 0
    for key, up in higher.items():
        old_values, new_values = values["old"].get(key), values["new"].get(key)
        if not old_values or not new_values:
            print(f"{key:<{width}} {'(measured for one version only)':>36}")
            continue
        a, b = statistics.median(old_values), statistics.median(new_values)
        spread = max(max(v) / min(v) - 1 if min(v) > 0 else 0.0 for v in (old_values, new_values))
        ratio = b / a if a else float("nan")
        flag = (ratio < 1 - options.threshold) if up else (ratio > 1 + options.threshold)
        worse += flag
        print(
            f"{key:<{width}} {a:>9.3g} {b:>9.3g} {ratio:>8.3f} {spread:>6.1%}"
            + ("  WORSE" if flag else "")
        )
    print(f"\n{worse} figure(s) more than {options.threshold:.0%} worse; ", end="")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
