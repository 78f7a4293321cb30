"""Data-parallel compilation on ``torch.distributed`` (launched by ``torchrun``).

Every process (rank) holds the same guide and optimizer. At each step the global batch of
B simulations is cut into chunks of ``chunk_size``; chunk c of step t is simulated from
the seed ``chunk_seed(s, t·K + c)`` (K = B / chunk_size chunks per step, s one number
drawn once and shared), and rank r simulates chunks r, r + P, r + 2P, ... of the P ranks.
Each rank computes the gradient of its own simulations' loss; the gradients are
all-reduced, weighted by the ranks' numbers of simulations, so every rank holds

    ∇L = -1/B Σ_{all i} ∇ log q_φ(x_i; y_i),

the gradient of the global batch, and takes the same optimizer step (as
``DistributedDataParallel`` does, but by one ``all_reduce`` of a flat buffer per step,
so that the automatic network may grow modules between steps). The batches are those of
one process for any P, so a seeded run trains the same network (up to the floating-point
order of the sums) on 1 or 1,024 ranks.

**The automatic network grows modules lazily**, for sites first seen in a batch. Before
each step, the ranks agree on a flag (does any rank's batch have a new site?); when one
has, the group traces with new sites are all-gathered, every rank registers them in rank
order (so modules get the same names in the same order), and the new parameters are
broadcast from rank 0 (so they start from the same values). At the start, every rank's
parameters are compared by name and shape and broadcast from rank 0.

**Learning rate and the global batch**: the loss is a mean over the global batch B, so a
step on P ranks is a step of single-process training with batch B; use the learning rate
that suits batch B. Scaling up from a run tuned at batch b₀ with learning rate η₀, take
η = η₀·√(B/b₀) (the square-root rule for Adam: Hoffer, Hubara & Soudry, NeurIPS 2017;
Malladi et al., NeurIPS 2022), see :func:`scaled_learning_rate`; the linear rule of
Goyal et al. (2017) is for SGD with momentum.

**On a simulation budget** (``train(num_simulations=N)``, the epochs of
:meth:`CSIS.train <infcomp.inference.csis.CSIS.train>`): the N simulations are cut into
K = ⌈N / chunk_size⌉ seeded chunks, chunk c from ``chunk_seed(s', c)`` (s' another
shared draw), and rank r simulates and keeps chunks r, r + P, ...; the ranks exchange
only their chunks' counts of valid simulations. The whole dataset's rows are numbered
chunk by chunk, and each rank holds its rows as a
:class:`~infcomp.inference.dataset.DatasetShare`: from one shared seed, every rank draws
the same validation split and, each epoch, the same order of the whole training set, cut
into global minibatches of ``batch_size``; each rank trains on its rows of each
minibatch (so every rank takes ⌈N_train / batch_size⌉ steps per epoch, in lockstep), the
gradients are all-reduced as above, and the validation loss, the mean over the whole
validation set, is all-reduced too (each rank sums its share's). Every rank therefore
takes the same steps, keeps the same parameter average, sees the same validation losses
and stops at the same epoch with the same weights. The rows' numbers, and so the split
and the minibatches, do not depend on P: a seeded run trains the same network on 1 or
1,024 ranks (up to the order of floating-point sums). For a model of one structure (the
same sites in every run) they are also those of ``CSIS.train(dataset=...)`` in one
process on the same simulations (which orders a dataset by structure first).

Rank 0 saves the artifact (:meth:`DataParallel.save`); the others wait at a barrier.
:func:`launched_group` starts and ends the process group for a command run by
``torchrun``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from infcomp.errors import ModelError
from infcomp.inference.common import check_positive_int, untouched_random_state
from infcomp.inference.csis import CSIS, adopt_new_parameters
from infcomp.inference.dataset import (
    DatasetShare,
    TraceDataset,
    add_counts,
    check_invalid_fraction,
    clean_batch,
)
from infcomp.inference.parallel import chunk_seed, chunk_sizes, run_chunk, warm_up
from infcomp.inference.particles import JointBatch
from infcomp.inference.shards import check_share, dropped_counts, iter_shards
from infcomp.nn.network import InferenceNetwork
from infcomp.runtime import Trace

__all__ = ["DataParallel", "launched_group", "scaled_learning_rate"]


def scaled_learning_rate(
    global_batch_size: int, base_learning_rate: float = 1e-3, base_batch_size: int = 256
) -> float:
    """Adam's learning rate for a global batch: ``η₀ · √(B / b₀)`` (the square-root rule).

    Example:
        >>> scaled_learning_rate(1024, 1e-3, 256)
        0.002
    """
    global_batch_size = check_positive_int("global_batch_size", global_batch_size)
    base_batch_size = check_positive_int("base_batch_size", base_batch_size)
    return base_learning_rate * math.sqrt(global_batch_size / base_batch_size)


@contextlib.contextmanager
def launched_group(device: str | torch.device = "cpu") -> Iterator[torch.device]:
    """For a command run by ``torchrun`` (which sets ``WORLD_SIZE``, ``RANK`` and
    ``LOCAL_RANK``): initialize the default process group (gloo on CPU; NCCL on CUDA,
    process ``LOCAL_RANK`` on GPU ``LOCAL_RANK``) and destroy it on the way out. Without
    torchrun (no ``WORLD_SIZE``), it does nothing. Yields the device to train on.

    On the ranks other than 0 the library's warnings are silenced for the duration
    (every rank would print the same ones; rank 0 prints them once).

    Raises:
        ValueError: a device other than a CPU or CUDA one, or a CUDA device where torch
            has none.

    Example:
        >>> with launched_group("cpu") as device:  # not under torchrun: one process
        ...     device, dist.is_initialized()
        (device(type='cpu'), False)
    """
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {str(device)!r}: expected 'cpu' or 'cuda'") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r}: expected 'cpu' or 'cuda'")
    launched = "WORLD_SIZE" in os.environ
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: torch finds no CUDA device here")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    started = launched and not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        with warnings.catch_warnings():
            if launched and int(os.environ.get("RANK", "0")) > 0:
                warnings.simplefilter("ignore")
            yield device
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()


class DataParallel:
    """Train ``csis`` on all processes of the default ``torch.distributed`` group (gloo
    on CPU, NCCL on GPU), or alone when no group is initialized (world size 1).

    Args:
        csis: built alike in every process (same model, options and seed).
        chunk_size: simulations per seeded chunk; the global batch must be a multiple.
        check_in_sync: after every step, compare every rank's parameters with rank 0's
            (one broadcast of all parameters per step: for tests and debugging).

    Raises:
        ModelError: the ranks' guides have different parameters (names or shapes).

    Example:
        >>> import torch
        >>> import infcomp as ic
        >>> from infcomp.examples.gaussian import gaussian
        >>> from infcomp.inference.distributed import DataParallel
        >>> _ = torch.manual_seed(0)
        >>> trainer = DataParallel(ic.CSIS(gaussian), chunk_size=64)  # world size 1
        >>> losses = trainer.train(num_steps=10, batch_size=128, progress=False)
        >>> len(losses), trainer.world_size
        (10, 1)
        >>> budget = DataParallel(ic.CSIS(gaussian), chunk_size=100)
        >>> losses = budget.train(num_simulations=1000, max_epochs=3, progress=False)
        >>> len(losses), len(budget.csis.validation_history)  # 900 / 32 → 29 steps an epoch
        (87, 3)
    """

    def __init__(self, csis: CSIS, chunk_size: int = 64, check_in_sync: bool = False) -> None:
        if not isinstance(csis.guide, nn.Module):
            raise TypeError("data-parallel training needs an nn.Module guide")
        self.csis = csis
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.check_in_sync = check_in_sync
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        #: Steps after which the ranks' parameters were checked equal (``check_in_sync``).
        self.checked_steps = 0
        # This rank's online simulations, and those dropped by site, not yet added to the
        # CSIS's counts (all ranks' are added together at the end of training).
        self._counts: tuple[int, dict[str, int], dict[str, int]] = (0, {}, {})
        self._guide: nn.Module = csis.guide
        # NCCL reduces tensors on the GPU, gloo on the CPU: the collectives' small tensors
        # live with the parameters.
        self._device = next(csis.guide.parameters()).device
        self._check_same_parameters()
        self._broadcast_state()
        # One draw, shared: the seeds of every step's chunks, and the validation batch's.
        seeds = self._shared(
            torch.tensor(
                [int(torch.randint(2**62, ())), csis._validation_seed], device=self._device
            )
        ).tolist()
        self.base_seed, csis._validation_seed = int(seeds[0]), int(seeds[1])

    # -- collectives -----------------------------------------------------------------------

    def _shared(self, tensor: Tensor) -> Tensor:
        """Rank 0's ``tensor`` on every rank."""
        if self.distributed:
            dist.broadcast(tensor, src=0)
        return tensor

    def _check_same_parameters(self) -> None:
        shapes = [(n, tuple(t.shape)) for n, t in self._guide.state_dict().items()]
        if not self.distributed:
            return
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, shapes)
        for rank, other in enumerate(everyone):
            if other != shapes:
                raise ModelError(
                    f"rank {rank}'s guide differs from rank {self.rank}'s (parameter names or "
                    f"shapes): build CSIS alike in every process, after the same "
                    f"torch.manual_seed, so that the automatic network's probe agrees"
                )

    def _broadcast_state(self) -> None:
        if self.distributed:
            for tensor in self._guide.state_dict().values():
                dist.broadcast(tensor, src=0)

    # -- the hooks of a training step (CSIS._gradient_step) ---------------------------------

    def prepare(self, batch: JointBatch) -> None:
        """Register, in every rank alike, the modules for the sites that any rank's
        ``batch`` has and the network has not."""
        network = self.csis.network
        if network is None or not self.distributed:
            return  # alone, the network registers new sites itself
        new = [trace for trace in batch.traces if _has_new_sites(network, trace)]
        flag = torch.tensor([len(new)], device=self._device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not int(flag):
            return
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, new)
        for traces in everyone:
            for trace in traces:
                network.register(trace)
        adopt_new_parameters(network, self.csis.optimizer)
        self._broadcast_state()

    def reduce(self, parameters: list[nn.Parameter], loss: float, size: int) -> float:
        """Set each parameter's gradient to the global batch's (the ranks' gradients
        weighted by their batch sizes) and return the global batch's loss."""
        if not self.distributed:
            return loss
        flat = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) * size
            for p in parameters
        ]
        dtype = parameters[0].dtype if parameters else torch.float64
        totals = torch.tensor([loss * size, float(size)], dtype=dtype, device=self._device)
        buffer = torch.cat([*flat, totals])
        dist.all_reduce(buffer)
        count = buffer[-1]
        offset = 0
        for p in parameters:
            grad = (buffer[offset : offset + p.numel()] / count).view_as(p)
            p.grad = grad.clone()
            offset += p.numel()
        return float(buffer[-2] / count)

    def stepped(self) -> None:
        """After each step: with ``check_in_sync``, compare the parameters with rank 0's."""
        if self.check_in_sync:
            self._check_in_sync(f"step {self.csis.num_steps}")
            self.checked_steps += 1

    # -- training -----------------------------------------------------------------------

    def train(
        self,
        num_steps: int | None = None,
        batch_size: int | None = None,
        *,
        num_simulations: int | None = None,
        dataset: DatasetShare | None = None,
        validation_fraction: float = 0.1,
        max_epochs: int = 500,
        patience: int = 10,
        average_decay: float = 0.99,
        validate_every: int = 100,
        progress: bool = True,
    ) -> list[float]:
        """:meth:`CSIS.train <infcomp.inference.csis.CSIS.train>` on all ranks; returns
        the global batches' losses (the same on every rank). The progress bar is rank 0's.

        **Online**, ``train(num_steps, batch_size)``: each step on a global batch of
        ``batch_size`` (default the CSIS's ``training_batch_size``) fresh simulations
        shared out among the ranks in chunks (see the module docstring). Every
        ``validate_every`` steps (and after the last) the validation loss is recorded.

        **On a budget**, ``train(num_simulations=N, batch_size)``: the N simulations are
        made once, each rank simulating its chunks, and trained on for epochs of global
        minibatches of ``batch_size`` (default ``default_batch_size(N)``) with
        ``validation_fraction`` held out, early stopping after ``patience`` epochs
        without a lower validation loss (or ``max_epochs``), and the exponential average
        ``θ̄ ← d·θ̄ + (1 - d)·θ`` (``d = average_decay``) validated and kept, all as
        :meth:`CSIS.train` does in one process; the ranks' parameters, average,
        validation losses and stopping epoch are the same (see the module docstring).
        ``csis.num_simulations`` counts all ranks' simulations; the dropped ones are
        counted by site over all ranks. ``train(dataset=share)`` trains so on a share
        made before: :meth:`simulate`'s, or :meth:`read_shards`' (simulations saved
        elsewhere).

        Raises:
            TypeError: not exactly one of ``num_steps``, ``num_simulations`` and
                ``dataset``, or a ``dataset`` that is not a :class:`DatasetShare`.
            ValueError: online, ``batch_size`` is not a multiple of ``chunk_size``; on a
                budget, fewer than ``chunk_size`` simulations for each rank
                (``num_simulations < world_size · chunk_size``).
            ModelError: more than half of the simulations (of all ranks) are invalid.
        """
        modes = (num_steps, num_simulations, dataset)
        if sum(mode is not None for mode in modes) != 1:
            raise TypeError(
                "DataParallel.train needs one of num_steps= (online), num_simulations= (a "
                "budget) or dataset= (a DatasetShare: DataParallel.simulate or read_shards)"
            )
        if dataset is not None and not isinstance(dataset, DatasetShare):
            raise TypeError(
                f"dataset must be a DatasetShare (DataParallel.simulate or read_shards), got "
                f"{type(dataset).__name__}; train on a whole TraceDataset with CSIS.train"
            )
        if num_simulations is not None or dataset is not None:
            share = dataset
            if share is None:
                assert num_simulations is not None
                start = time.perf_counter()
                share = self.simulate(num_simulations)
                self.csis.training_seconds += time.perf_counter() - start  # and CSIS.train
            with untouched_random_state():
                # CSIS.train draws the seed of its split and shuffles from the global
                # stream: make it the same on every rank.
                torch.manual_seed(self._shared_seed())
                self.csis.data_parallel = self
                try:
                    losses = self.csis.train(
                        dataset=share,
                        batch_size=batch_size,
                        validation_fraction=validation_fraction,
                        max_epochs=max_epochs,
                        patience=patience,
                        average_decay=average_decay,
                        progress=progress and not self.rank,
                    )
                finally:
                    self.csis.data_parallel = None
            if self.check_in_sync:
                self._check_in_sync("training (the kept parameters)")
            return losses
        assert num_steps is not None
        num_steps = check_positive_int("num_steps", num_steps)
        batch_size = check_positive_int(
            "batch_size", self.csis.training_batch_size if batch_size is None else batch_size
        )
        validate_every = check_positive_int("validate_every", validate_every)
        if batch_size % self.chunk_size:
            raise ValueError(
                f"batch_size ({batch_size}) must be a multiple of chunk_size ({self.chunk_size})"
            )
        csis = self.csis
        chunks = batch_size // self.chunk_size
        warm_up(csis.simulator)

        def simulated() -> JointBatch:
            mine = range(self.rank, chunks, self.world_size)
            step = csis.num_steps
            return self._simulate([chunk_seed(self.base_seed, step * chunks + c) for c in mine])

        return self._train(num_steps, simulated, validate_every, progress)

    def simulate(self, num_simulations: int) -> DatasetShare:
        """This rank's share of a dataset of ``num_simulations`` joint simulations:
        chunks rank, rank + P, ... of the ⌈N / chunk_size⌉ seeded chunks (the seeds
        from one shared draw), without the invalid simulations; all ranks' counts are
        exchanged, so that every rank knows where its rows lie in the whole dataset.

        Raises:
            ValueError: ``num_simulations < world_size · chunk_size`` (a rank would
                have no chunk).
            ModelError: more than half of all ranks' simulations are invalid, or a
                site's distributions cannot be taken apart into minibatches.
        """
        num_simulations = check_positive_int("num_simulations", num_simulations)
        if num_simulations < self.world_size * self.chunk_size:
            raise ValueError(
                f"num_simulations ({num_simulations}) must be at least world_size × "
                f"chunk_size = {self.world_size} × {self.chunk_size}, one chunk for each "
                f"rank: simulate more, or give DataParallel a smaller chunk_size"
            )
        sizes = chunk_sizes(num_simulations, self.chunk_size)
        base = self._shared_seed()
        warm_up(self.csis.simulator)
        mine = list(range(self.rank, len(sizes), self.world_size))
        pieces = []
        for chunk in mine:
            batch = run_chunk(self.csis.simulator, sizes[chunk], chunk_seed(base, chunk))
            pieces.append(TraceDataset.from_batches([batch]))
            if len(pieces) == 1:
                pieces[0].check_minibatches()  # before spending the rest of the budget
        share = self._share(mine, pieces)
        self.csis._count_simulations(num_simulations, share.invalid, share.failed)
        return share

    def read_shards(self, folder: str | os.PathLike[str]) -> DatasetShare:
        """This rank's share of the dataset saved in ``folder`` (by :meth:`TraceDataset.save
        <infcomp.inference.dataset.TraceDataset.save>`): shards rank, rank + P, ...,
        loaded safely; the whole dataset's rows are numbered shard by shard, so the
        split and minibatches of :meth:`train` do not depend on P. The dropped-simulation
        counts are the manifest's.

        Raises:
            ValueError: fewer shards than ranks.
            ArtifactError: a bad manifest or shard.
        """
        count = check_share(folder, self.rank, self.world_size)
        mine = list(range(self.rank, count, self.world_size))
        pieces = [
            TraceDataset.from_batches([shard])
            for shard in iter_shards(folder, self.rank, self.world_size)
        ]
        share = self._share(mine, pieces)
        share.invalid, share.failed = dropped_counts(folder)
        return share

    def _share(self, chunks: list[int], pieces: list[TraceDataset]) -> DatasetShare:
        """The :class:`DatasetShare` of this rank's ``pieces`` (chunk or shard
        ``chunks[i]`` of the whole dataset is ``pieces[i]``), the rows numbered piece by
        piece; its dropped-simulation counts are all ranks' pieces'."""
        counts = [(c, len(p), p.invalid, p.failed) for c, p in zip(chunks, pieces)]
        everyone: list[Any] = [counts]
        if self.distributed:
            everyone = [None] * self.world_size
            dist.all_gather_object(everyone, counts)
        size_of: dict[int, int] = {}
        invalid: dict[str, int] = {}
        failed: dict[str, int] = {}
        for listing in everyone:
            for chunk, size, chunk_invalid, chunk_failed in listing:
                size_of[chunk] = size
                add_counts(invalid, chunk_invalid)
                add_counts(failed, chunk_failed)
        start, total = {}, 0
        for chunk in sorted(size_of):
            start[chunk], total = total, total + size_of[chunk]
        rows, order = TraceDataset.join(pieces)
        numbers = [torch.arange(start[c], start[c] + len(p)) for c, p in zip(chunks, pieces)]
        share = DatasetShare(rows, torch.cat(numbers)[order], total)
        share.invalid, share.failed = invalid, failed
        return share

    def train_on_shards(
        self,
        folder: str | os.PathLike[str],
        num_steps: int,
        batch_size: int,
        validate_every: int = 100,
        progress: bool = True,
    ) -> list[float]:
        """``num_steps`` steps on simulations read from the shards in ``folder`` (written
        by :meth:`TraceDataset.save <infcomp.inference.dataset.TraceDataset.save>`):
        rank r reads shards r, r + P, ... one at a time, each in a random order (from
        its own stream), and starts again from its first shard when it has read them
        all; each rank's batch is ``batch_size // P`` simulations (the last batch of a
        shard may be smaller: the gradients are weighted by the batches' sizes).

        Raises:
            ValueError: fewer shards than ranks, or a batch of fewer than one simulation
                per rank.
            ModelError: the shards were not simulated from this CSIS's model.
        """
        num_steps = check_positive_int("num_steps", num_steps)
        batch_size = check_positive_int("batch_size", batch_size)
        check_share(folder, self.rank, self.world_size)
        if batch_size < self.world_size:
            raise ValueError(f"batch_size ({batch_size}) is less than the {self.world_size} ranks")
        generator = torch.Generator().manual_seed(chunk_seed(self.base_seed, self.rank))
        batches = self._read(folder, batch_size // self.world_size, generator)
        return self._train(num_steps, lambda: next(batches), validate_every, progress)

    def _read(
        self, folder: str | os.PathLike[str], size: int, generator: torch.Generator
    ) -> Iterator[JointBatch]:
        checked = False
        while True:
            for shard in iter_shards(folder, self.rank, self.world_size):
                dataset = TraceDataset.from_batches([shard])
                if not checked:
                    self.csis._check_dataset(dataset)
                    checked = True
                yield from dataset.batches(size, generator)

    def _train(
        self,
        num_steps: int,
        next_batch: Callable[[], JointBatch],
        validate_every: int,
        progress: bool,
    ) -> list[float]:
        validate_every = check_positive_int("validate_every", validate_every)
        csis = self.csis
        csis.data_parallel = self
        first, start = csis.num_steps, time.perf_counter()
        bar = tqdm(
            range(num_steps), desc="compiling", disable=not progress or self.rank, leave=False
        )
        try:
            for done in bar:
                loss = csis._gradient_step(next_batch(), csis.args, csis.kwargs)
                last = done == num_steps - 1
                if csis.validation_size and (csis.num_steps % validate_every == 0 or last):
                    csis.validation_history.append((csis.num_steps, csis.validation_loss()))
                bar.set_postfix({"loss": f"{loss:.4f}"}, refresh=False)
            self._add_counts()
        finally:
            csis.data_parallel = None
            csis.training_seconds += time.perf_counter() - start
            bar.close()
        return csis.loss_history[first:]

    def _simulate(self, seeds: list[int]) -> JointBatch:
        """This rank's chunks of a step's global batch; their simulations and the
        dropped ones are counted on this rank until :meth:`_add_counts`."""
        count, invalid, failed = self._counts
        traces: list[Trace] = []
        sizes: list[int] = []
        for seed in seeds:
            batch = run_chunk(self.csis.simulator, self.chunk_size, seed)
            count += self.chunk_size
            batch = clean_batch(batch, invalid, failed)
            traces.extend(batch.traces)
            sizes.extend(batch.sizes)
        self._counts = (count, invalid, failed)
        check_invalid_fraction(invalid, failed, count)
        return JointBatch(traces, sizes, vectorized=True)

    def _add_counts(self) -> None:
        """Add every rank's count of online simulations, and of those dropped, to the
        CSIS's (the same on every rank; rank 0 warns of the dropped ones)."""
        mine, self._counts = self._counts, (0, {}, {})
        everyone: list[Any] = [mine]
        if self.distributed:
            everyone = [None] * self.world_size
            dist.all_gather_object(everyone, mine)
        csis = self.csis
        for count, invalid, failed in everyone:
            csis.num_simulations += count
            add_counts(csis.invalid_simulations, invalid)
            add_counts(csis.failed_simulations, failed)
        if self.rank == 0:
            csis._report_dropped()

    def _check_in_sync(self, after: str) -> None:
        """Raise unless this rank's parameters, step count and number of validation
        losses equal rank 0's."""
        if not self.distributed:
            return
        csis = self.csis
        counts = [float(csis.num_steps), float(len(csis.validation_history))]
        mine = torch.cat(
            [
                *(p.detach().reshape(-1).double() for p in self._guide.parameters()),
                torch.tensor(counts, dtype=torch.float64, device=self._device),
            ]
        )
        reference = self._shared(mine.clone())
        if not torch.equal(mine, reference):
            difference = float((mine - reference)[:-2].abs().max())
            raise RuntimeError(
                f"rank {self.rank} differs from rank 0 after {after}: steps and validations "
                f"{counts} against {reference[-2:].tolist()}, parameters by up to "
                f"{difference:g}"
            )

    def _shared_seed(self) -> int:
        """One draw from rank 0's global random stream, on every rank."""
        seed = torch.randint(2**62, (1,), device=self._device)
        return int(self._shared(seed).item())

    def parameters(self) -> list[nn.Parameter]:
        """The guide's parameters."""
        return list(self._guide.parameters())

    def save(self, path: str | os.PathLike[str]) -> None:
        """:meth:`CSIS.save` by rank 0; every rank returns once it is written."""
        if self.rank == 0:
            self.csis.save(path)
        if self.distributed:
            dist.barrier()


def _has_new_sites(network: InferenceNetwork, trace: Trace) -> bool:
    """Whether ``trace`` has an observe site or a latent site family without modules."""
    for name, site in trace.sites.items():
        if site.kind == "observe" and name not in network.observations:
            return True
        known = site.fn is None or network._family(name, site.fn, trace.batch_ndim, create=False)
        if site.kind == "sample" and not known:
            return True
    return False
