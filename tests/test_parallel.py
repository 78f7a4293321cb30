"""Seeded simulation in chunks: the dataset does not depend on the number of workers."""

from __future__ import annotations

import pytest
import torch

import infcomp as ic
from infcomp.examples.gaussian import gaussian
from infcomp.examples.marsaglia import marsaglia
from infcomp.inference.dataset import TraceDataset
from infcomp.inference.parallel import chunk_seed, chunk_sizes


def same_datasets(a: TraceDataset, b: TraceDataset) -> bool:
    if a.sizes != b.sizes or len(a.traces) != len(b.traces):
        return False
    for x, y in zip(a.traces, b.traces):
        if list(x.sites) != list(y.sites):
            return False
        for name in x.sites:
            if not torch.equal(x.sites[name].value, y.sites[name].value):
                return False
    return True


def test_chunk_seeds_are_distinct_and_in_torch_range() -> None:
    seeds = [chunk_seed(12345, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert all(0 <= s < 2**63 for s in seeds)
    assert chunk_sizes(10, 4) == [4, 4, 2]


def test_marsaglia_dataset_is_the_same_for_one_and_two_workers() -> None:
    csis = ic.CSIS(marsaglia, vectorize=False)
    torch.manual_seed(3)
    one = csis.simulate(300, chunk_size=50, workers=1)
    after_one = torch.rand(())
    torch.manual_seed(3)
    two = csis.simulate(300, chunk_size=50, workers=2)
    after_two = torch.rand(())
    # A second call reuses the pool.
    pool = csis._simulation_pool
    again = csis.simulate(100, chunk_size=50, workers=2)
    assert csis._simulation_pool is pool
    csis.close()
    assert len(one) == 300 and len(again) == 100
    assert len(one.traces) > 1  # several structures (numbers of attempts)
    assert same_datasets(one, two)
    # Both drew one number (the base seed) from the global stream.
    assert torch.equal(after_one, after_two)
    torch.manual_seed(4)
    assert not same_datasets(one, csis.simulate(300, chunk_size=50, workers=1))


@pytest.mark.slow
def test_vectorized_model_dataset_is_the_same_for_one_and_two_workers() -> None:
    csis = ic.CSIS(gaussian)
    torch.manual_seed(0)
    one = csis.simulate(1000, chunk_size=300, workers=1)
    torch.manual_seed(0)
    two = csis.simulate(1000, chunk_size=300, workers=2)
    csis.close()
    assert same_datasets(one, two)
