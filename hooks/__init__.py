"""Functions that DDP, DeepSpeed (:mod:`hooks.deepspeed`) and Horovod (:mod:`hooks.horovod`)
call, thin over :mod:`distcomp`. The last two are imported on their own: they need their
framework."""

from hooks.ddp import CompressionState, compression_hook
from hooks.lgreco import LGreCoState, lgreco_hook
from hooks.local import local_hook

__all__ = ["CompressionState", "LGreCoState", "compression_hook", "lgreco_hook", "local_hook"]
