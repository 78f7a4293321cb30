"""infcomp: inference compilation and importance sampling for probabilistic programs.

Write a model with named :func:`sample` and :func:`observe` statements, then::

    post = ic.importance(model, data, num_particles=100_000)
    post.mean("z"), post.std("z"), post.ess, post.log_evidence, post.khat

``infcomp.nn`` holds the parts of neural proposals (embeddings, the inference network).
"""

from infcomp import nn
from infcomp.empirical import Empirical
from infcomp.errors import (
    ArtifactError,
    ArtifactWarning,
    GuideError,
    InferenceWarning,
    ModelError,
    SimulationWarning,
    VectorizationError,
    VectorizationNotice,
)
from infcomp.handlers import (
    block,
    condition,
    particles,
    propose,
    replay,
    scale,
    simulate,
    trace,
    uncondition,
)
from infcomp.inference import (
    CSIS,
    RWS,
    JointSimulator,
    SMCBatchPosterior,
    SMCPosterior,
    TraceDataset,
    importance,
    importance_batch,
    importance_stream,
    iwae_bound,
    run_particles,
    smc,
    smc_batch,
)
from infcomp.posterior import BatchPosterior, EmpiricalMarginal, Posterior, StreamedPosterior
from infcomp.primitives import factor, observe, sample
from infcomp.runtime import Messenger, Site, Trace

__version__ = "0.1.0"

__all__ = [
    "CSIS",
    "RWS",
    "ArtifactError",
    "ArtifactWarning",
    "BatchPosterior",
    "Empirical",
    "EmpiricalMarginal",
    "GuideError",
    "InferenceWarning",
    "JointSimulator",
    "Messenger",
    "ModelError",
    "Posterior",
    "SMCBatchPosterior",
    "SMCPosterior",
    "SimulationWarning",
    "Site",
    "StreamedPosterior",
    "Trace",
    "TraceDataset",
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
    "nn",
    "observe",
    "particles",
    "propose",
    "replay",
    "run_particles",
    "sample",
    "scale",
    "simulate",
    "smc",
    "smc_batch",
    "trace",
    "uncondition",
]
