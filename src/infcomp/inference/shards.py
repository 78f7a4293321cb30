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

__all__ = [
    "check_share",
    "dropped_counts",
    "iter_shards",
    "load_shards",
    "read_manifest",
    "save_shards",
]

FORMAT = "infcomp-trace-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: The suffix of files being written, renamed when the whole dataset is written.
PARTIAL = ".partial"
# Attribute names that differ from the constructor's argument names.
_ATTRIBUTE_OF: dict[tuple[type, str], str] = {(td.Independent, "base_distribution"): "base_dist"}
_EXCLUSIVE = (("logits", "probs"), ("scale_tril", "covariance_matrix", "precision_matrix"))


def save_shards(dataset: TraceDataset, folder: str | os.PathLike[str], shard_size: int) -> int:
    """Write ``dataset`` to ``folder`` (created if needed) as shards of at most
    ``shard_size`` simulations, in the dataset's order; returns the number of shards.

    A dataset saved there before is replaced: the shards its manifest lists that the new
    one does not overwrite are removed (other files are left alone). The shards are
    written under temporary names first, so a save that fails leaves the folder as it
    was.

    Raises:
        ValueError: ``shard_size`` is not a positive integer, or the dataset is empty
            (a folder of no shards would not load).
        ArtifactError: a site's distribution cannot be written as tensors (its class is
            not from ``torch.distributions`` or :mod:`infcomp.distributions`, or it holds
            a value that is neither a tensor, a distribution nor a plain number); the
            error names the site.
    """
    shard_size = check_positive_int("shard_size", shard_size)
    if not len(dataset):
        raise ValueError("the dataset is empty: there are no simulations to save")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    try:
        earlier = [shard["file"] for shard in read_manifest(path)["shards"]]
    except ArtifactError:  # no dataset saved here, or not one this infcomp can read
        earlier = []
    shards: list[dict[str, Any]] = []
    try:
        for index, batch in enumerate(dataset.batches(shard_size)):
            name = f"shard-{index:05d}.pt"
            traces = [_encode_trace(trace) for trace in batch.traces]
            torch.save({"traces": traces, "sizes": batch.sizes}, path / (name + PARTIAL))
            shards.append({"file": name, "size": batch.size})
    except BaseException:
        for shard in shards:
            (path / (shard["file"] + PARTIAL)).unlink(missing_ok=True)
        raise
    for shard in shards:
        os.replace(path / (shard["file"] + PARTIAL), path / shard["file"])
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "shards": shards,
        "invalid": dataset.invalid,
        "failed": dataset.failed,
    }
    (path / (MANIFEST + PARTIAL)).write_text(json.dumps(manifest, indent=1))
    os.replace(path / (MANIFEST + PARTIAL), path / MANIFEST)
    written = {shard["file"] for shard in shards}
    for name in earlier:
        if name not in written:
            (path / name).unlink(missing_ok=True)
    return len(shards)


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a shard folder, checked: its format and version, ``"shards"`` a
    non-empty list of ``{"file": name, "size": rows}`` (each file a distinct plain file
    name in the folder, each size a positive integer), and ``"invalid"`` and
    ``"failed"`` maps from site names to non-negative integers.

    Raises:
        ArtifactError: no readable manifest, or one of another format or version, or a
            field that is missing or of the wrong type (the error names the field).
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
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise ArtifactError(f"{file}: 'shards' must be a non-empty list, got {shards!r:.80}")
    names = set()
    for index, entry in enumerate(shards):
        field = f"{file}: shards[{index}]"
        if not isinstance(entry, dict):
            raise ArtifactError(f"{field} must be an object with 'file' and 'size'")
        name, size = entry.get("file"), entry.get("size")
        if not isinstance(name, str) or name in ("", ".", "..") or name != Path(name).name:
            raise ArtifactError(
                f"{field}['file'] must be a plain file name in the folder, got {name!r:.80}"
            )
        if name in names:
            raise ArtifactError(f"{field}['file'] lists {name!r} a second time")
        names.add(name)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ArtifactError(f"{field}['size'] must be a positive integer, got {size!r:.80}")
    for key in ("invalid", "failed"):
        counts = manifest.get(key)
        if not isinstance(counts, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts.values()
        ):
            raise ArtifactError(
                f"{file}: {key!r} must map site names to non-negative integers, got {counts!r:.80}"
            )
    return manifest


def check_share(folder: str | os.PathLike[str], rank: int, world_size: int) -> int:
    """The number of shards in ``folder``, checked to give rank ``rank`` of
    ``world_size`` processes at least one shard (shards rank, rank + world_size, ...).

    Raises:
        ValueError: ``world_size`` is not a positive integer, or ``rank`` not an integer
            in ``[0, world_size)``.
        ArtifactError: a bad manifest (see :func:`read_manifest`), or fewer shards than
            ranks.
    """
    world_size = check_positive_int("world_size", world_size)
    message = f"rank must be an integer in [0, world_size={world_size}), got {rank!r}"
    try:
        rank = check_positive_int("rank", rank, minimum=0)
    except ValueError:
        raise ValueError(message) from None
    if rank >= world_size:
        raise ValueError(message)
    count = len(read_manifest(folder)["shards"])
    if count < world_size:
        raise ArtifactError(
            f"{folder} holds {count} shard(s) for {world_size} ranks: write at least one "
            f"shard per rank (a smaller shard_size)"
        )
    return count


def iter_shards(
    folder: str | os.PathLike[str], rank: int = 0, world_size: int = 1
) -> Iterator[JointBatch]:
    """The shards of ``folder`` one at a time (each a :class:`JointBatch`): all of them,
    or, for rank ``rank`` of ``world_size`` processes, shards rank, rank + world_size, ...
    The arguments and the manifest are checked at the call; each shard as it is read.

    Raises:
        ValueError: bad ``rank`` or ``world_size`` (see :func:`check_share`).
        ArtifactError: a bad manifest, fewer shards than ranks, or a shard that is
            missing, is not a trace shard, or does not hold the manifest's number of
            simulations (the error names the file).
    """
    check_share(folder, rank, world_size)
    entries = read_manifest(folder)["shards"][rank::world_size]
    return (_read_shard(Path(folder), entry["file"], entry["size"]) for entry in entries)


def _read_shard(folder: Path, name: str, size: int) -> JointBatch:
    """The shard ``folder / name``, checked to be a trace shard of ``size`` simulations."""
    file = folder / name
    if not file.is_file():
        raise ArtifactError(f"{file} is listed in {folder / MANIFEST} but is not a file")
    try:
        record = torch.load(file, weights_only=True)
    # A corrupt file fails wherever torch.load notices: UnpicklingError, EOFError,
    # RuntimeError (a truncated zip), KeyError (no zip at all), OSError, ...
    except Exception as error:
        raise ArtifactError(f"{file} is not a readable trace shard: {_line(error)}") from error
    try:
        if not isinstance(record, dict) or not isinstance(record.get("traces"), list):
            raise ValueError("it holds no list of traces")
        traces = [_decode_trace(trace) for trace in record["traces"]]
        sizes = [group_size(trace) for trace in traces]
        if record.get("sizes") != sizes:
            raise ValueError(f"its sizes {record.get('sizes')!r:.80} are not its groups' {sizes}")
    # Decoding calls distributions' constructors, which may raise anything on bad input.
    except Exception as error:
        raise ArtifactError(f"{file} is not a trace shard: {_line(error)}") from error
    if sum(sizes) != size:
        raise ArtifactError(
            f"{file} holds {sum(sizes)} simulations; {folder / MANIFEST} says {size}"
        )
    return JointBatch(traces, sizes, vectorized=True)


def _line(error: Exception) -> str:
    """The first line of an error's message, with its type when the message is empty."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def load_shards(folder: str | os.PathLike[str], rank: int = 0, world_size: int = 1) -> TraceDataset:
    """The :class:`TraceDataset` of the shards of ``folder`` (for rank ``rank`` of
    ``world_size``: every world_size-th shard, see :func:`iter_shards`), grouped by
    structure again; its dropped-simulation counts are the manifest's (of all shards).

    Raises:
        ValueError: bad ``rank`` or ``world_size``.
        ArtifactError: a bad manifest or shard, or fewer shards than ranks (see
            :func:`iter_shards`).
    """
    dataset = TraceDataset.from_batches(list(iter_shards(folder, rank, world_size)))
    dataset.invalid, dataset.failed = dropped_counts(folder)
    return dataset


def dropped_counts(folder: str | os.PathLike[str]) -> tuple[dict[str, int], dict[str, int]]:
    """The manifest's counts, by site, of the simulations dropped from the whole dataset:
    (invalid, failed).

    Raises:
        ArtifactError: a bad manifest (see :func:`read_manifest`).
    """
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


def _decode_trace(record: Any) -> Trace:
    """A group trace from its record; a ValueError where the record is not one (sites
    that are not ``{"name", "kind", "scale", "value", "fn"}``, a value that is not a
    tensor with the group's leading dimension)."""
    if not isinstance(record, dict) or not isinstance(record.get("sites"), list):
        raise ValueError("a trace is not {'batch_ndim', 'sites': [...]}")
    if not record["sites"]:
        raise ValueError("a trace has no sites")
    trace = Trace(batch_ndim=int(record["batch_ndim"]))
    for site in record["sites"]:
        if not isinstance(site, dict) or site.get("kind") not in ("sample", "observe", "factor"):
            raise ValueError(f"a site is not a sample, observe or factor site: {site!r:.80}")
        name, value = str(site["name"]), site["value"]
        if not isinstance(value, Tensor) or value.dim() < 1:
            raise ValueError(f"site {name!r}: its value is not a tensor with a group dimension")
        fn = None if site["fn"] is None else _decode(site["fn"])
        if fn is None and site["kind"] != "factor":
            raise ValueError(f"site {name!r}: a {site['kind']} site has no distribution")
        trace.add(Site(name, site["kind"], fn, value, float(site["scale"])))
    if (
        len({int(site.value.shape[0]) for site in trace.sites.values() if site.value is not None})
        > 1
    ):
        raise ValueError("the sites of a trace have different numbers of simulations")
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
