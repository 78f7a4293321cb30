"""Neural proposals: observation embeddings, proposal heads and the inference network.

A module here returns a ``torch.distributions.Distribution``; nothing here knows about
importance weights.

The public names: the observation embeddings; :class:`NetworkConfig` and
:class:`InferenceNetwork` (which :class:`~infcomp.inference.CSIS` builds);
:class:`UnsupportedSiteError`; and, for covering a new prior support, the head registry
:data:`HEADS` with its base class :class:`ProposalHead`, the :class:`HeadSpec` a head is
built from and :func:`head_spec`, which tells which head a prior gets.
"""

from __future__ import annotations

import importlib
from typing import Any

from infcomp._deprecation import warn_renamed
from infcomp.nn.embeddings import Conv1dEmbedding, ConvEmbedding, MLPEmbedding
from infcomp.nn.heads import HEADS, HeadSpec, ProposalHead, UnsupportedSiteError, head_spec
from infcomp.nn.network import InferenceNetwork, NetworkConfig

__all__ = [
    "HEADS",
    "Conv1dEmbedding",
    "ConvEmbedding",
    "HeadSpec",
    "InferenceNetwork",
    "MLPEmbedding",
    "NetworkConfig",
    "ProposalHead",
    "UnsupportedSiteError",
    "head_spec",
]

# Names this package exported before its API was chosen; they live on in their modules.
_MOVED = {"NetworkProposer": "infcomp.nn.network", "make_head": "infcomp.nn.heads"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warn_renamed(f"infcomp.nn.{name}", f"{_MOVED[name]}.{name}")
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
