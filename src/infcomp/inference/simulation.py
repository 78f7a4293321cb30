"""Joint simulation: draws (x, y) ~ p(x, y) from a model, its observe statements sampling.

This is the training data of inference compilation. The simulations run through the
particle engine (:meth:`~infcomp.inference.particles.ParticleEngine.simulate`): a model
that broadcasts runs once for the whole batch; otherwise trace by trace, and the traces
are grouped by structure (site names and shapes) so that what consumes them can stay
batched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infcomp.inference.common import Program, check_finite
from infcomp.inference.particles import Job, JointBatch, OnError, ParticleEngine, observations_of
from infcomp.inference.proposals import PriorProposal

__all__ = ["JointBatch", "JointSimulator", "observations_of"]


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
            :class:`~infcomp.inference.particles.inflate`); 1 simulates the model as it is.
        on_error: what a simulation that raises in the model does: ``"raise"`` (a
            :class:`~infcomp.errors.ModelError` naming the last site it reached, chained
            to the model's exception) or ``"skip"`` (dropped, and counted by site in
            :attr:`JointBatch.failures`; a batch then holds fewer simulations than
            asked, see :meth:`~infcomp.inference.particles.ParticleEngine.simulate`).
            Either way a model that raises is never taken for one that does not
            vectorize.

    Example:
        >>> import infcomp as ic
        >>> from infcomp.examples.gaussian import gaussian
        >>> batch = ic.JointSimulator(gaussian)(100)
        >>> batch.size, batch.traces[0]["x1"].value.shape
        (100, torch.Size([100]))
    """

    def __init__(
        self,
        model: Program,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        vectorize: bool | None = None,
        prior_inflation: float = 1.0,
        on_error: OnError = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.model = model
        self.prior_inflation = check_finite("prior_inflation", prior_inflation, minimum=1)
        self.on_error: OnError = on_error
        job = Job(model, PriorProposal(), tuple(args), dict(kwargs or {}))
        self.engine = ParticleEngine(job, vectorize)

    @property
    def vectorize(self) -> bool | None:
        """True/False once decided (or forced), None while undecided."""
        return self.engine.vectorize

    def __call__(
        self,
        batch_size: int,
        args: tuple[Any, ...] | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> JointBatch:
        """``batch_size`` joint simulations (no gradients: the model is never
        differentiated), with other model arguments when given."""
        if args is not None or kwargs is not None:
            job = self.engine.job
            self.engine = self.engine.with_arguments(
                job.args if args is None else tuple(args), job.kwargs if kwargs is None else kwargs
            )
        return self.engine.simulate(batch_size, self.prior_inflation, self.on_error)
