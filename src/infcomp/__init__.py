"""infcomp: inference compilation and importance sampling for probabilistic programs.

Write a model with named :func:`sample` and :func:`observe` statements, then::

    post = ic.importance(model, data, num_samples=100_000)
    post.mean("z"), post.std("z"), post.ess, post.log_evidence, post.khat
"""

from infcomp.empirical import Empirical
from infcomp.errors import (
    GuideError,
    InferenceWarning,
    ModelError,
    VectorizationError,
    VectorizationNotice,
)
from infcomp.handlers import block, condition, particles, replay, scale, simulate, trace
from infcomp.inference import (
    CSIS,
    RWS,
    JointSimulator,
    importance,
    importance_batch,
    importance_stream,
    iwae_bound,
    run_particles,
)
from infcomp.posterior import BatchPosterior, Posterior, StreamedPosterior
from infcomp.primitives import factor, observe, sample
from infcomp.runtime import Site, Trace

__version__ = "0.1.0"

__all__ = [
    "CSIS",
    "RWS",
    "BatchPosterior",
    "Empirical",
    "GuideError",
    "InferenceWarning",
    "JointSimulator",
    "ModelError",
    "Posterior",
    "Site",
    "StreamedPosterior",
    "Trace",
    "VectorizationError",
    "VectorizationNotice",
    "__version__",
    "block",
    "condition",
    "factor",
    "importance",
    "importance_batch",
    "importance_stream",
    "iwae_bound",
    "observe",
    "particles",
    "replay",
    "run_particles",
    "sample",
    "scale",
    "simulate",
    "trace",
]
