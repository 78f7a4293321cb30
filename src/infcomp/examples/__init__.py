"""Example models, each with its exact answer (used by tests, the demo and benchmarks)."""
