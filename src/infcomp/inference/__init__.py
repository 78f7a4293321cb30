"""Inference algorithms; each states its weight formula and returns a Posterior."""

from infcomp.inference.csis import CSIS
from infcomp.inference.importance import (
    ParticleRun,
    check_guide,
    importance,
    importance_batch,
    run_particles,
)
from infcomp.inference.objectives import iwae_bound, model_log_weights, wake_phi_loss
from infcomp.inference.rws import RWS
from infcomp.inference.simulation import JointBatch, JointSimulator
from infcomp.inference.streaming import importance_stream

__all__ = [
    "CSIS",
    "RWS",
    "JointBatch",
    "JointSimulator",
    "ParticleRun",
    "check_guide",
    "importance",
    "importance_batch",
    "importance_stream",
    "iwae_bound",
    "model_log_weights",
    "run_particles",
    "wake_phi_loss",
]
