"""Simulation budgets: joint traces simulated once and reused for many epochs of training.

For an expensive simulator the budget is the number of simulations, not seconds, so a
compiled proposal must learn from every simulation (the recipe of sbi's neural posterior
estimation; Papamakarios & Murray 2016, Greenberg et al. 2019): simulate N joint traces
once, hold out a validation fraction, train for many epochs over the rest, stop when the
validation loss has not improved for a number of epochs, and keep the best weights.

A :class:`TraceDataset` holds the traces grouped by structure (site names and shapes),
each group one trace whose values and distributions carry a leading dimension, so that a
minibatch of a variable-structure program is a few batched groups, not a loop over traces.
Simulations whose values are not finite (NaN or ±inf: a failed simulator run) are dropped
when the dataset is made and counted by the site where they first went wrong; so are
simulations that raised, when the simulator skips them (``on_error="skip"``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from infcomp.distributions import concatenate_distributions
from infcomp.errors import ModelError
from infcomp.inference.particles import JointBatch
from infcomp.runtime import Site, Trace
from infcomp.traces import group_size, index_trace, stacking_key

#: Training stops with an error when more than this fraction of simulations is invalid.
MAX_INVALID_FRACTION = 0.5
#: ... judged on at least this many simulations (or on a batch where none is usable).
MIN_SIMULATIONS_CHECKED = 200


@dataclass
class TraceDataset:
    """Joint simulations (x_i, y_i) ~ p(x, y) kept in memory, grouped by structure (and
    by distribution type, where one site's type differs between runs).

    Attributes:
        traces: one trace per group, values (and distributions) with a leading
            dimension of the group's size.
        sizes: the number of simulations in each group.
        invalid: simulations dropped because a value was NaN or ±inf (counted by the
            first site, in program order, where that happened) or a distribution got
            invalid parameters (counted by that site).
        failed: simulations that raised in the program and were skipped (``on_error=
            "skip"``), counted by the last site each reached.

    Example:
        >>> import torch
        >>> import infcomp as ic
        >>> from infcomp.examples.gaussian import gaussian
        >>> _ = torch.manual_seed(0)
        >>> dataset = ic.CSIS(gaussian).simulate(1000)
        >>> len(dataset), dataset.traces[0]["z"].value.shape
        (1000, torch.Size([1000]))
        >>> training, validation = dataset.split(0.1, torch.Generator().manual_seed(0))
        >>> len(training), len(validation)
        (900, 100)
    """

    traces: list[Trace]
    sizes: list[int]
    invalid: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(self.sizes)

    @classmethod
    def from_batches(cls, batches: list[JointBatch]) -> TraceDataset:
        """Join batches of joint simulations: groups of one structure are concatenated
        (where their distributions can be; otherwise kept apart), simulations with
        values that are not finite are dropped and counted, and the batches' failures
        (simulations skipped because they raised) are counted."""
        kept: list[Trace] = []
        invalid: dict[str, int] = {}
        failed: dict[str, int] = {}
        for batch in batches:
            add_counts(failed, batch.failures)
            add_counts(invalid, batch.invalid)
            for trace in batch.traces:
                clean = _drop_invalid(trace, invalid)
                if clean is not None:
                    kept.append(clean)
        traces, _ = _join_by_structure(kept)
        return cls(traces, [group_size(trace) for trace in traces], invalid, failed)

    @classmethod
    def join(cls, datasets: list[TraceDataset]) -> tuple[TraceDataset, Tensor]:
        """The datasets as one (groups of one structure joined, their counts of dropped
        simulations added), and for each of its rows, that row's index in the datasets'
        rows laid end to end (a permutation of ``range(Σ len)``; the identity for a model
        of one structure)."""
        traces: list[Trace] = []
        rows: list[Tensor] = []
        invalid: dict[str, int] = {}
        failed: dict[str, int] = {}
        start = 0
        for dataset in datasets:
            add_counts(invalid, dataset.invalid)
            add_counts(failed, dataset.failed)
            for trace, size in zip(dataset.traces, dataset.sizes):
                traces.append(trace)
                rows.append(torch.arange(start, start + size))
                start += size
        joined, order = _join_by_structure(traces)
        positions = (
            torch.cat([rows[i] for i in order]) if order else torch.zeros(0, dtype=torch.long)
        )
        return cls(joined, [group_size(t) for t in joined], invalid, failed), positions

    @classmethod
    def concatenate(cls, datasets: Sequence[TraceDataset]) -> TraceDataset:
        """The datasets as one, for training on simulations made in pieces (several
        jobs, several shard folders): each structure's simulations in one group, the
        counts of dropped simulations added (:meth:`join` without the row positions).

        Raises:
            TypeError: not a sequence of datasets.

        Example:
            >>> import infcomp as ic
            >>> from infcomp.examples.gaussian import gaussian
            >>> csis = ic.CSIS(gaussian)
            >>> parts = [csis.simulate(100), csis.simulate(50)]
            >>> whole = ic.TraceDataset.concatenate(parts)
            >>> len(whole), whole.sizes
            (150, [150])
        """
        if isinstance(datasets, TraceDataset) or not all(
            isinstance(d, TraceDataset) for d in datasets
        ):
            raise TypeError("concatenate takes a list of TraceDatasets")
        return cls.join(list(datasets))[0]

    def save(self, folder: str | os.PathLike[str], shard_size: int = 10_000) -> int:
        """Write the dataset to ``folder`` as shards of at most ``shard_size`` simulations
        (see :mod:`infcomp.inference.shards`); returns the number of shards.

        Raises:
            ValueError: ``shard_size`` is not a positive integer, or the dataset is empty.
            ArtifactError: a site's distribution cannot be written as tensors.
        """
        from infcomp.inference.shards import save_shards

        return save_shards(self, folder, shard_size)

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], rank: int = 0, world_size: int = 1
    ) -> TraceDataset:
        """The dataset saved in ``folder`` by :meth:`save` (with ``rank`` of ``world_size``:
        that rank's share of the shards), loaded safely (``torch.load(weights_only=True)``,
        see :mod:`infcomp.inference.shards`).

        Raises:
            ValueError: ``world_size`` is not a positive integer, or ``rank`` not an
                integer in ``[0, world_size)``.
            ArtifactError: a bad manifest (a field missing or of the wrong type, a file
                outside the folder), fewer shards than ranks, or a shard that is missing,
                unreadable, not a trace shard, or of another size than the manifest says;
                the error names the file and the field.
        """
        from infcomp.inference.shards import load_shards

        return load_shards(folder, rank, world_size)

    def check_minibatches(self) -> None:
        """Raise :class:`ModelError` naming a site whose distributions cannot be taken
        apart into minibatches (e.g. a plain ``TransformedDistribution``)."""
        for trace in self.traces:
            _take(trace, torch.zeros(1, dtype=torch.long))

    def split(
        self, fraction: float, generator: torch.Generator
    ) -> tuple[TraceDataset, TraceDataset]:
        """A random split into (training, validation), the latter with
        ``round(fraction · len(self))`` simulations (at least one when ``fraction > 0``)."""
        return self.partition(held_out_rows(len(self), fraction, generator))

    def partition(self, chosen: Tensor) -> tuple[TraceDataset, TraceDataset]:
        """(the rows not ``chosen``, the rows ``chosen``), a boolean mask over the rows,
        each part in this dataset's row order."""
        parts = torch.split(chosen, self.sizes)
        training: list[Trace] = []
        validation: list[Trace] = []
        for trace, mask in zip(self.traces, parts):
            for selected, out in ((~mask, training), (mask, validation)):
                if selected.any():
                    out.append(_take(trace, selected.nonzero().squeeze(-1)))
        return (
            TraceDataset(
                training, [group_size(t) for t in training], dict(self.invalid), dict(self.failed)
            ),
            TraceDataset(validation, [group_size(t) for t in validation]),
        )

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[JointBatch]:
        """Minibatches of ``batch_size`` simulations (the last may be smaller) that cover
        the dataset once: in a random order drawn from ``generator``, or in order when it
        is None. A minibatch holds the simulations of each structure as one group."""
        for rows in minibatch_rows(len(self), batch_size, generator):
            yield self.minibatch(rows)

    def minibatch(self, rows: Tensor) -> JointBatch:
        """The simulations at ``rows`` (indices into the dataset's rows, numbered group
        by group), those of each structure as one group (none: an empty batch)."""
        ends = torch.tensor(self.sizes, dtype=torch.long).cumsum(0)
        starts = ends - torch.tensor(self.sizes, dtype=torch.long)
        groups = torch.bucketize(rows, ends, right=True)  # ends[g - 1] <= row < ends[g]
        traces, sizes = [], []
        for group in groups.unique().tolist():
            local = rows[groups == group] - starts[group]
            traces.append(_take(self.traces[group], local))
            sizes.append(len(local))
        return JointBatch(traces, sizes, vectorized=True)


def held_out_rows(total: int, fraction: float, generator: torch.Generator) -> Tensor:
    """A random boolean mask of ``round(fraction · total)`` of ``total`` rows (at least
    one when ``fraction > 0``, at most ``total - 1``): the validation rows of a split.

    Raises:
        ValueError: ``fraction`` is not in [0, 1).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"the validation fraction must lie in [0, 1), got {fraction}")
    held_out = min(max(round(fraction * total), 1 if fraction > 0 else 0), total - 1)
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[torch.randperm(total, generator=generator)[:held_out]] = True
    return chosen


def minibatch_rows(
    total: int, batch_size: int, generator: torch.Generator | None
) -> Iterator[Tensor]:
    """The rows ``0 .. total - 1`` in slices of ``batch_size`` (the last may be smaller):
    in a random order drawn from ``generator``, or in order when it is None."""
    order = (
        torch.randperm(total, generator=generator) if generator is not None else torch.arange(total)
    )
    for begin in range(0, total, batch_size):
        yield order[begin : begin + batch_size]


class DatasetShare(TraceDataset):
    """One process's share of a dataset spread over the ranks of a ``torch.distributed``
    group: it holds its own rows (``traces``, ``sizes``), and ``positions[j]``, the
    index of its row j in the whole dataset of ``total`` rows (``len`` is the whole
    dataset's). Given the same generator on every rank, :meth:`split` and
    :meth:`batches` make the whole dataset's split and minibatches, and each rank keeps
    its rows of them, so that the ranks' minibatches together are one process's
    minibatch of the whole dataset (a rank's part may be empty).

    Raises:
        ValueError: not one position per row.

    Example (two ranks' shares, made here in one process: the even and the odd rows):
        >>> import torch
        >>> import infcomp as ic
        >>> from infcomp.examples.gaussian import gaussian
        >>> _ = torch.manual_seed(0)
        >>> whole = ic.CSIS(gaussian).simulate(10)
        >>> evens, odds = whole.partition(torch.arange(10) % 2 == 1)
        >>> shares = [
        ...     DatasetShare(evens, torch.arange(0, 10, 2), total=10),
        ...     DatasetShare(odds, torch.arange(1, 10, 2), total=10),
        ... ]
        >>> [[b.size for b in s.batches(4, torch.Generator().manual_seed(1))] for s in shares]
        [[2, 2, 1], [2, 2, 1]]
    """

    def __init__(self, rows: TraceDataset, positions: Tensor, total: int) -> None:
        super().__init__(rows.traces, rows.sizes, rows.invalid, rows.failed)
        if len(positions) != sum(rows.sizes):
            raise ValueError(f"{len(positions)} positions for {sum(rows.sizes)} rows")
        self.positions = positions
        self.total = total

    def __len__(self) -> int:
        return self.total

    def split(
        self, fraction: float, generator: torch.Generator
    ) -> tuple[DatasetShare, DatasetShare]:
        """This rank's share of the whole dataset's split (see :meth:`TraceDataset.split`),
        each part numbered in its whole part's row order."""
        chosen = held_out_rows(self.total, fraction, generator)
        mine = chosen[self.positions]
        training, validation = self.partition(mine)
        # A row's index in a part of the whole: how many rows of that part come before it.
        before_training = torch.cumsum(~chosen, 0) - 1
        before_validation = torch.cumsum(chosen, 0) - 1
        return (
            DatasetShare(training, before_training[self.positions[~mine]], int((~chosen).sum())),
            DatasetShare(validation, before_validation[self.positions[mine]], int(chosen.sum())),
        )

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[JointBatch]:
        """This rank's rows of each minibatch of the whole dataset (see
        :meth:`TraceDataset.batches`): as many batches on every rank, some maybe empty."""
        local = torch.full((self.total,), -1, dtype=torch.long)
        local[self.positions] = torch.arange(len(self.positions))
        for rows in minibatch_rows(self.total, batch_size, generator):
            held = local[rows]
            yield self.minibatch(held[held >= 0])


def default_batch_size(num_simulations: int) -> int:
    """The minibatch size for training on ``num_simulations``: about one fiftieth of the
    budget, between 32 and 256, so that small budgets still get many steps per epoch
    (sbi's NPE takes 200 at every budget). At 10⁴ simulations, 200 rather than 100
    trains 1.3 to 1.6 times faster at about the same quality (ESS/N at the stated
    observation, median over 3 seeds, with 100 and with 200: the Gaussian 0.948 and
    0.949, Gaussian linear 0.870 and 0.851, branching 0.983 and 0.975, Marsaglia 0.461
    and 0.392; ``bench/quality.py``'s tasks)."""
    return min(max(num_simulations // 50, 32), 256)


def clean_batch(batch: JointBatch, invalid: dict[str, int], failed: dict[str, int]) -> JointBatch:
    """``batch`` without the simulations whose values are NaN or ±inf, each counted in
    ``invalid`` by the first site where it went wrong; the batch's own counts (of
    simulations dropped for invalid parameters, ``batch.invalid``, and of those that
    raised, ``batch.failures``) are added to ``invalid`` and ``failed``.

    Raises:
        ModelError: when no simulation of the batch is left.
    """
    seen = dict(batch.invalid)
    kept = [trace for trace in (_drop_invalid(t, seen) for t in batch.traces) if trace is not None]
    for counts, new in ((invalid, seen), (failed, batch.failures)):
        for name, count in new.items():
            counts[name] = counts.get(name, 0) + count
    if not kept:
        check_invalid_fraction(
            seen, batch.failures, sum(seen.values()) + sum(batch.failures.values())
        )
    return JointBatch(kept, [group_size(trace) for trace in kept], batch.vectorized)


def check_invalid_fraction(invalid: dict[str, int], failed: dict[str, int], total: int) -> None:
    """Raise :class:`ModelError` when more than half of ``total`` simulations are invalid
    (NaN or infinite values, invalid parameters) or failed (raised in the program), once
    there are at least :data:`MIN_SIMULATIONS_CHECKED` of them (or all are): a smaller
    count says too little about the simulator's rate of failure."""
    dropped = sum(invalid.values()) + sum(failed.values())
    if not total or dropped / total <= MAX_INVALID_FRACTION:
        return
    if total < MIN_SIMULATIONS_CHECKED and dropped < total:
        return
    parts = [
        f"{sum(counts.values())} {what} (by site: "
        + ", ".join(f"{name!r}: {count}" for name, count in counts.items())
        + ")"
        for what, counts in (
            ("have NaN or infinite values or invalid parameters", invalid),
            ("raised in the program", failed),
        )
        if counts
    ]
    raise ModelError(
        f"{dropped} of {total} simulations ({dropped / total:.0%}) are unusable: "
        f"{'; '.join(parts)}. The simulator fails for most of its prior, so training "
        f"would learn a different model; fix the simulator or its prior."
    )


def add_counts(counts: dict[str, int], new: dict[str, int]) -> None:
    """Add the counts by site of ``new`` to ``counts``."""
    for name, count in new.items():
        counts[name] = counts.get(name, 0) + count


def _join_by_structure(traces: list[Trace]) -> tuple[list[Trace], list[int]]:
    """Group traces by :func:`stacking_key`, each group joined along its leading dimension
    (or kept apart where some distributions cannot be joined); returns the traces and
    the indices of the traces given, in the order their rows now come."""
    by_structure: dict[object, list[int]] = {}
    for index, trace in enumerate(traces):
        by_structure.setdefault(stacking_key(trace), []).append(index)
    joined_traces: list[Trace] = []
    order: list[int] = []
    for members in by_structure.values():
        group = [traces[i] for i in members]
        joined = _concatenate(group) if len(group) > 1 else group[0]
        joined_traces.extend([joined] if joined is not None else group)
        order.extend(members)
    return joined_traces, order


def _drop_invalid(trace: Trace, counts: dict[str, int]) -> Trace | None:
    """The rows of a group trace whose values are all finite; None when no row is."""
    size = group_size(trace)
    bad = torch.zeros(size, dtype=torch.bool)
    for name, site in trace.sites.items():
        value = site.value
        if not isinstance(value, Tensor) or not value.is_floating_point():
            continue
        here = ~torch.isfinite(value.reshape(size, -1)).all(-1).cpu()
        new = here & ~bad
        if new.any():
            counts[name] = counts.get(name, 0) + int(new.sum())
            bad |= new
    if not bad.any():
        return trace
    if bad.all():
        return None
    return _take(trace, (~bad).nonzero().squeeze(-1))


def _take(trace: Trace, rows: Tensor) -> Trace:
    """Rows of a group trace, keeping each site's distribution (an error names a site
    whose distribution cannot be taken apart)."""
    value = next(iter(trace.sites.values())).value
    assert value is not None
    selected = index_trace(trace, rows.to(value.device), distributions=True)
    for name, site in selected.sites.items():
        if site.fn is None and trace.sites[name].fn is not None:
            raise ModelError(
                f"site {name!r}: cannot take simulations out of its "
                f"{type(trace.sites[name].fn).__name__} to make minibatches; train online "
                f"(train(num_steps=...)) for this model"
            )
    return selected


def _concatenate(traces: list[Trace]) -> Trace | None:
    """Group traces of one structure joined along their leading dimension, or None when
    some site's distributions cannot be joined."""
    joined = Trace(batch_ndim=1)
    for name, site in traces[0].sites.items():
        sites = [trace.sites[name] for trace in traces]
        fn = None
        if site.fn is not None:
            fn = concatenate_distributions([s.fn for s in sites])  # type: ignore[misc]
            if fn is None:
                return None
        value = torch.cat([s.value for s in sites])  # type: ignore[misc]
        joined.add(Site(name, site.kind, fn, value, site.scale))
    return joined
