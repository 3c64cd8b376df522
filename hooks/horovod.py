"""Horovod integration: distcomp's compressed gradient averaging over Horovod's collectives.

Horovod's own ``DistributedOptimizer`` takes a ``compression`` argument, but it only applies an
element-wise encode before a sum all-reduce and a decode after (fp16): low-rank factors need
two dependent all-reduces with an orthogonalisation between them, and top-k / QSGD payloads
cannot be summed at all, they are gathered. So this module runs distcomp's reducer with
``hvd.allreduce`` / ``hvd.allgather`` as its transport. The two-line change in a Horovod script
(instead of ``hvd.DistributedOptimizer(optimizer, named_parameters=...)``)::

    state = HorovodCompression(model, "powersgd", rank=4)
    optimizer = DistributedOptimizer(optimizer, state)

``optimizer.step()`` first averages every trainable parameter's ``.grad`` over all Horovod
ranks (compressed, error feedback, inf/NaN fallback, L-GreCo, byte ledger: as the DDP hook),
then steps the wrapped optimizer. Broadcast the initial parameters as usual
(``hvd.broadcast_parameters``). Every collective waits at most ``timeout_s``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from distcomp.comm import CollectiveTimeout
from distcomp.compression.lgreco import LGreCoConfig
from distcomp.compression.options import parse_options
from distcomp.hooks.param_state import ParameterCompression


class _HorovodHandle:
    def __init__(self, hvd: Any, handle: Any, what: str, timeout_s: float, shape=None):
        self._hvd, self._handle, self._what = hvd, handle, what
        self._timeout_s, self._shape = timeout_s, shape

    def wait(self) -> torch.Tensor:
        deadline = time.monotonic() + self._timeout_s
        try:
            while not self._hvd.poll(self._handle):  # synchronize() alone may wait forever
                if time.monotonic() > deadline:
                    raise CollectiveTimeout(f"{self._what} timed out after "
                                            f"{self._timeout_s:.0f}s (a peer may have been lost)")
                time.sleep(0.0002)
            out = self._hvd.synchronize(self._handle)
        except CollectiveTimeout:
            raise
        except Exception as err:  # Horovod raises its own HorovodInternalError
            raise CollectiveTimeout(f"{self._what} failed (a peer may have been lost): "
                                    f"{err}") from err
        return out if self._shape is None else out.view(self._shape)


class HorovodComm:
    """distcomp's :class:`~distcomp.comm.Comm` on Horovod. Each collective gets a name from a
    counter: every rank issues the same sequence, so names match across ranks."""

    def __init__(self, hvd: Any, timeout_s: float = 300.0):
        self.hvd, self.timeout_s = hvd, timeout_s
        self.rank, self.world_size = hvd.rank(), hvd.size()
        self.device = torch.device("cpu")  # Horovod takes CPU tensors on every backend
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"distcomp.{kind}.{self._count}"

    def all_reduce_sum(self, t: torch.Tensor) -> _HorovodHandle:
        handle = self.hvd.allreduce_async_(t, op=self.hvd.Sum, name=self._name("allreduce"))
        return _HorovodHandle(self.hvd, handle, f"hvd.allreduce of {t.numel()} x {t.dtype}",
                              self.timeout_s)

    def all_gather(self, t: torch.Tensor) -> _HorovodHandle:
        handle = self.hvd.allgather_async(t.reshape(1, -1), name=self._name("allgather"))
        return _HorovodHandle(self.hvd, handle, f"hvd.allgather of {t.numel()} x {t.dtype}",
                              self.timeout_s, shape=(self.world_size, *t.shape))


class HorovodCompression(ParameterCompression):
    """Compression state of one model trained with Horovod (the ``state`` of
    :func:`horovod_hook`).

    Args:
      model: the module whose trainable parameters are averaged (names key per-tensor state).
      method, **options: see :class:`distcomp.compression.config.CompressionConfig`.
      lgreco: an :class:`~distcomp.compression.lgreco.LGreCoConfig` or dict for adaptive per-layer
        settings; None keeps the uniform setting.
      hvd: the ``horovod.torch`` module (imported here when None); ``hvd.init()`` must have run.

    Fields: those of :class:`~distcomp.hooks.param_state.ParameterCompression` (comm: a
    :class:`HorovodComm`), and ``model``.
    """

    def __init__(self, model: nn.Module, method: str = "powersgd", *,
                 lgreco: LGreCoConfig | dict | None = None, hvd: Any = None, **options):
        config, lgreco = parse_options(method, options, lgreco)
        if hvd is None:
            import horovod.torch as hvd
        self.model = model
        super().__init__("HorovodCompression", config, lgreco, model,
                         HorovodComm(hvd, config.timeout_s))


def horovod_hook(state: HorovodCompression) -> None:
    """Average every trainable parameter's ``.grad`` over all Horovod ranks, compressed, in
    place."""
    state.reduce(state.model)


class DistributedOptimizer:
    """Wrap a torch optimizer so that ``step()`` averages gradients with ``hook(state)`` first.

    Gradient accumulation: call ``backward()`` several times, then ``step()`` once (one
    reduction per step). ``state_dict()`` holds the wrapped optimizer's state and the
    compression state, both per rank.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, state: HorovodCompression,
                 hook=horovod_hook):
        self.optimizer, self.state, self.hook = optimizer, state, hook
        self._synchronized = False

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def synchronize(self) -> None:
        """Average the gradients now (e.g. before clipping them), without stepping."""
        self.hook(self.state)
        self._synchronized = True

    def step(self, closure=None):
        if not self._synchronized:
            self.hook(self.state)
        self._synchronized = False
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "compression": self.state.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.state.load_state_dict(state["compression"])
