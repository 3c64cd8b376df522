"""DDP communication hook for compressed gradient averaging (PowerSGD, top-k, QSGD).

Two lines in an existing DDP script::

    state = CompressionState(ddp_model, method="powersgd", rank=4)
    ddp_model.register_comm_hook(state, compression_hook)

Why a worker thread: a multi-phase hook (PowerSGD needs two all-reduces per bucket) that launches
its second collective from a future callback races with the autograd thread launching the next
bucket's first collective, so ranks can issue collectives in different orders; on gloo that pairs
mismatched buffers (abort) or blocks gloo's own worker threads (hang). Here every bucket's whole
collective sequence runs on one thread per state, in the order DDP hands buckets over (bucket
index order, the same on every rank), on a process group of its own that DDP's internal
collectives never touch. The hook itself never blocks: the autograd thread goes on computing the
next buckets' gradients while this one travels.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations as real objects.
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.distributed as dist
from torch import nn

from distcomp.comm import TorchComm, check_same
from distcomp.ledger import ByteLedger
from distcomp.lgreco import LGreCoConfig
from distcomp.reducer import CompressedReducer, parse_options, settings_of, trainable


class CompressionState:
    """Everything the compression hook keeps between steps.

    Construct it on every rank after ``init_process_group`` (it creates a process group, which is
    a collective call). Settings are validated here, before any communication.

    Args:
      model: the DDP model (or the module it wraps); parameter names key all per-tensor state,
        so state survives DDP rebuilding its buckets and loads into a fresh process.
      method, **options: see :class:`distcomp.config.CompressionConfig` (rank, density, bits,
        error_feedback, min_compression_rate, warmup_steps, seed, timeout_s, ...).
      process_group: group for the compressed collectives; default: a new group over all ranks.
      lgreco: an :class:`~distcomp.lgreco.LGreCoConfig` (or a dict of its fields) to re-plan
        every layer's setting adaptively with the uniform setting as the error budget; None
        (default) keeps the uniform setting. See :class:`hooks.lgreco.LGreCoState`.

    Fields:
      config: the validated configuration.
      reducer: the :class:`~distcomp.reducer.CompressedReducer` holding residuals, warm-start Qs,
        the RNG and the byte ledger.
      step: optimizer steps seen (incremented after the last bucket of each backward; backward
        passes under ``no_sync()`` call no hook and do not count).
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "powersgd",
        *,
        process_group: "dist.ProcessGroup | None" = None,
        lgreco: "LGreCoConfig | dict | None" = None,
        **options,
    ):
        self.config, lgreco = parse_options(method, options, lgreco)
        module = model.module if hasattr(model, "module") else model
        named = trainable(module)
        self.reducer = CompressedReducer(self.config, rank=dist.get_rank(), lgreco=lgreco)
        self._names = {id(p): name for name, p in module.named_parameters()}
        if process_group is None:
            process_group = dist.new_group(backend=dist.get_backend())
        self.process_group = process_group
        self.step = 0
        self._start_worker()
        check_same(self._comm, "CompressionState", settings_of(self.config, lgreco, named))

    def _start_worker(self) -> None:
        self._comm = TorchComm(self.process_group, self.config.timeout_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distcomp-comm")

    def attach(self, process_group: "dist.ProcessGroup | None" = None) -> None:
        """Re-attach an unpickled state to a process group (pickling drops groups and threads)."""
        if process_group is None:
            process_group = dist.new_group(backend=dist.get_backend())
        self.process_group = process_group
        self._start_worker()

    @property
    def ledger(self) -> ByteLedger:
        """The byte ledger, once every bucket handed to the worker so far is counted."""
        self.drain()
        return self.reducer.ledger

    def key(self, param: torch.Tensor) -> str:
        try:
            return self._names[id(param)]
        except KeyError:
            raise ValueError(
                "a bucket holds a parameter that is not in the model given to CompressionState"
            ) from None

    def plan(self) -> list[dict]:
        """Per-layer table of the latest adaptive plan: name, shape, setting, bytes, error (and
        the uniform setting's bytes and error); empty for uniform compression or before the
        first plan."""
        self.drain()
        return [] if self.reducer.lgreco is None else list(self.reducer.lgreco.rows)

    def submit(self, fn) -> None:
        """Run ``fn`` on this state's communication thread (FIFO)."""
        self._executor.submit(fn)

    def drain(self) -> None:
        """Wait until every submitted bucket is done (e.g. before checkpointing)."""
        self._executor.submit(lambda: None).result()

    def state_dict(self) -> dict:
        self.drain()
        return {"step": self.step, "reducer": self.reducer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.drain()
        self.reducer.load_state_dict(state["reducer"])
        self.step = int(state["step"])

    def __getstate__(self) -> dict:
        # Process groups, threads and locks cannot travel; a loaded copy must be re-attached.
        d = dict(self.__dict__)
        for k in ("process_group", "_comm", "_executor"):
            d.pop(k, None)
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self.process_group = None


def compression_hook(
    state: CompressionState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """Average one DDP bucket with compression; returns at once, the future completes later.

    1. Name every gradient of the bucket by its parameter (views into the bucket buffer).
    2. Hand the bucket to the state's communication thread; there the reducer runs the
       collectives (see :mod:`distcomp.reducer`) and writes averages into the buffer.
    3. Complete the returned future with the buffer (or the error, e.g. a collective timeout).
    """
    buffer = bucket.buffer()
    grads, keys, offset = [], [], 0
    for p in bucket.parameters():
        n = p.numel()
        grads.append(buffer[offset : offset + n].view(p.shape))
        keys.append(state.key(p))
        offset += n
    step = state.step
    if bucket.is_last():
        state.step += 1
    devices = [buffer.device] if buffer.is_cuda else None
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future(devices=devices)
    ready = None
    if buffer.is_cuda:
        ready = torch.cuda.Event()
        ready.record()

    def run() -> None:
        try:
            if ready is not None:
                torch.cuda.current_stream(buffer.device).wait_event(ready)
            state.reducer.reduce(grads, keys, state._comm, step)
            fut.set_result(buffer)
        except BaseException as err:  # noqa: BLE001 - the error travels to backward()
            fut.set_exception(err)

    state.submit(run)
    return fut
