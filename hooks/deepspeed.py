"""DeepSpeed integration: distcomp's compressed gradient averaging in place of the engine's own.

A DeepSpeed engine reduces gradients itself, so DDP communication hooks never run. DeepSpeed
has no public hook for that reduction either; what it has is one method,
``engine.allreduce_gradients()``, that it calls at every gradient-accumulation boundary (at the
end of ``engine.backward()``, or in ``engine.step()`` with unmanaged accumulation) and skips
inside ``engine.no_sync()``. Two lines after ``deepspeed.initialize``::

    state = DeepSpeedCompression(engine, "powersgd", rank=4)
    register_deepspeed_hook(engine, state)

route that call to :func:`deepspeed_hook`, which averages every parameter's ``.grad`` over the
engine's data-parallel group with :class:`~distcomp.reducer.CompressedReducer` (the same
compression, error feedback, inf/NaN fallback, L-GreCo planning and byte ledger as the DDP hook).
DeepSpeed then clips, unscales and steps exactly as it would have.

Supported: ZeRO stage 0 (plain data parallelism), fp32 or fp16 parameters, any optimizer,
gradient accumulation, ``no_sync()``, gradient clipping. Refused at registration, before any
collective, with the reason:

- ZeRO stages 1-3: their optimizers reduce-scatter gradients into flat fp32 partitions of their
  own (stage 2/3 during backward, bucket by bucket), so a full averaged ``.grad`` per parameter,
  which low-rank and sparse compression produce, has nowhere to go without rewriting the ZeRO
  optimizer. Use stage 0 with compression, or ZeRO without it.
- bf16 (``BF16_Optimizer`` reduces its private fp32 accumulation buffers, not ``.grad``),
  pipeline parallelism, mixture-of-experts layers, sequence parallelism, DeepCompile, and a
  "sum" gradient all-reduce op: each reduces other tensors or groups than ``.grad`` over data
  parallel ranks.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from distcomp.comm import TorchComm, check_same
from distcomp.ledger import ByteLedger
from distcomp.lgreco import LGreCoConfig
from distcomp.reducer import CompressedReducer, parse_options, settings_of


class DeepSpeedCompression:
    """Compression state of one DeepSpeed engine (the ``state`` of :func:`deepspeed_hook`).

    Args:
      engine: the engine returned by ``deepspeed.initialize`` (checked here: see the module
        docstring for what is supported).
      method, **options: see :class:`distcomp.config.CompressionConfig` (rank, density, bits,
        error_feedback, warmup_steps, seed, timeout_s, ...).
      lgreco: an :class:`~distcomp.lgreco.LGreCoConfig` or dict to plan per-layer settings
        adaptively; None keeps the uniform setting.

    Fields:
      config: the validated configuration.
      reducer: residuals, warm-start Qs, L-GreCo plan and the byte ledger.
      names: parameter names (in ``engine.module.named_parameters()`` order) that are averaged;
        identical on every rank because the model is.
      step: reductions done (one per optimizer step; micro-steps inside an accumulation window
        do not count).
    """

    def __init__(self, engine: Any, method: str = "powersgd", *,
                 lgreco: LGreCoConfig | dict | None = None, **options):
        self.config, lgreco = parse_options(method, options, lgreco)
        self.reducer = CompressedReducer(self.config, rank=dist.get_rank(), lgreco=lgreco)
        check_engine(engine)
        self.group = engine.seq_data_parallel_group
        self.comm = TorchComm(self.group, self.config.timeout_s)
        named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        check_same(self.comm, "DeepSpeedCompression", settings_of(self.config, lgreco, named))
        self.step = 0

    @property
    def ledger(self) -> ByteLedger:
        return self.reducer.ledger

    def plan(self) -> list[dict]:
        """Per-layer table of the latest L-GreCo plan (empty without L-GreCo)."""
        return [] if self.reducer.lgreco is None else list(self.reducer.lgreco.rows)

    def state_dict(self) -> dict:
        """Per-rank state (error-feedback residuals differ per rank): save it from every rank,
        e.g. with :func:`distcomp.checkpoint.save_rank`; DeepSpeed's ``client_state`` is
        written by rank 0 only at stage 0."""
        return {"step": self.step, "names": list(self.names),
                "reducer": self.reducer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            raise ValueError("checkpoint was made for a model with other trainable parameters")
        self.reducer.load_state_dict(state["reducer"])
        self.step = int(state["step"])


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
            "compressed full-gradient average has no place")
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
    in place (see :meth:`~distcomp.reducer.CompressedReducer.reduce_parameters`)."""
    state.reducer.reduce_parameters(dict(engine.module.named_parameters()), state.names,
                                    state.comm, state.step)
    state.step += 1


def register_deepspeed_hook(engine: Any, state: DeepSpeedCompression,
                            hook=deepspeed_hook) -> None:
    """Make ``engine`` reduce gradients with ``hook(state, engine)`` instead of its own
    all-reduce. The engine keeps deciding *when* (accumulation boundaries, ``no_sync``)."""
    check_engine(engine)

    def allreduce_gradients(bucket_size: int = 0) -> None:  # DeepSpeed's signature
        if engine.is_gradient_accumulation_boundary():
            hook(state, engine)

    engine.allreduce_gradients = allreduce_gradients
