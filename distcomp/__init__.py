"""distcomp: cheaper PyTorch distributed training on bandwidth-limited clusters.

Algorithms live here (tensor math, reducers, planners); :mod:`distcomp.hooks` adapts them to DDP.
Importing the package registers every compression method (:mod:`distcomp.compression`).
"""

from distcomp.compression.compressor import (
    Compressor,
    GatherCompressor,
    get_compressor,
    method_class,
    method_names,
)
from distcomp.compression.config import CompressionConfig
from distcomp.compression.lgreco import LGreCoConfig
from distcomp.compression.reducer import CompressedReducer
from distcomp.ledger import ByteLedger

__all__ = [
    "ByteLedger",
    "CompressedReducer",
    "CompressionConfig",
    "Compressor",
    "GatherCompressor",
    "LGreCoConfig",
    "get_compressor",
    "method_class",
    "method_names",
]
__version__ = "0.1.0"
