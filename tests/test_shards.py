"""Trace datasets saved as shards: exact roundtrip, safe loading, training from shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.distributions import Categorical, Independent, Normal

import infcomp as ic
from infcomp.errors import ArtifactError
from infcomp.examples.gaussian import DATA, exact_posterior, gaussian
from infcomp.examples.marsaglia import marsaglia
from infcomp.inference.dataset import TraceDataset
from infcomp.inference.shards import _decode, _encode, iter_shards


def assert_same(a: TraceDataset, b: TraceDataset) -> None:
    assert a.sizes == b.sizes and a.invalid == b.invalid and a.failed == b.failed
    for x, y in zip(a.traces, b.traces):
        assert list(x.sites) == list(y.sites)
        for name, site in x.sites.items():
            other = y.sites[name]
            assert site.kind == other.kind and type(site.fn) is type(other.fn)
            assert torch.equal(site.value, other.value)
            assert torch.equal(site.fn.log_prob(site.value), other.fn.log_prob(other.value))


def test_roundtrip_of_a_variable_structure_dataset(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dataset = ic.CSIS(marsaglia, vectorize=False).simulate(400)
    assert dataset.save(tmp_path, shard_size=150) == 3
    assert_same(dataset, TraceDataset.load(tmp_path))
    shares = [TraceDataset.load(tmp_path, rank, 2) for rank in range(2)]
    assert [len(share) for share in shares] == [250, 150]  # shards 0, 2 and shard 1
    # Every file loads with weights_only=True (nothing pickled).
    for file in tmp_path.glob("shard-*.pt"):
        torch.load(file, weights_only=True)


def test_distribution_trees_roundtrip() -> None:
    mixture = torch.distributions.MixtureSameFamily(
        Categorical(logits=torch.randn(3, 2)), Normal(torch.randn(3, 2), torch.ones(3, 2))
    )
    for fn in (Independent(Normal(torch.zeros(3, 2), 1.0), 1), mixture, Categorical(torch.ones(4))):
        rebuilt = _decode(_encode(fn))
        value = fn.sample()
        assert type(rebuilt) is type(fn)
        assert torch.allclose(rebuilt.log_prob(value), fn.log_prob(value))


def test_bad_manifest_is_an_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="manifest"):
        list(iter_shards(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "infcomp-trace-shards"}))
    with pytest.raises(ArtifactError, match="version"):
        list(iter_shards(tmp_path))


def test_training_from_shards_learns_the_gaussian_posterior(tmp_path: Path) -> None:
    torch.manual_seed(0)
    csis = ic.CSIS(gaussian, validation_size=0)
    csis.simulate(6000).save(tmp_path, shard_size=2000)
    csis.train(dataset=TraceDataset.load(tmp_path), batch_size=128, max_epochs=8, progress=False)
    post = csis.run(DATA, num_particles=2000)
    posterior = exact_posterior()
    mean, std = float(posterior.mean), float(posterior.stddev)
    # A trained proposal near N(7.25, 0.91): the ESS of 2000 is high, the mean close
    # (its Monte Carlo error is about std / sqrt(ESS) < 0.03).
    assert post.ess > 1000
    assert abs(float(post.mean("z")) - mean) < 5 * std / post.ess**0.5
