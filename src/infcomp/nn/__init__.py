"""Neural proposals: observation embeddings, proposal heads and the inference network.

A module here returns a ``torch.distributions.Distribution``; nothing here knows about
importance weights.
"""

from infcomp.nn.embeddings import Conv1dEmbedding, ConvEmbedding, MLPEmbedding
from infcomp.nn.heads import HeadSpec, UnsupportedSiteError, head_spec, make_head
from infcomp.nn.network import InferenceNetwork, NetworkConfig, NetworkProposer

__all__ = [
    "Conv1dEmbedding",
    "ConvEmbedding",
    "HeadSpec",
    "InferenceNetwork",
    "MLPEmbedding",
    "NetworkConfig",
    "NetworkProposer",
    "UnsupportedSiteError",
    "head_spec",
    "make_head",
]
