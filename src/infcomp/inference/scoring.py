"""Scoring a proposal on joint simulations: log q(x_i; y_i), for training it.

Shared by compiled inference (the CSIS loss) and reweighted wake-sleep (its sleep
phase). The proposal is a user's guide (a function or ``nn.Module`` called as
``guide(*args, observations=y, **kwargs)``) or an automatic inference network.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from infcomp.errors import GuideError
from infcomp.handlers import particles, replay, trace
from infcomp.inference.common import (
    Program,
    batched_or_sequential,
    check_vectorize,
    program_name,
    untouched_random_state,
)
from infcomp.inference.importance import check_guide
from infcomp.inference.simulation import JointBatch, observations_of
from infcomp.nn.network import InferenceNetwork
from infcomp.runtime import Trace, index_trace, structure_key, sum_rightmost


class ProposalScorer:
    """``Σ_i log q(x_i; y_i)`` of a guide or network over joint simulations (x_i, y_i).

    A guide that broadcasts gets each group of simulations (one structure) in one call
    with batched observations; one written for a single trace is detected (with a
    one-time notice) and called trace by trace. The values x_i are replayed into the
    guide, so only log q is computed: gradients reach the guide's parameters.
    """

    def __init__(
        self,
        guide: Program | InferenceNetwork,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        vectorize: bool | None = None,
    ) -> None:
        self.guide = guide
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.vectorize = check_vectorize(vectorize)
        self._natural: dict[Any, dict[str, torch.Size]] = {}

    def log_prob(self, batch: JointBatch) -> Tensor:
        """``Σ_i log q(x_i; y_i)`` over the batch (a scalar, float64)."""
        total = torch.zeros((), dtype=torch.float64)
        for group, size in zip(batch.traces, batch.sizes):
            if isinstance(self.guide, InferenceNetwork):
                log_q = self.guide.log_prob_trace(group)
            else:
                log_q, vectorized = batched_or_sequential(
                    f"guide {program_name(self.guide)}",
                    self.vectorize,
                    functools.partial(self._batched, group, size),
                    functools.partial(self._per_trace, group, size),
                    stacklevel=5,
                )
                if not vectorized:
                    self.vectorize = False
            total = total + log_q.sum()
        return total

    def adopt_new_parameters(self, optimizer: torch.optim.Optimizer) -> None:
        """Give ``optimizer`` the parameters of network modules made for sites first seen
        in the last batch, leaving its state for the others as it is."""
        if isinstance(self.guide, InferenceNetwork):
            new = self.guide.pop_new_parameters()
            if new:
                optimizer.add_param_group({"params": new})

    def _batched(self, group: Trace, size: int) -> Tensor:
        natural = self._natural_shapes(group)
        with (
            trace(batch_ndim=1) as tracer,
            replay(trace=group),
            particles(batch_shape=(size,), natural_shapes=natural),
        ):
            self.guide(*self.args, observations=observations_of(group), **self.kwargs)
        return _score(group, tracer.trace, 1)

    def _per_trace(self, group: Trace, size: int) -> Tensor:
        log_qs = []
        for index in range(size):
            single = index_trace(group, index)
            with trace() as tracer, replay(trace=single):
                self.guide(*self.args, observations=observations_of(single), **self.kwargs)
            log_qs.append(_score(single, tracer.trace, 0))
        return torch.stack(log_qs)

    def _natural_shapes(self, group: Trace) -> dict[str, torch.Size]:
        """The guide's sites' unbatched shapes for this structure, from one probe call."""
        key = structure_key(group)
        if key not in self._natural:
            single = index_trace(group, 0)
            with torch.no_grad(), untouched_random_state(), trace() as tracer, replay(trace=single):
                self.guide(*self.args, observations=observations_of(single), **self.kwargs)
            _score(single, tracer.trace, 0)
            self._natural[key] = particles.natural_shapes_of(tracer.trace)
        return self._natural[key]


def _score(joint: Trace, guide_trace: Trace, batch_ndim: int) -> Tensor:
    """Check the guide's sites against the model's and return log q per simulation."""
    check_guide(joint, guide_trace)
    if batch_ndim == 0:
        _check_guide_shapes(joint, guide_trace)
    log_q = guide_trace.log_prob_sum()
    if not bool(torch.isfinite(log_q).all()):
        raise GuideError(_nonfinite_message(guide_trace, batch_ndim))
    return log_q


def _check_guide_shapes(joint: Trace, guide_trace: Trace) -> None:
    for name, site in guide_trace.sites.items():
        value, fn = joint[name].value, site.fn
        assert value is not None and fn is not None
        expected = fn.batch_shape + fn.event_shape
        if value.shape != expected:
            raise GuideError(
                f"guide site {name!r}: the model's value has shape {tuple(value.shape)} but the "
                f"guide's {type(fn).__name__} has shape {tuple(expected)}"
            )


def _nonfinite_message(guide_trace: Trace, batch_ndim: int) -> str:
    bad = []
    for name, site in guide_trace.sites.items():
        log_q = sum_rightmost(site.log_prob(), batch_ndim)
        count = int((~torch.isfinite(log_q)).sum())
        if count:
            bad.append(f"{name!r} ({count} of {log_q.numel()})")
    return (
        f"the guide's log density is not finite at sites {', '.join(bad)} for simulated "
        f"values: its distributions must cover the prior's support"
    )
