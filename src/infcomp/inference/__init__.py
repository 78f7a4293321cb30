"""Inference algorithms; each states its weight formula and returns a Posterior."""

from infcomp.inference.importance import ParticleRun, check_guide, importance, run_particles

__all__ = ["ParticleRun", "check_guide", "importance", "run_particles"]
