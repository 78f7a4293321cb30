"""Saved CSIS artifacts: written safely, read without trusting them.

An artifact is one ``torch.save`` file, read back with ``weights_only=True`` (no code is
unpickled): a dict of plain values and tensors. Besides the guide's state and the
training state (see :meth:`~infcomp.inference.CSIS.save`), format version 2 stores

- ``signature``: the model's sites as a seeded probe of :data:`PROBE_SIZE` joint
  simulations saw them (kind, family, distribution type, value shape, and in how many
  runs), compared with a probe of the model at load by :func:`signature_differences`;
- ``checksums``: a SHA-256 digest of each part of the file (every tensor's dtype, shape
  and bytes, every number and string, in a fixed order), verified at load.

Writing goes to a temporary file in the target's folder, renamed over the target once
complete (``os.replace`` is atomic), so a failed write leaves the previous file as it was.
Before an automatic network is built, the shapes its config creates are computed on the
meta device (no memory) and compared with the stored tensors, and every size in the
config is bounded, so a small file cannot make the loader allocate more than it holds.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from infcomp.errors import ArtifactError, ArtifactWarning
from infcomp.inference.common import untouched_random_state, warn_user
from infcomp.inference.simulation import JointSimulator
from infcomp.nn.network import (
    InferenceNetwork,
    NetworkConfig,
    architecture_mismatch,
    split_index,
)
from infcomp.runtime import Trace

FORMAT = "infcomp.csis"
FORMAT_VERSION = 2
#: Versions :func:`read_artifact` reads (version 1 without verification).
READABLE_VERSIONS = (1, 2)
#: Joint simulations of the probe that gives a model's site signature, and its seed.
PROBE_SIZE = 64
PROBE_SEED = 0
#: A site occurring in at least this fraction of one probe's runs and in none of the
#: other's is a difference: for an unchanged model the chance is at most 0.75^64 ≈ 1e-8.
FREQUENT = 0.25
#: Bounds on what a saved network config may ask for: every size of its
#: :class:`~infcomp.nn.NetworkConfig` (but ``max_categories``, a threshold), and the
#: elements of one observation or value.
MAX_WIDTH = 1 << 16
MAX_ELEMENTS = 1 << 27

Payload = dict[str, Any]
#: Where an artifact lives: a path, or a binary file object (as for ``torch.save``).
Location = str | os.PathLike[str] | IO[bytes]


# -- writing and reading --------------------------------------------------------------------


def write_artifact(path: Location, payload: Payload) -> None:
    """Write ``payload`` with its checksums to ``path``, atomically.

    The file is written to a temporary file in the same folder (created with the usual
    permissions), flushed to disk, then renamed over ``path``; on any error the
    temporary file is removed and ``path`` is left as it was. A file object is written
    to directly.
    """
    payload = dict(payload, checksums=checksums(payload))
    if not isinstance(path, (str, os.PathLike)):
        torch.save(payload, path)
        return
    # Through a symbolic link, to the file it names (the link stays a link).
    target = Path(os.path.realpath(path))
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def describe(path: Location) -> str:
    """How messages name an artifact: its path, quoted."""
    return repr(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else "the artifact"


def read_artifact(path: Location) -> Payload:
    """The payload of an artifact, its format, version and checksums verified.

    Raises:
        ArtifactError: not an infcomp CSIS artifact, a version this infcomp cannot
            read, or a part whose checksum does not match (the file changed after it
            was saved). A version-1 file (no checksums) loads with an
            :class:`~infcomp.errors.ArtifactWarning`.
    """
    where = describe(path)
    try:
        saved = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, pickle.UnpicklingError) as error:
        # (torch.load of an arbitrary file: KeyError for a text file, ValueError, ...)
        if isinstance(error, FileNotFoundError):
            raise
        raise ArtifactError(
            f"{where} cannot be read (a truncated or foreign file?): "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ArtifactError(f"{where} is not an infcomp CSIS artifact")
    version = saved.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{where} has format version {version}; this infcomp reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    if version == 1:
        warn_user(
            f"{where} has format version 1, which has no checksums and no site signature: "
            f"it is loaded unverified; save it again (CSIS.save) to write version "
            f"{FORMAT_VERSION}",
            ArtifactWarning,
        )
        return saved
    stored = saved.pop("checksums", None)
    computed = checksums(saved)
    if not isinstance(stored, dict) or stored.keys() != computed.keys():
        raise ArtifactError(f"{where} is corrupt: its table of checksums is missing or damaged")
    damaged = [part for part in computed if stored[part] != computed[part]]
    if damaged:
        raise ArtifactError(
            f"{where} is corrupt: its part(s) {damaged} do not match the SHA-256 "
            f"checksum(s) stored when it was saved"
        )
    return saved


def checksums(payload: Mapping[str, Any]) -> dict[str, str]:
    """A SHA-256 hex digest of each top-level part of ``payload`` (see :func:`_digest`)."""
    result = {}
    for part in sorted(payload):
        digest = hashlib.sha256()
        _digest(digest, payload[part])
        result[part] = digest.hexdigest()
    return result


def _digest(digest: Any, value: Any) -> None:
    """Feed ``value`` to ``digest`` in a fixed order: mappings by the ``repr`` of their
    keys, sequences in order, tensors as dtype, shape and bytes, others by ``repr``."""
    if isinstance(value, Mapping):
        digest.update(b"{%d" % len(value))
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _digest(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(b"[%d" % len(value))
        for item in value:
            _digest(digest, item)
    elif isinstance(value, Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"<{tensor.dtype}{tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    else:
        digest.update(f"({type(value).__name__}:{value!r}".encode())


# -- the guide's state ----------------------------------------------------------------------


def check_finite_state(state: Mapping[str, Tensor], parameters: set[str], what: str) -> None:
    """Raise :class:`ArtifactError` if a floating tensor of ``state`` holds NaN, or a
    parameter among them (``parameters``: their names) holds ±inf; ``what`` begins the
    message."""
    bad = [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point()
        and bool(tensor.isnan().any() if name not in parameters else ~tensor.isfinite().all())
    ]
    if bad:
        raise ArtifactError(f"{what}: the guide's {_listed(bad)} hold NaN or infinite values")


def check_state_shapes(
    expected: Mapping[str, torch.Size],
    state: Mapping[str, Any],
    what: str,
    describe: Callable[[str], str] = lambda key: "",
) -> None:
    """Raise :class:`ArtifactError` naming every missing, unexpected or differently shaped
    entry of a stored ``state`` against the ``expected`` shapes; ``describe`` adds the
    site an entry belongs to."""
    problems = []
    for key, shape in expected.items():
        if key not in state:
            problems.append(f"{key}{describe(key)} is missing")
        elif not isinstance(state[key], Tensor):
            problems.append(f"{key}{describe(key)} is not a tensor")
        elif state[key].shape != shape:
            problems.append(
                f"{key}{describe(key)} has shape {tuple(state[key].shape)}, expected {tuple(shape)}"
            )
    problems.extend(f"{key}{describe(key)} is unexpected" for key in state if key not in expected)
    if problems:
        shown = problems[:8] + ([f"and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise ArtifactError(f"{what}: " + "; ".join(shown))


def load_guide_state(guide: nn.Module, state: Mapping[str, Any], what: str) -> None:
    """Check ``state`` against ``guide`` (entries, shapes, finite values), then load it."""
    if not isinstance(state, Mapping):
        raise ArtifactError(f"{what}: the stored state is not a state dict")
    expected = {key: value.shape for key, value in guide.state_dict().items()}
    check_state_shapes(expected, state, what)
    check_finite_state(state, {name for name, _ in guide.named_parameters()}, what)
    guide.load_state_dict(state)


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: Mapping[str, Any], what: str
) -> None:
    """Load a stored optimizer state after checking that every per-parameter tensor in
    it (Adam's moments, say) has its parameter's shape."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    problems = []
    for index, values in dict(state.get("state", {})).items():
        if not isinstance(index, int) or not 0 <= index < len(parameters):
            problems.append(f"state for parameter {index!r}, of {len(parameters)}")
            continue
        shape = parameters[index].shape
        problems.extend(
            f"{name!r} of parameter {index} has shape {tuple(value.shape)}, expected {tuple(shape)}"
            for name, value in values.items()
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != shape
        )
    if problems:
        raise ArtifactError(
            f"{what}: the optimizer's state does not fit: " + "; ".join(problems[:8])
        )
    optimizer.load_state_dict(dict(state))


# -- the automatic network ------------------------------------------------------------------


def build_network(
    data: Mapping[str, Any],
    state: Mapping[str, Any],
    embeddings: Mapping[str, nn.Module] | None,
    what: str,
) -> InferenceNetwork:
    """Rebuild a saved automatic network from its config ``data`` (untrained), after
    checking that it is what ``state`` holds.

    The config's sizes are bounded (:data:`MAX_WIDTH`, :data:`MAX_ELEMENTS`, no more
    modules than stored tensors); the ``observation_embeddings`` must be those it was
    saved with; and the network the config describes is built on the meta device and its
    state's shapes compared with the stored ones, before any memory is allocated.
    """
    embeddings = dict(embeddings or {})
    if not isinstance(state, Mapping):
        raise ArtifactError(f"{what}: the stored state is not a state dict")
    mismatch = architecture_mismatch(data)
    if mismatch is not None:
        raise ArtifactError(f"{what}: {mismatch}")
    try:
        _check_config(data, state)
        _check_embeddings(data, embeddings)
        with torch.device("meta"):
            blueprint = InferenceNetwork.from_config_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, OverflowError) as error:
        if isinstance(error, ArtifactError):
            raise ArtifactError(f"{what}: {error}") from None
        raise ArtifactError(f"{what}: the network's config is malformed ({error!r})") from error
    expected = {key: value.shape for key, value in blueprint.state_dict().items()}
    sites = {slot.key: f"observe site {name!r}" for name, slot in blueprint.observations.items()}
    sites.update({key: f"latent family {f.base!r}" for key, f in blueprint.families.items()})
    for name, module in embeddings.items():
        # The user's module replaces the default embedding (and sets the projection's width).
        slot = blueprint.observations[name].key
        prefix = f"observation_embeddings.{slot}."
        expected = {
            key: shape
            for key, shape in expected.items()
            if not key.startswith(prefix) and key != f"observation_projections.{slot}.weight"
        }
        expected.update({prefix + key: value.shape for key, value in module.state_dict().items()})
        stored = state.get(f"observation_projections.{slot}.weight")
        if isinstance(stored, Tensor):
            expected[f"observation_projections.{slot}.weight"] = stored.shape

    def site_of(key: str) -> str:
        parts = key.split(".")
        return f" ({sites[parts[1]]})" if len(parts) > 1 and parts[1] in sites else ""

    check_state_shapes(
        expected, state, f"{what} do not match the network its config describes", site_of
    )
    # Its initial values are overwritten by the stored ones: building it leaves the
    # random stream as it was (so that training resumed after loading repeats).
    with untouched_random_state():
        return InferenceNetwork.from_config_dict(data, embeddings)


def _check_config(data: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    config = data["config"]
    for field in fields(NetworkConfig):
        if field.name == "prior_sites":
            continue
        if field.type in (bool, "bool", "bool | None"):  # an option: flows, attention
            option = config.get(field.name, field.default)  # absent: its default
            if not isinstance(option, bool) and option is not None:
                raise ArtifactError(f"the network's config asks for {field.name}={option!r}")
            continue
        # max_categories only chooses between heads; the heads' sizes are in their specs.
        bound = math.inf if field.name == "max_categories" else MAX_WIDTH
        value = config[field.name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= bound:
            raise ArtifactError(
                f"the network's config asks for {field.name}={value!r}; a saved network may "
                f"have sizes from 1 to {MAX_WIDTH}"
            )
    count = len(data["observations"]) + len(data["families"])
    if count > len(state):
        raise ArtifactError(
            f"the network's config describes {count} observe sites and latent families, "
            f"but the file holds only {len(state)} tensors"
        )
    shapes = [("observe site " + repr(name), shape) for name, shape in data["observations"].items()]
    for family in data["families"]:
        shapes.append((f"latent family {family['base']!r}", family["lookup"][2]))
        shapes.append((f"latent family {family['base']!r}", family["lookup"][3]))
    for site, shape in shapes:
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise ArtifactError(f"the network's config gives {site} the shape {shape!r}")
        if math.prod(shape) > MAX_ELEMENTS:
            raise ArtifactError(
                f"the network's config gives {site} the shape {tuple(shape)}, more than "
                f"{MAX_ELEMENTS} elements"
            )


def _check_embeddings(data: Mapping[str, Any], embeddings: Mapping[str, nn.Module]) -> None:
    observed = set(data["observations"])
    unknown = sorted(set(embeddings) - observed)
    if unknown:
        raise ArtifactError(
            f"observation_embeddings names {unknown}, not observe sites of the saved network "
            f"(those are {sorted(observed)})"
        )
    saved = data.get("embeddings")
    if saved is None:  # version 1: the shapes' check names the sites
        return
    missing = {name: cls for name, cls in saved.items() if name not in embeddings}
    if missing:
        example = ", ".join(f"{name!r}: {cls}(...)" for name, cls in missing.items())
        raise ArtifactError(
            f"the network was saved with your embedding modules for observe site(s) "
            f"{sorted(missing)}; pass freshly built ones again: "
            f"observation_embeddings={{{example}}}"
        )
    extra = sorted(set(embeddings) - set(saved))
    if extra:
        raise ArtifactError(
            f"observe site(s) {extra} were saved with the default embedding "
            f"(MLPEmbedding); leave them out of observation_embeddings"
        )


# -- the model's site signature -------------------------------------------------------------


@dataclass(frozen=True)
class SiteRecord:
    """One kind of site a probe of the model saw.

    Attributes:
        kind: ``"sample"`` (latent) or ``"observe"``.
        family: the name without its loop index (``"x"`` for ``"x_3"``).
        distribution: the class name of the site's distribution.
        shape: the value's shape in one run.
        name: the first site name seen of this record (for messages).
        runs: in how many of the probe's runs it occurred.
    """

    kind: str
    family: str
    distribution: str
    shape: tuple[int, ...]
    name: str
    runs: int

    @property
    def variant(self) -> tuple[str, str, str, tuple[int, ...]]:
        return (self.kind, self.family, self.distribution, self.shape)


@dataclass(frozen=True)
class Signature:
    """The sites a probe of ``size`` joint simulations of a model saw."""

    size: int
    sites: tuple[SiteRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "sites": [asdict(site) for site in self.sites]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        sites = tuple(
            SiteRecord(**dict(site, shape=tuple(site["shape"]))) for site in data["sites"]
        )
        return cls(int(data["size"]), sites)


def probe_signature(
    simulator: JointSimulator, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Signature:
    """The model's :class:`Signature` from :data:`PROBE_SIZE` joint simulations drawn
    with seed :data:`PROBE_SEED` (torch's global random state is left as it was)."""
    with untouched_random_state():
        torch.default_generator.manual_seed(PROBE_SEED)
        batch = simulator(PROBE_SIZE, args, kwargs)
    return batch_signature(batch.traces, batch.sizes)


def batch_signature(traces: Sequence[Trace], sizes: Sequence[int]) -> Signature:
    """The :class:`Signature` of joint simulations grouped by structure (a
    :class:`~infcomp.inference.particles.JointBatch`'s or a training dataset's)."""
    found: dict[tuple[str, str, str, tuple[int, ...]], SiteRecord] = {}
    for trace, size in zip(traces, sizes):
        seen = set()
        for name, site in trace.sites.items():
            if site.kind == "factor" or site.fn is None or site.value is None:
                continue
            shape = tuple(site.value.shape[trace.batch_ndim :])
            record = SiteRecord(
                site.kind, split_index(name)[0], type(site.fn).__name__, shape, name, 0
            )
            if record.variant in seen:
                continue
            seen.add(record.variant)
            known = found.get(record.variant, record)
            found[record.variant] = SiteRecord(**dict(asdict(known), runs=known.runs + size))
    return Signature(sum(sizes), tuple(found.values()))


def signature_differences(
    saved: Signature, current: Signature, source: str = "artifact"
) -> list[str]:
    """Each way the model (``current``) differs from what the artifact was saved for
    (``saved``), or from the model a dataset was simulated from (``source="dataset"``:
    the sentences then name the dataset).

    Sites are compared by family (the name without its loop index), kind, distribution
    type and value shape. A model whose sites occur in only some runs (branches, loops
    of random length) is not a difference by itself: a family, or one of its
    type-and-shape variants, found by one probe and not by the other is reported only
    if it occurred in at least :data:`FREQUENT` of that probe's runs (for an unchanged
    model the chance of that is at most 0.75^64 ≈ 1e-8). Sites that rare can go unreported.

    Example:
        >>> import infcomp as ic
        >>> from torch.distributions import Normal
        >>> from infcomp.inference.artifacts import probe_signature, signature_differences
        >>> def model(name):
        ...     def program():
        ...         ic.observe("y", Normal(ic.sample(name, Normal(0.0, 1.0)), 1.0))
        ...     return program
        >>> saved = probe_signature(ic.JointSimulator(model("z")), (), {})
        >>> [(site.kind, site.name, site.runs) for site in saved.sites]
        [('sample', 'z', 64), ('observe', 'y', 64)]
        >>> current = probe_signature(ic.JointSimulator(model("mu")), (), {})
        >>> for difference in signature_differences(saved, current):
        ...     print(difference[:64])
        latent site 'z' (Normal, shape ()) is in the artifact but the mo
        the model's latent site 'mu' (Normal, shape ()) is not in the ar
    """

    def frequent(record: SiteRecord, signature: Signature) -> bool:
        return record.runs >= FREQUENT * signature.size

    def by_family(signature: Signature) -> dict[tuple[str, str], list[SiteRecord]]:
        families: dict[tuple[str, str], list[SiteRecord]] = {}
        for record in signature.sites:
            families.setdefault((record.kind, record.family), []).append(record)
        return families

    before, after = by_family(saved), by_family(current)
    differences = []
    for key in dict.fromkeys([*before, *after]):
        old, new = before.get(key, []), after.get(key, [])
        old_variants = {r.variant for r in old}
        new_variants = {r.variant for r in new}
        gone = [r for r in old if r.variant not in new_variants and frequent(r, saved)]
        added = [r for r in new if r.variant not in old_variants and frequent(r, current)]
        if not gone and not added:
            continue
        kind = "latent" if key[0] == "sample" else "observe"
        if not new:
            differences.append(
                f"{kind} site {_site(gone[0])} ({_variants(gone)}) is in the {source} but "
                f"the model no longer makes it"
            )
        elif not old:
            lacks = "has not learned it" if kind == "latent" else "does not condition on it"
            differences.append(
                f"the model's {kind} site {_site(added[0])} ({_variants(added)}) is not in "
                f"the {source}" + (f": the compiled guide {lacks}" if source == "artifact" else "")
            )
        else:
            differences.append(
                f"{kind} site {_site((gone or added)[0])}: the {source} has {_variants(old)}, "
                f"the model now makes {_variants(new)}"
            )
    return differences


def check_signature(
    saved: Mapping[str, Any] | None, current: Signature, strict: bool, what: str
) -> None:
    """Compare the artifact's stored signature with the model's (see
    :func:`signature_differences`): an :class:`ArtifactError` listing every difference,
    or with ``strict=False`` an :class:`~infcomp.errors.ArtifactWarning`."""
    if saved is None:  # version 1, already announced as unverified
        return
    try:
        stored = Signature.from_dict(saved)
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"{what}: its site signature is malformed ({error!r})") from error
    differences = signature_differences(stored, current)
    if not differences:
        return
    listed = "".join(f"\n  - {difference}" for difference in differences)
    if strict:
        raise ArtifactError(
            f"{what} does not fit the model:{listed}\nPass strict=False to load it anyway."
        )
    warn_user(
        f"{what} does not fully fit the model (loaded with strict=False):{listed}", ArtifactWarning
    )


def _site(record: SiteRecord) -> str:
    if record.name == record.family:
        return repr(record.name)
    return f"family {record.family!r} (e.g. {record.name!r})"


def _variants(records: list[SiteRecord]) -> str:
    return " or ".join(sorted({f"{r.distribution}, shape {r.shape}" for r in records}))


def _listed(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names[:8]) + (
        f" and {len(names) - 8} more" if len(names) > 8 else ""
    )
