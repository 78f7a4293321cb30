"""Joint simulation: draws (x, y) ~ p(x, y) from a model, its observe statements sampling.

This is the training data of inference compilation. A model that broadcasts is run
once for the whole batch; otherwise trace by trace, and the traces are grouped by
structure (site names and shapes) so that what consumes them can stay batched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from infcomp.errors import ModelError
from infcomp.handlers import inflate, particles, simulate, trace
from infcomp.inference.common import (
    Program,
    batched_or_sequential,
    check_positive_int,
    check_vectorize,
    program_name,
    untouched_random_state,
)
from infcomp.runtime import Trace, group_traces


@dataclass
class JointBatch:
    """Joint simulations, grouped by structure.

    Attributes:
        traces: one trace per group, values with a leading dimension of the group's size.
        sizes: the number of simulations in each group.
        vectorized: whether the model ran once for the whole batch.
    """

    traces: list[Trace]
    sizes: list[int]
    vectorized: bool

    @property
    def size(self) -> int:
        """The total number of simulations."""
        return sum(self.sizes)


@dataclass
class JointSimulator:
    """Draws batches of joint traces from ``model``, remembering how it runs.

    The first batch finds out whether the model broadcasts (an unbatched probe run
    gives each site's natural shape); later batches reuse that answer, so a model that
    cannot be vectorized is tried, and announced, only once.

    Args:
        model: the program.
        args, kwargs: its arguments.
        vectorize: ``True``/``False`` forces the batched / trace-by-trace path; ``None``
            chooses.
        prior_inflation: widen the latent sites' priors by this factor (see
            :class:`~infcomp.handlers.inflate`); 1 simulates the model as it is.
    """

    model: Program
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    vectorize: bool | None = None
    prior_inflation: float = 1.0
    natural_shapes: dict[str, torch.Size] | None = None

    def __post_init__(self) -> None:
        self.vectorize = check_vectorize(self.vectorize)
        self.kwargs = dict(self.kwargs)
        if not self.prior_inflation >= 1:
            raise ValueError(f"prior_inflation must be at least 1, got {self.prior_inflation}")

    def __call__(self, batch_size: int) -> JointBatch:
        """``batch_size`` joint simulations (no gradients: the model is never differentiated)."""
        check_positive_int("batch_size", batch_size)
        with torch.no_grad():
            if self.natural_shapes is None and self.vectorize is not False:
                with untouched_random_state():
                    self.natural_shapes = particles.natural_shapes_of(self._single())
            batch, vectorized = batched_or_sequential(
                f"model {program_name(self.model)}",
                self.vectorize,
                lambda: self._batched(batch_size),
                lambda: self._sequential(batch_size),
            )
        if not vectorized:
            # Once a model has fallen back, keep to the path that works (and say so once).
            self.vectorize = False
        return batch

    def _single(self, batch_shape: tuple[int, ...] = ()) -> Trace:
        with (
            trace(batch_ndim=len(batch_shape)) as tracer,
            simulate(),
            inflate(factor=self.prior_inflation),
        ):
            if batch_shape:
                assert self.natural_shapes is not None
                with particles(batch_shape=batch_shape, natural_shapes=self.natural_shapes):
                    tracer.trace.return_value = self.model(*self.args, **self.kwargs)
            else:
                tracer.trace.return_value = self.model(*self.args, **self.kwargs)
        _reject_factors(tracer.trace)
        return tracer.trace

    def _batched(self, batch_size: int) -> JointBatch:
        return JointBatch([self._single((batch_size,))], [batch_size], True)

    def _sequential(self, batch_size: int) -> JointBatch:
        traces, sizes, _ = group_traces([self._single() for _ in range(batch_size)])
        return JointBatch(traces, sizes, False)


def observations_of(joint_trace: Trace) -> dict[str, Tensor]:
    """The observe sites' values of a (joint) trace, by name."""
    values = {}
    for name, site in joint_trace.sites.items():
        if site.kind == "observe":
            assert site.value is not None
            values[name] = site.value
    return values


def _reject_factors(joint_trace: Trace) -> None:
    factors = joint_trace.names("factor")
    if factors:
        raise ModelError(
            f"the model has factor site {factors[0]!r}: running its statements forward does "
            f"not sample p(x, y) when factors reweigh it, so it cannot be simulated jointly"
        )
