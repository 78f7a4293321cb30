"""A model for the torchrun tests, importable by their worker processes."""

from __future__ import annotations

import torch
from torch.distributions import Normal

import infcomp as ic


def rare_branch() -> torch.Tensor:
    """z ~ N(0, 1); a site 'extra' ~ N(z, 1) only when z > 2.8 (probability 0.0026), so
    a probe rarely meets it and the network grows during training; x ~ N(z, 1) observed."""
    z = ic.sample("z", Normal(0.0, 1.0))
    if z > 2.8:
        ic.sample("extra", Normal(z, 1.0))
    ic.observe("x", Normal(z, 1.0))
    return z
