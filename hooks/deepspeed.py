"""DeepSpeed integration: distcomp's compressed gradient averaging in place of the engine's own.

A DeepSpeed engine reduces gradients itself, so DDP communication hooks never run. DeepSpeed
has no public hook for that reduction either; what it has is one method,
``engine.allreduce_gradients()``, that it calls at every gradient-accumulation boundary (at the
end of ``engine.backward()``, or in ``engine.step()`` with unmanaged accumulation) and skips
inside ``engine.no_sync()``. Two lines after ``deepspeed.initialize``::

    state = DeepSpeedCompression(engine, "powersgd", rank=4)
    register_deepspeed_hook(engine, state)

route that call to :func:`deepspeed_hook`, which averages every parameter's ``.grad`` over the
engine's data-parallel group with :class:`~distcomp.compression.reducer.CompressedReducer` (the same
compression, error feedback, inf/NaN fallback, L-GreCo planning and byte ledger as the DDP hook).
DeepSpeed then clips, unscales and steps exactly as it would have.

Supported: ZeRO stage 0 (plain data parallelism), fp32 or fp16 parameters, any optimizer,
gradient accumulation, ``no_sync()``, gradient clipping. Refused at registration, before any
collective, with the reason:

- ZeRO stages 1-3: their optimizers reduce-scatter gradients into flat fp32 partitions of their
  own (stage 2/3 during backward, bucket by bucket), so a full averaged ``.grad`` per parameter,
  which low-rank and sparse compression produce, has nowhere to go without rewriting the ZeRO
  optimizer. DeepSpeed has no public hook on that reduction (stages 1-2 reduce each bucket in
  ``DeepSpeedZeroOptimizer.average_tensor``, a private method; its only knob is the wire dtype,
  ``communication_data_type``), and distcomp does not patch DeepSpeed's internals. What it would
  take upstream: a per-bucket callable in place of ``average_tensor`` given the bucket's
  (parameter, offset) layout and the partition each rank owns, as FSDP2's
  ``set_all_reduce_hook`` / ``set_custom_reduce_scatter`` give. A sharded model gets
  compression today under FSDP2 with :class:`distcomp.hooks.FSDPCompression`.
- bf16 (``BF16_Optimizer`` reduces its private fp32 accumulation buffers, not ``.grad``),
  pipeline parallelism, mixture-of-experts layers, sequence parallelism, DeepCompile, and a
  "sum" gradient all-reduce op: each reduces other tensors or groups than ``.grad`` over data
  parallel ranks.
"""

from __future__ import annotations

from typing import Any

from distcomp.comm import TorchComm
from distcomp.compression.lgreco import LGreCoConfig
from distcomp.compression.options import parse_options
from distcomp.hooks.param_state import ParameterCompression


class DeepSpeedCompression(ParameterCompression):
    """Compression state of one DeepSpeed engine (the ``state`` of :func:`deepspeed_hook`).

    Args:
      engine: the engine returned by ``deepspeed.initialize`` (checked here: see the module
        docstring for what is supported).
      method, **options: see :class:`distcomp.compression.config.CompressionConfig` (rank,
        density, bits, error_feedback, warmup_steps, seed, timeout_s, ...).
      lgreco: an :class:`~distcomp.compression.lgreco.LGreCoConfig` or dict to plan per-layer
        settings adaptively; None keeps the uniform setting.

    Fields: those of :class:`~distcomp.hooks.param_state.ParameterCompression`; the comm is the
    engine's data-parallel group. DeepSpeed's ``client_state`` is written by rank 0 only at
    stage 0, so save ``state_dict()`` from every rank yourself.
    """

    def __init__(self, engine: Any, method: str = "powersgd", *,
                 lgreco: LGreCoConfig | dict | None = None, **options):
        config, lgreco = parse_options(method, options, lgreco)
        check_engine(engine)
        comm = TorchComm(engine.seq_data_parallel_group, config.timeout_s)
        super().__init__("DeepSpeedCompression", config, lgreco, engine.module, comm)


def check_engine(engine: Any) -> None:
    """Raise ValueError if distcomp cannot replace this engine's gradient reduction."""
    for attr in ("allreduce_gradients", "zero_optimization_stage", "module",
                 "seq_data_parallel_group"):
        if not hasattr(engine, attr):
            raise ValueError(f"expected a DeepSpeed engine from deepspeed.initialize (it has no "
                             f"{attr!r}); got {type(engine).__name__}")
    stage = int(engine.zero_optimization_stage())
    if stage != 0:
        raise ValueError(
            f"distcomp compression supports ZeRO stage 0 only, this engine uses stage {stage}: "
            "ZeRO 1-3 reduce-scatter gradients into partitions inside their optimizer, where a "
            "compressed full-gradient average has no place and DeepSpeed offers no public hook "
            "(its own knob there is communication_data_type: bf16 halves the bytes); for a "
            "sharded model with compression use FSDP2 and distcomp.hooks.FSDPCompression")
    refused = {
        "bfloat16": getattr(engine, "bfloat16_enabled", lambda: False)(),
        "pipeline parallelism": getattr(engine, "pipeline_parallelism", False),
        "mixture-of-experts layers": getattr(engine, "has_moe_layers", False),
        "sequence parallelism": getattr(engine, "sequence_parallel_size", 1) > 1,
        "DeepCompile": getattr(engine, "is_deepcompile_active", lambda: False)(),
        "a 'sum' gradient all-reduce op": not getattr(engine, "gradient_average", True),
    }
    found = [k for k, v in refused.items() if v]
    if found:
        raise ValueError(f"distcomp compression does not support {', '.join(found)} in "
                         "DeepSpeed (these reduce other tensors than each parameter's .grad)")


def deepspeed_hook(state: DeepSpeedCompression, engine: Any) -> None:
    """Average every trainable parameter's ``.grad`` over the data-parallel group, compressed,
    in place."""
    state.reduce(engine.module)


def register_deepspeed_hook(engine: Any, state: DeepSpeedCompression,
                            hook=deepspeed_hook) -> None:
    """Make ``engine`` reduce gradients with ``hook(state, engine)`` instead of its own
    all-reduce. The engine keeps deciding *when* (accumulation boundaries, ``no_sync``)."""
    check_engine(engine)

    def allreduce_gradients(bucket_size: int = 0) -> None:  # DeepSpeed's signature
        if engine.is_gradient_accumulation_boundary():
            hook(state, engine)

    engine.allreduce_gradients = allreduce_gradients
