"""Trace datasets on disk as shards: simulate on one machine, train on another.

A folder holds ``manifest.json`` (format, version, the shards' files and sizes, the
dropped-simulation counts) and one ``shard-NNNNN.pt`` per shard, written with
``torch.save``: a shard is a few group traces (simulations of one structure, values with
a leading dimension), each site stored as its name, kind, scale, value tensor and its
distribution as a tree of tensors and plain values (the constructor's arguments and the
class name). Nothing is pickled, so shards load with ``torch.load(weights_only=True)``
and a distribution is rebuilt only from a class of ``torch.distributions`` or
:mod:`infcomp.distributions`.

Example:
    >>> import tempfile, torch
    >>> import infcomp as ic
    >>> from infcomp.examples.gaussian import gaussian
    >>> from infcomp.inference.shards import load_shards, save_shards
    >>> _ = torch.manual_seed(0)
    >>> dataset = ic.CSIS(gaussian).simulate(1000)
    >>> folder = tempfile.mkdtemp()
    >>> save_shards(dataset, folder, shard_size=300)
    4
    >>> len(load_shards(folder))
    1000
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributions as td
from torch import Tensor
from torch.distributions import Distribution

import infcomp.distributions as icd
from infcomp.errors import ArtifactError
from infcomp.inference.common import check_positive_int
from infcomp.inference.dataset import TraceDataset
from infcomp.inference.particles import JointBatch
from infcomp.runtime import Site, Trace
from infcomp.traces import group_size

__all__ = ["dropped_counts", "iter_shards", "load_shards", "save_shards"]

FORMAT = "infcomp-trace-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Attribute names that differ from the constructor's argument names.
_ATTRIBUTE_OF: dict[tuple[type, str], str] = {(td.Independent, "base_distribution"): "base_dist"}
_EXCLUSIVE = (("logits", "probs"), ("scale_tril", "covariance_matrix", "precision_matrix"))


def save_shards(dataset: TraceDataset, folder: str | os.PathLike[str], shard_size: int) -> int:
    """Write ``dataset`` to ``folder`` (created if needed) as shards of at most
    ``shard_size`` simulations, in the dataset's order; returns the number of shards.

    Raises:
        ArtifactError: a site's distribution cannot be written as tensors (its class is
            not from ``torch.distributions`` or :mod:`infcomp.distributions`, or it holds
            a value that is neither a tensor, a distribution nor a plain number); the
            error names the site.
    """
    shard_size = check_positive_int("shard_size", shard_size)
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    shards = []
    for index, batch in enumerate(dataset.batches(shard_size)):
        name = f"shard-{index:05d}.pt"
        record = {"traces": [_encode_trace(trace) for trace in batch.traces], "sizes": batch.sizes}
        torch.save(record, path / name)
        shards.append({"file": name, "size": batch.size})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "shards": shards,
        "invalid": dataset.invalid,
        "failed": dataset.failed,
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return len(shards)


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a shard folder, checked.

    Raises:
        ArtifactError: no manifest, or one of another format or version.
    """
    file = Path(folder) / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{file} is not a readable shard manifest: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{file} is not a manifest of {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{file} has format version {manifest.get('format_version')!r}; this infcomp "
            f"reads version {FORMAT_VERSION}"
        )
    return manifest


def iter_shards(
    folder: str | os.PathLike[str], rank: int = 0, world_size: int = 1
) -> Iterator[JointBatch]:
    """The shards of ``folder`` one at a time (each a :class:`JointBatch`): all of them,
    or, for rank ``rank`` of ``world_size`` processes, shards rank, rank + world_size, ...

    Raises:
        ArtifactError: a bad manifest, or a shard that is not a trace shard.
    """
    manifest = read_manifest(folder)
    for entry in manifest["shards"][rank::world_size]:
        file = Path(folder) / str(entry["file"])
        record = torch.load(file, weights_only=True)
        try:
            traces = [_decode_trace(trace) for trace in record["traces"]]
        except (KeyError, TypeError, ValueError) as error:
            raise ArtifactError(f"{file} is not a trace shard: {error}") from error
        yield JointBatch(traces, [group_size(t) for t in traces], vectorized=True)


def load_shards(folder: str | os.PathLike[str], rank: int = 0, world_size: int = 1) -> TraceDataset:
    """The :class:`TraceDataset` of the shards of ``folder`` (for rank ``rank`` of
    ``world_size``: every world_size-th shard, see :func:`iter_shards`), grouped by
    structure again; its dropped-simulation counts are the manifest's (of all shards)."""
    dataset = TraceDataset.from_batches(list(iter_shards(folder, rank, world_size)))
    dataset.invalid, dataset.failed = dropped_counts(folder)
    return dataset


def dropped_counts(folder: str | os.PathLike[str]) -> tuple[dict[str, int], dict[str, int]]:
    """The manifest's counts, by site, of the simulations dropped from the whole dataset:
    (invalid, failed)."""
    manifest = read_manifest(folder)
    return (
        {str(k): int(v) for k, v in manifest["invalid"].items()},
        {str(k): int(v) for k, v in manifest["failed"].items()},
    )


# -- encoding --------------------------------------------------------------------------------


def _encode_trace(trace: Trace) -> dict[str, Any]:
    sites = []
    for site in trace.sites.values():
        try:
            fn = None if site.fn is None else _encode(site.fn)
        except ValueError as error:
            message = f"site {site.name!r}: cannot be written to a shard: {error}"
            raise ArtifactError(message) from error
        sites.append(
            {
                "name": site.name,
                "kind": site.kind,
                "scale": site.scale,
                "value": site.value,
                "fn": fn,
            }
        )
    return {"batch_ndim": trace.batch_ndim, "sites": sites}


def _decode_trace(record: dict[str, Any]) -> Trace:
    trace = Trace(batch_ndim=int(record["batch_ndim"]))
    for site in record["sites"]:
        fn = None if site["fn"] is None else _decode(site["fn"])
        trace.add(Site(str(site["name"]), site["kind"], fn, site["value"], float(site["scale"])))
    return trace


def _encode(fn: Distribution) -> dict[str, Any]:
    """A distribution as {"class": name, "arguments": {name: tensor | plain | tree}}."""
    kind = type(fn)
    if _distribution_class(kind.__name__) is not kind:
        raise ValueError(f"{kind.__name__} is not a torch.distributions or infcomp class")
    held = vars(fn)
    names = [n for n in inspect.signature(kind.__init__).parameters if n not in ("self",)]
    arguments: dict[str, Any] = {}
    for name in names:
        if name == "validate_args":
            continue
        attribute = _ATTRIBUTE_OF.get((kind, name), name)
        if attribute in held:
            value = held[attribute]
        elif "_" + attribute in held:
            value = held["_" + attribute]
        elif name in fn.arg_constraints and isinstance(
            inspect.getattr_static(kind, name, None), property
        ):
            value = getattr(fn, name)
        else:
            continue
        if isinstance(value, Distribution):
            value = _encode(value)
        elif not isinstance(value, (Tensor, int, float, bool, str, type(None))):
            raise ValueError(f"argument {name!r} of {kind.__name__} is a {type(value).__name__}")
        arguments[name] = value
    for group in _EXCLUSIVE:
        present = [name for name in group if name in arguments]
        for name in present[1:]:
            del arguments[name]
    return {"class": kind.__name__, "arguments": arguments}


def _decode(record: dict[str, Any]) -> Distribution:
    kind = _distribution_class(str(record["class"]))
    if kind is None:
        raise ValueError(f"unknown distribution class {record['class']!r}")
    arguments = {
        name: _decode(value) if isinstance(value, dict) else value
        for name, value in record["arguments"].items()
    }
    constructor: Any = kind
    fn: Distribution = constructor(**arguments, validate_args=False)
    return fn


def _distribution_class(name: str) -> type[Distribution] | None:
    for module in (td, icd):
        kind = getattr(module, name, None)
        if isinstance(kind, type) and issubclass(kind, Distribution):
            return kind
    return None
