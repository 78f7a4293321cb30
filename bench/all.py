"""Every benchmark of this folder in one process, with one summary table (``make bench``).

Each section is a script of its own (``python bench/importance.py`` etc., with larger
sizes and more seeds); here they run with ``--no-long`` sizes and a budget of 0.5 s per
contender per row, about two minutes in all. ``--markdown FILE`` also writes the table,
``--only SECTION`` picks sections, ``--help`` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import batched
import csis
import harness
import importance
import overhead
import rws
import smc
import streaming

SECTIONS = [importance, csis, rws, batched, overhead, streaming, smc]

if __name__ == "__main__":
    sys.exit(harness.main([s.SECTION for s in SECTIONS], budget=0.5, long=False))
