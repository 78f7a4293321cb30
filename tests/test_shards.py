"""Trace datasets saved as shards: exact roundtrip, safe loading, training from shards."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributions import Categorical, Independent, Normal

import infcomp as ic
from infcomp.errors import ArtifactError
from infcomp.examples.gaussian import DATA, exact_posterior, gaussian
from infcomp.examples.marsaglia import marsaglia
from infcomp.inference.dataset import TraceDataset
from infcomp.inference.shards import _decode, _encode, check_share, iter_shards


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


class UserNormal(Normal):
    """A distribution class of the user's: shards cannot hold it."""


def unwritable():
    """Its rare branch's structure comes last: shards are written before the error."""
    z = ic.sample("z", Normal(0.0, 1.0))
    if z > 1.0:
        z = z + ic.sample("extra", UserNormal(0.0, 1.0))
    ic.observe("x", Normal(z, 1.0))


def test_saving_again_replaces_the_dataset_and_a_failed_save_changes_nothing(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    dataset = ic.CSIS(gaussian).simulate(300)
    (tmp_path / "notes.txt").write_text("kept")
    (tmp_path / "shard-99999.pt").write_text("no manifest lists it: kept")
    assert dataset.save(tmp_path, shard_size=100) == 3
    assert dataset.save(tmp_path, shard_size=300) == 1
    left = sorted(file.name for file in tmp_path.iterdir())
    assert left == ["manifest.json", "notes.txt", "shard-00000.pt", "shard-99999.pt"]
    assert_same(dataset, TraceDataset.load(tmp_path))
    # A save that fails (a distribution class shards cannot hold) leaves it all as it was.
    before = {file.name: file.read_bytes() for file in tmp_path.iterdir()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.VectorizationNotice)
        torch.manual_seed(1)
        failing = ic.CSIS(unwritable).simulate(200)
    # Its first shard holds no 'extra' site: it is written before the error.
    assert tuple(failing.traces[0].sites) == ("z", "x") and failing.sizes[0] >= 50
    with pytest.raises(ArtifactError, match="'extra'"):
        failing.save(tmp_path, shard_size=50)
    assert {file.name: file.read_bytes() for file in tmp_path.iterdir()} == before
    assert_same(dataset, TraceDataset.load(tmp_path))


def test_datasets_made_in_pieces_concatenate_by_structure(tmp_path: Path) -> None:
    torch.manual_seed(0)
    csis = ic.CSIS(marsaglia, vectorize=False)
    for index, size in enumerate((150, 100)):
        csis.simulate(size).save(tmp_path / f"part{index}", shard_size=60)
    parts = [TraceDataset.load(tmp_path / f"part{index}") for index in range(2)]
    whole = TraceDataset.concatenate(parts)
    assert len(whole) == 250
    # One group per structure (number of attempts of the loop), each part's rows in it.
    structures = [tuple(trace.sites) for trace in whole.traces]
    assert len(set(structures)) == len(structures)
    for trace, size in zip(whole.traces, whole.sizes):
        assert size == sum(
            s
            for part in parts
            for t, s in zip(part.traces, part.sizes)
            if t.sites.keys() == trace.sites.keys()
        )
    csis.train(dataset=whole, max_epochs=1, progress=False)
    with pytest.raises(TypeError, match="a list of TraceDatasets"):
        TraceDataset.concatenate(parts[0])


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


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """35 simulations of the Gaussian model in shards of 10, 10, 10 and 5."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("shards")
    assert ic.CSIS(gaussian).simulate(35).save(folder, shard_size=10) == 4
    return folder


@pytest.fixture
def folder(saved: Path, tmp_path: Path) -> Path:
    """A copy of ``saved`` that a test may spoil."""
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def one_line_artifact_error(folder: Path, match: str) -> None:
    """Loading ``folder`` (all of it) raises a one-line ArtifactError matching ``match``."""
    with pytest.raises(ArtifactError, match=match) as error:
        TraceDataset.load(folder)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("rank", "world_size", "match"),
    [
        (2, 2, r"rank must be an integer in \[0, world_size=2\), got 2"),
        (-1, 2, r"in \[0, world_size=2\), got -1"),
        (0, 0, "world_size must be a positive integer"),
        (0, -3, "world_size must be a positive integer"),
        (0, 1.0, "world_size must be a positive integer"),
        (True, 2, "rank must be"),
        (0.5, 2, "rank must be"),
    ],
)
def test_bad_rank_or_world_size_is_a_value_error(
    saved: Path, rank: Any, world_size: Any, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        TraceDataset.load(saved, rank, world_size)
    with pytest.raises(ValueError, match=match):
        iter_shards(saved, rank, world_size)  # at the call, not at the first shard


def test_a_rank_without_a_shard_is_refused(saved: Path) -> None:
    assert len(TraceDataset.load(saved, 3, 4)) == 5  # the last shard
    with pytest.raises(ArtifactError, match="holds 4 shard.*5 ranks.*smaller shard_size"):
        TraceDataset.load(saved, 0, 5)
    assert check_share(saved, 0, 4) == 4


def test_an_empty_dataset_is_not_saved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        TraceDataset([], [], {}, {}).save(tmp_path, shard_size=10)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit of a manifest: set ``manifest[k1][k2]...`` (keys separated by dots;
    digits index lists) to ``value``, or delete it where ``value`` is ``...``."""

    def edit(manifest: dict[str, Any]) -> None:
        *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        node: Any = manifest
        for key in parents:
            node = node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set("shards", ...), "'shards' must be a non-empty list"),
        (_set("shards", "abc"), "'shards' must be a non-empty list"),
        (_set("shards", []), "'shards' must be a non-empty list"),
        (_set("shards.0", "shard-00000.pt"), r"shards\[0\] must be an object"),
        (_set("shards.1.file", 3), r"shards\[1\]\['file'\] must be a plain file name"),
        (_set("shards.1.file", ...), r"shards\[1\]\['file'\] must be a plain file name"),
        (_set("shards.1.file", "../shard-00001.pt"), r"\['file'\] must be a plain file name"),
        (_set("shards.1.file", "/etc/passwd"), r"\['file'\] must be a plain file name"),
        (_set("shards.1.file", "copy/shard-00001.pt"), r"\['file'\] must be a plain file"),
        (_set("shards.1.file", ".."), r"\['file'\] must be a plain file name"),
        (_set("shards.1.file", "shard-00000.pt"), "lists 'shard-00000.pt' a second time"),
        (_set("shards.2.size", "10"), r"shards\[2\]\['size'\] must be a positive integer"),
        (_set("shards.2.size", 0), r"\['size'\] must be a positive integer"),
        (_set("shards.2.size", True), r"\['size'\] must be a positive integer"),
        (_set("shards.2.size", ...), r"\['size'\] must be a positive integer"),
        (_set("invalid", "x"), "'invalid' must map site names to non-negative integers"),
        (_set("invalid", {"z": -1}), "'invalid' must map"),
        (_set("failed", ...), "'failed' must map"),
        (_set("failed", {"z": 1.5}), "'failed' must map"),
        (_set("format_version", "1"), "format version"),
        (lambda manifest: manifest.clear(), "not a manifest"),
    ],
)
def test_bad_manifest_fields_are_named(
    folder: Path, edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    file = folder / "manifest.json"
    manifest = json.loads(file.read_text())
    edit(manifest)
    file.write_text(json.dumps(manifest))
    one_line_artifact_error(folder, match)


def _rewrite(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """A spoiling of a shard file: load its record, edit it and save it again."""

    def spoil(file: Path) -> None:
        record = torch.load(file, weights_only=True)
        edit(record)
        torch.save(record, file)

    return spoil


def _write(data: Any) -> Callable[[Path], None]:
    def spoil(file: Path) -> None:
        if isinstance(data, bytes):
            file.write_bytes(data)
        else:
            torch.save(data, file)

    return spoil


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _make_a_folder(file: Path) -> None:
    file.unlink()
    file.mkdir()


def _first_site(record: dict[str, Any]) -> dict[str, Any]:
    site: dict[str, Any] = record["traces"][0]["sites"][0]
    return site


@pytest.mark.parametrize(
    ("spoil", "match"),
    [
        (Path.unlink, "listed in .*manifest.json but is not a file"),
        (_make_a_folder, "is not a file"),
        (_write(b"not a shard"), "not a readable trace shard"),
        (_write(b""), "not a readable trace shard: EOFError"),
        (_truncate, "not a readable trace shard"),
        (_write(Path("x")), "not a readable trace shard: Weights only load failed"),
        (_write([1, 2]), "not a trace shard: it holds no list of traces"),
        (_write({"traces": "x", "sizes": []}), "not a trace shard: it holds no list"),
        (_write({"traces": [], "sizes": []}), "holds 0 simulations; .*manifest.json says 10"),
        (_rewrite(lambda r: r.update(sizes=[9])), r"not a trace shard: its sizes \[9\]"),
        (_rewrite(lambda r: r.update(traces=r["traces"] * 2, sizes=[10, 10])), "holds 20 simu"),
        (_rewrite(lambda r: r["traces"][0].update(sites=[])), "has no sites"),
        (_rewrite(lambda r: _first_site(r).update(value=1.0)), "'z': its value is not a"),
        (_rewrite(lambda r: _first_site(r).update(kind="latent")), "not a sample, observe"),
        (_rewrite(lambda r: _first_site(r).update(fn=None)), "'z': a sample site has no"),
        (_rewrite(lambda r: _first_site(r)["fn"].update({"class": "eval"})), "unknown distri"),
        (_rewrite(lambda r: _first_site(r)["fn"].update(arguments={"x": 1})), "trace shard"),
        (
            _rewrite(lambda r: _first_site(r).update(value=torch.zeros(3))),
            "different numbers of simulations",
        ),
    ],
)
def test_bad_shards_are_named(folder: Path, spoil: Callable[[Path], None], match: str) -> None:
    spoil(folder / "shard-00001.pt")
    one_line_artifact_error(folder, "shard-00001.pt.*" + match)


def test_a_shard_of_another_size_than_the_manifest_says_is_refused(folder: Path) -> None:
    shutil.copy(folder / "shard-00003.pt", folder / "shard-00001.pt")  # 5 simulations, not 10
    one_line_artifact_error(folder, "shard-00001.pt holds 5 simulations; .*json says 10")


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
