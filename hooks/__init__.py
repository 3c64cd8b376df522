"""Functions that DDP (and later DeepSpeed / Horovod) call, thin over :mod:`distcomp`."""

from hooks.ddp import CompressionState, compression_hook
from hooks.lgreco import LGreCoState, lgreco_hook
from hooks.local import local_hook

__all__ = ["CompressionState", "LGreCoState", "compression_hook", "lgreco_hook", "local_hook"]
