"""Inference algorithms; each states its weight formula and returns a Posterior."""

from infcomp.inference.csis import CSIS
from infcomp.inference.importance import (
    ParticleRun,
    check_guide,
    importance,
    importance_batch,
    run_particles,
)
from infcomp.inference.simulation import JointBatch, JointSimulator

__all__ = [
    "CSIS",
    "JointBatch",
    "JointSimulator",
    "ParticleRun",
    "check_guide",
    "importance",
    "importance_batch",
    "run_particles",
]
