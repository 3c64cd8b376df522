"""The compression state shared by integrations that average named parameters' ``.grad``
themselves (DeepSpeed, Horovod), rather than DDP buckets."""

from __future__ import annotations

from torch import nn

from distcomp.comm import Comm, check_same
from distcomp.compression.config import CompressionConfig
from distcomp.compression.lgreco import LGreCoConfig
from distcomp.compression.options import settings_of, trainable
from distcomp.compression.reducer import CompressedReducer
from distcomp.ledger import ByteLedger


class ParameterCompression:
    """Compression state over a fixed list of trainable parameters.

    Fields:
      config: the validated configuration.
      reducer: residuals, warm-start Qs, L-GreCo plan and the byte ledger.
      comm: the collectives the reducer runs on.
      names: trainable parameter names, in ``named_parameters()`` order; identical on every
        rank (checked at set-up with the settings, see :func:`~distcomp.comm.check_same`).
      step: reductions done (one per optimizer step).
    """

    def __init__(self, what: str, config: CompressionConfig, lgreco: LGreCoConfig | None,
                 module: nn.Module, comm: Comm):
        self.config = config
        self.comm = comm
        self.reducer = CompressedReducer(config, rank=comm.rank, lgreco=lgreco)
        named = trainable(module)
        self.names = [n for n, _ in named]
        check_same(comm, what, settings_of(config, lgreco, named))
        self.step = 0
        self.closed = False

    def close(self) -> None:
        """Refuse further reductions. The framework (DeepSpeed, Horovod) owns the process group
        and threads, so there is nothing else to release; here so that every distcomp state
        closes, and works as a context manager, the same way."""
        self.closed = True

    def __enter__(self) -> ParameterCompression:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(method={self.config.method!r}, "
                f"setting={self.config.setting}, step={self.step}, {self.ledger!r})")

    def compression_stats(self, per_layer: bool = False) -> dict:
        """Steps, dense and sent bytes, per step and their ratio (per parameter with
        ``per_layer``); see :meth:`distcomp.ledger.ByteLedger.summary`."""
        return self.ledger.summary(per_key=per_layer)

    @property
    def ledger(self) -> ByteLedger:
        return self.reducer.ledger

    def plan(self) -> list[dict]:
        """Per-layer table of the latest L-GreCo plan (empty without L-GreCo)."""
        return [] if self.reducer.lgreco is None else list(self.reducer.lgreco.rows)

    def reduce(self, module: nn.Module) -> None:
        """Average every trainable parameter's ``.grad`` over the ranks, compressed, in place
        (see :meth:`~distcomp.compression.reducer.CompressedReducer.reduce_parameters`)."""
        if self.closed:
            raise RuntimeError(f"this {type(self).__name__} is closed; build a new one")
        self.reducer.reduce_parameters(dict(module.named_parameters()), self.names, self.comm,
                                       self.step)
        self.step += 1

    def state_dict(self) -> dict:
        """Per-rank state (error-feedback residuals differ per rank): save it from every rank,
        e.g. with :func:`distcomp.checkpoint.save_rank`."""
        return {"step": self.step, "names": list(self.names),
                "reducer": self.reducer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            raise ValueError("checkpoint was made for a model with other trainable parameters")
        self.reducer.load_state_dict(state["reducer"])
        self.step = int(state["step"])
