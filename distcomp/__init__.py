"""distcomp: cheaper PyTorch distributed training on bandwidth-limited clusters.

Algorithms live here (tensor math, reducers, planners); :mod:`distcomp.hooks` adapts them to DDP.
"""

from distcomp.compression.compressor import (
    Compressor,
    GatherCompressor,
    compressor_names,
    get_compressor,
)
from distcomp.compression.config import CompressionConfig
from distcomp.compression.reducer import CompressedReducer
from distcomp.ledger import ByteLedger

__all__ = [
    "ByteLedger",
    "CompressedReducer",
    "CompressionConfig",
    "Compressor",
    "GatherCompressor",
    "compressor_names",
    "get_compressor",
]
__version__ = "0.1.0"
