"""Every test starts from the same random state, on one torch thread.

One thread: the tests' tensors are small, so torch's intra-op pool (one thread per
core) buys nothing, and its idle threads spin while they wait for work. On a shared
2-core machine that doubles each test's CPU demand and, under load, starves the thread
doing the work: the default suite went from minutes to over half an hour (one network
test from 2 to 15 minutes). ``OMP_NUM_THREADS`` carries the choice to worker processes
the tests start.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
