"""Functions that DDP, FSDP2 (:mod:`distcomp.hooks.fsdp`), DeepSpeed
(:mod:`distcomp.hooks.deepspeed`) and Horovod (:mod:`distcomp.hooks.horovod`) call, thin over
:mod:`distcomp`. The last two are imported on their own: they need their framework."""

from distcomp.hooks.by_name import attach, comm_names, method_options
from distcomp.hooks.ddp import CompressionState, compression_hook
from distcomp.hooks.fsdp import FSDPCompression
from distcomp.hooks.lgreco import LGreCoState, lgreco_hook
from distcomp.hooks.local import local_hook

__all__ = ["CompressionState", "FSDPCompression", "LGreCoState", "attach", "comm_names",
           "compression_hook", "lgreco_hook", "local_hook", "method_options"]
