"""Trace batching: stacking single-particle traces into batches, and taking particles out.

A program that cannot be vectorized runs one particle at a time; its traces are
grouped here by structure (site names and value shapes) and stacked, so that what
consumes them (a posterior, a network being trained) can stay batched. The inverse,
:func:`index_trace`, takes particles out of a batched trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from infcomp.distributions import index_distribution, stack_distributions
from infcomp.runtime import Site, Trace


def stack_traces(traces: Sequence[Trace], distributions: bool = True) -> Trace:
    """Stack unbatched traces of one structure into one trace with a particle dimension.

    Values (and tensor return values of equal shape) are stacked along a new leading
    dimension. With ``distributions``, each site keeps its distribution, stacked too,
    when the traces' distributions can be (same type, parameters of equal shapes; see
    :func:`~infcomp.distributions.stack_distributions`); otherwise its ``fn`` is None.
    """
    first = traces[0]
    stacked = Trace(batch_ndim=1)
    for name, site in first.sites.items():
        sites = [trace.sites[name] for trace in traces]
        value = torch.stack([s.value for s in sites])  # type: ignore[misc]
        fn = None
        fns = [s.fn for s in sites]
        if distributions and all(f is not None for f in fns):
            fn = _stack_fns(fns)  # type: ignore[arg-type]
        stacked.add(Site(name, site.kind, fn, value, site.scale))
    stacked.return_value = _stack_returns([trace.return_value for trace in traces])
    return stacked


def _stack_fns(fns: list[Distribution]) -> Distribution | None:
    if len(fns) == 1:
        # One trace: a leading dimension of size one, which every torch distribution can add.
        try:
            expanded: Distribution = fns[0].expand(torch.Size([1]) + fns[0].batch_shape)
            return expanded
        except (NotImplementedError, RuntimeError, ValueError):
            return None
    return stack_distributions(fns)


def _stack_returns(returns: list[Any]) -> Any:
    if all(isinstance(r, (Tensor, int, float, bool)) for r in returns):
        tensors = [torch.as_tensor(r) for r in returns]
        if all(t.shape == tensors[0].shape for t in tensors):
            return torch.stack(tensors)
    return returns


def structure_key(trace: Trace) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """A trace's structure: site names and value shapes, without particle dimensions.

    Traces of one structure can be stacked into a batch.
    """
    return tuple(
        (name, tuple(site.value.shape[trace.batch_ndim :]) if site.value is not None else ())
        for name, site in trace.sites.items()
    )


def stacking_key(trace: Trace) -> tuple[Any, ...]:
    """A trace's structure and the types of its distributions: traces of one key can be
    stacked with their distributions (a site whose distribution type differs between
    runs, one name in two branches, separates them)."""
    return (structure_key(trace), tuple(type(site.fn).__name__ for site in trace.sites.values()))


def group_traces(
    traces: Sequence[Trace], distributions: bool = True
) -> tuple[list[Trace], list[int], Tensor]:
    """Group unbatched traces by structure and stack each group.

    With ``distributions``, a group whose distributions cannot be stacked (see
    :func:`stack_traces`) is split into groups of one, so that every stacked site keeps
    its distribution (what training a network needs); without, sites keep values
    only (what a posterior needs, and faster). Returns the
    stacked groups, their sizes, and the order: the index of the original trace behind
    each particle of the concatenated groups (to reorder, e.g., weights).
    """
    members_by_key: dict[Any, list[int]] = {}
    for index, trace in enumerate(traces):
        key = stacking_key(trace) if distributions else structure_key(trace)
        members_by_key.setdefault(key, []).append(index)
    stacked, sizes, order = [], [], []
    for members in members_by_key.values():
        group = stack_traces([traces[i] for i in members], distributions)
        if distributions and len(members) > 1 and _lost_distributions(group, traces[members[0]]):
            parts = [[i] for i in members]
            groups = [stack_traces([traces[i]]) for i in members]
        else:
            parts, groups = [members], [group]
        for part, part_group in zip(parts, groups):
            stacked.append(part_group)
            sizes.append(len(part))
            order.extend(part)
    return stacked, sizes, torch.tensor(order, dtype=torch.long)


def _lost_distributions(stacked: Trace, example: Trace) -> bool:
    return any(
        site.fn is None and example.sites[name].fn is not None
        for name, site in stacked.sites.items()
    )


def index_trace(trace: Trace, index: Tensor | int, distributions: bool = False) -> Trace:
    """Particles of a trace with one leading particle dimension: a tensor of indices
    keeps the dimension; an int gives that one particle, unbatched. With
    ``distributions`` (and a tensor of indices), each site keeps the distributions of the
    particles taken (see :func:`~infcomp.distributions.index_distribution`; ``fn`` is
    None where they cannot be taken out)."""
    batched = not isinstance(index, int)
    selected = Trace(batch_ndim=1 if batched else 0)
    for name, site in trace.sites.items():
        assert site.value is not None
        fn = None
        if distributions and batched and site.fn is not None:
            fn = index_distribution(site.fn, index)  # type: ignore[arg-type]
        selected.add(Site(name, site.kind, fn, site.value[index], site.scale))
    returned = trace.return_value
    if isinstance(returned, Tensor) and returned.dim() > 0:
        selected.return_value = returned[index]
    elif isinstance(returned, list):
        chosen = [index] if isinstance(index, int) else index.tolist()
        picked = [returned[i] for i in chosen]
        selected.return_value = picked[0] if isinstance(index, int) else picked
    else:
        selected.return_value = returned
    return selected


def group_size(trace: Trace) -> int:
    """The number of particles of a trace with one leading particle dimension."""
    value = next(iter(trace.sites.values())).value
    assert value is not None
    return int(value.shape[0])
