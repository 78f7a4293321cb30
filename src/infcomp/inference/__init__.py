"""Inference algorithms; each states its weight formula and returns a posterior.

They run particles through one engine (:mod:`infcomp.inference.particles`) under one
proposal protocol (:mod:`infcomp.inference.proposals`).
"""

from infcomp.inference.csis import CSIS
from infcomp.inference.dataset import TraceDataset
from infcomp.inference.importance import importance, importance_batch, run_particles
from infcomp.inference.objectives import iwae_bound, model_log_weights, wake_phi_loss
from infcomp.inference.particles import (
    Job,
    JointBatch,
    ParticleEngine,
    ParticleRun,
    Proposal,
    Request,
    SingleRun,
)
from infcomp.inference.proposals import (
    NetworkProposal,
    PriorProposal,
    ProgramProposal,
    as_proposal,
    check_guide,
    engine_for,
)
from infcomp.inference.rws import RWS
from infcomp.inference.simulation import JointSimulator
from infcomp.inference.smc import SMCBatchPosterior, SMCPosterior, smc, smc_batch
from infcomp.inference.streaming import importance_stream

__all__ = [
    "CSIS",
    "RWS",
    "Job",
    "JointBatch",
    "JointSimulator",
    "NetworkProposal",
    "ParticleEngine",
    "ParticleRun",
    "PriorProposal",
    "ProgramProposal",
    "Proposal",
    "Request",
    "SMCBatchPosterior",
    "SMCPosterior",
    "SingleRun",
    "TraceDataset",
    "as_proposal",
    "check_guide",
    "engine_for",
    "importance",
    "importance_batch",
    "importance_stream",
    "iwae_bound",
    "model_log_weights",
    "run_particles",
    "smc",
    "smc_batch",
    "wake_phi_loss",
]
