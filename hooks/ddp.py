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
import logging
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.distributed as dist
from torch import nn

from distcomp.comm import TorchComm, check_same
from distcomp.compression.hierarchical import HierarchicalReducer, build
from distcomp.compression.lgreco import LGreCoConfig
from distcomp.compression.options import parse_options, settings_of, trainable
from distcomp.compression.reducer import CompressedReducer
from distcomp.compression.topology import agree, check_topology_options
from distcomp.ledger import ByteLedger

log = logging.getLogger(__name__)
LOG_EVERY = 100  # steps between the INFO lines of bytes and ratio (rank 0, logger "distcomp")


class CompressionState:
    """Everything the compression hook keeps between steps.

    Construct it on every rank. Settings are validated here, before any communication. If the
    default process group exists it binds at once (it creates a process group of its own, a
    collective call, and checks that every rank has the same settings); otherwise it binds on
    the first hook call or on :meth:`attach`, so it can be built before the process group, as
    torch's ``PowerSGDState`` can (Lightning's ``DDPStrategy(ddp_comm_state=...)``).

    Args:
      model: the DDP model (or the module it wraps); parameter names key all per-tensor state,
        so state survives DDP rebuilding its buckets and loads into a fresh process.
      method, **options: see :class:`distcomp.compression.config.CompressionConfig` (rank,
        density, bits, error_feedback, min_compression_rate, warmup_steps, seed, timeout_s, ...).
      process_group: group for the compressed collectives; default: a new group over all ranks
        (created at binding, destroyed by :meth:`close`).
      lgreco: an :class:`~distcomp.compression.lgreco.LGreCoConfig` (or a dict of its fields) to
        re-plan every layer's setting adaptively with the uniform setting as the error budget; None
        (default) keeps the uniform setting. See :class:`distcomp.hooks.lgreco.LGreCoState`.
      hierarchical: average in three stages, dense inside each node and compressed only across
        nodes (:mod:`distcomp.compression.hierarchical`). None (default): on where the launcher's
        environment (or ``ranks_per_node``) shows several nodes of several ranks, off
        otherwise and with a ``process_group`` of the user's; True insists (an error where the
        world has one node, or one rank per node).
      ranks_per_node: ranks on each node; None: from torchrun, SLURM or Open MPI's
        environment (:mod:`distcomp.compression.topology`), one per node where none says.

    Fields:
      config: the validated configuration.
      reducer: the :class:`~distcomp.compression.reducer.CompressedReducer` holding residuals,
        warm-start Qs, the RNG and the byte ledger.
      step: optimizer steps seen (incremented after the last bucket of each backward; backward
        passes under ``no_sync()`` call no hook and do not count).
      process_group: the group the compressed collectives run on (None until bound).

    It holds a thread and a process group: :meth:`close` it (or use it as a context manager)
    before ``destroy_process_group()``.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "powersgd",
        *,
        process_group: "dist.ProcessGroup | None" = None,
        lgreco: "LGreCoConfig | dict | None" = None,
        hierarchical: "bool | None" = None,
        ranks_per_node: "int | None" = None,
        **options,
    ):
        self.config, lgreco = parse_options(method, options, lgreco)
        self._hierarchical, self._ranks_per_node = check_topology_options(
            hierarchical, ranks_per_node, process_group)
        module = model.module if hasattr(model, "module") else model
        named = trainable(module)
        self._settings = settings_of(self.config, lgreco, named)
        self.reducer = CompressedReducer(self.config, rank=0, lgreco=lgreco)
        self._names = {id(p): name for name, p in module.named_parameters()}
        self._dense_bytes = {name: p.numel() * p.element_size() for name, p in named}
        self.process_group = process_group
        self.step = 0
        self.hier: HierarchicalReducer | None = None
        self._hier_groups: list = []
        self._comm = self._executor = None
        self._owns_group = self._closed = False
        if dist.is_initialized():
            self.attach(process_group)

    @property
    def bound(self) -> bool:
        """True once attached to a process group (and not closed)."""
        return self._executor is not None

    def attach(self, process_group: "dist.ProcessGroup | None" = None) -> None:
        """Bind to the process group (collective: call on every rank): create this state's own
        group unless ``process_group`` is given, start the communication thread, and check that
        every rank has the same settings and model. Called by the constructor when the default
        group exists, by the first hook call otherwise; also re-attaches an unpickled state
        (pickling drops groups and threads). A bound state is left as it is."""
        if self._closed:
            raise RuntimeError("this CompressionState is closed; build a new one")
        if self.bound:
            return
        if not dist.is_initialized():
            raise RuntimeError("CompressionState.attach needs torch.distributed initialized")
        if process_group is None:
            process_group = self.process_group  # given at construction, before binding
        self._owns_group = process_group is None
        if process_group is None:
            process_group = dist.new_group(backend=dist.get_backend())
        self.process_group = process_group
        self._comm = TorchComm(self.process_group, self.config.timeout_s)
        self.reducer.rank = self._comm.rank
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distcomp-comm")
        try:
            check_same(self._comm, "CompressionState", self._settings)
            self._bind_topology()
        except BaseException:
            self.close()
            raise

    def _bind_topology(self) -> None:
        """Agree on the cluster shape (the same error on every rank where ranks disagree) and,
        where it is layered and wanted, build the three-stage reducer over new groups."""
        auto = None if self._owns_group else False  # not on a process group of the user's
        topo = agree(self._comm, auto if self._hierarchical is None else self._hierarchical,
                     self._ranks_per_node)
        if topo is not None:
            self.hier, self._hier_groups = build(self.reducer, topo, self.config.timeout_s)

    def close(self) -> None:
        """Finish the buckets in flight, stop the communication thread and destroy the process
        group this state created (not one it was given). Idempotent; the hook refuses a closed
        state. No ``gc.collect()`` is needed before ``destroy_process_group()``."""
        if self._closed:
            return
        self._closed = True
        executor, self._executor, self._comm = self._executor, None, None
        if executor is not None:
            executor.shutdown(wait=True)
        if dist.is_initialized():
            for group in self._hier_groups:
                dist.destroy_process_group(group)
            if self._owns_group and self.process_group is not None:
                dist.destroy_process_group(self.process_group)
        self.process_group, self.hier, self._hier_groups = None, None, []

    def __enter__(self) -> "CompressionState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "closed" if self._closed else "bound" if self.bound else "not bound yet"
        return (f"{type(self).__name__}(method={self.config.method!r}, "
                f"setting={self.config.setting}, step={self.step}, {where}, "
                f"{self.reducer.ledger!r})")

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

    def compression_stats(self, per_layer: bool = False) -> dict:
        """What compression saved so far, like torch's ``PowerSGDState.compression_stats()``:
        steps, dense bytes (what plain DDP's all-reduce would have handed over), sent bytes, per
        step and their ratio; with ``per_layer`` the same per parameter. Bytes this rank handed
        to collectives (see :mod:`distcomp.ledger`). Hierarchical: the sent bytes are this
        rank's share of the slow (inter-node) stage, for the layers it owns, and
        ``"fast_link"`` holds the dense bytes of the two stages inside the node."""
        out = self.ledger.summary(per_key=per_layer)
        if self.hier is not None:
            out["fast_link"] = self.hier.local_ledger.summary(per_key=per_layer)
        return out

    def log_progress(self, step: int) -> None:
        """Every ``LOG_EVERY`` steps, rank 0 logs one INFO line on the ``distcomp`` logger:
        bytes per step over the last interval, the dense baseline and the ratio."""
        if (step + 1) % LOG_EVERY or self.reducer.rank != 0 or not log.isEnabledFor(logging.INFO):
            return
        book = self.reducer.ledger
        recent = book.mean_bytes_per_step(LOG_EVERY)
        dense = book.dense_total / max(book.steps, 1)
        log.info("distcomp: step %d: %s, %.2f MB/step over the last %d steps (dense %.2f "
                 "MB/step, %.1fx)", step + 1, self.config.method, recent / 1e6, LOG_EVERY,
                 dense / 1e6, dense / recent if recent else float("nan"))

    def plan(self) -> list[dict]:
        """Per-layer table of the latest adaptive plan: name, shape, setting, bytes, error (and
        the uniform setting's bytes and error); empty for uniform compression or before the
        first plan."""
        self.drain()
        return [] if self.reducer.lgreco is None else list(self.reducer.lgreco.rows)

    def submit(self, fn) -> None:
        """Run ``fn`` on this state's communication thread (FIFO), binding first if needed."""
        if not self.bound:
            self.attach()
        self._executor.submit(fn)

    def drain(self) -> None:
        """Wait until every submitted bucket is done (e.g. before checkpointing)."""
        if self.bound:
            self._executor.submit(lambda: None).result()

    def state_dict(self) -> dict:
        """Step and reducer state; hierarchical, the reducer holds only the layers this rank
        owns, so every rank saves its own (as :mod:`distcomp.checkpoint` does)."""
        self.drain()
        return {"step": self.step, "reducer": self.reducer.state_dict(),
                "topology": self._topology_key(),
                **({"hierarchical": self.hier.state_dict()} if self.hier is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.drain()
        saved = state.get("topology")
        if self.bound and saved is not None and saved != self._topology_key():
            raise ValueError(f"checkpoint was saved with topology {saved}, this run has "
                             f"{self._topology_key()}: residuals are sharded by it")
        self.reducer.load_state_dict(state["reducer"])
        if self.hier is not None and "hierarchical" in state:
            self.hier.load_state_dict(state["hierarchical"])
        self.step = int(state["step"])

    def _topology_key(self) -> dict | None:
        """Which share of the reducer state this rank holds (None: all of it, or not bound)."""
        if self.hier is None:
            return None
        t = self.hier.topology
        return {"nodes": t.nodes, "ranks_per_node": t.ranks_per_node, "rank": t.rank}

    def __getstate__(self) -> dict:
        # Process groups, threads and locks cannot travel; a loaded copy must be re-attached.
        d = dict(self.__dict__)
        for k in ("process_group", "_comm", "_executor", "hier", "_hier_groups"):
            d.pop(k, None)
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self.process_group = self._comm = self._executor = self.hier = None
        self._hier_groups = []
        self._owns_group = self._closed = False


def compression_hook(
    state: CompressionState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """Average one DDP bucket with compression; returns at once, the future completes later.

    1. Name every gradient of the bucket by its parameter (views into the bucket buffer).
    2. Hand the bucket to the state's communication thread; there the reducer runs the
       collectives (see :mod:`distcomp.compression.reducer`) and writes averages into the buffer.
    3. Complete the returned future with the buffer (or the error, e.g. a collective timeout).
    """
    if not state.bound:
        state.attach()  # first call, state built before the process group: a collective
    buffer = bucket.buffer()
    grads, keys, offset = [], [], 0
    for p in bucket.parameters():
        n = p.numel()
        grads.append(buffer[offset : offset + n].view(p.shape))
        keys.append(state.key(p))
        offset += n
    step = state.step
    last = bucket.is_last()
    if last:
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
            if state.hier is not None:
                state.hier.reduce(grads, keys, step)
            else:
                state.reducer.reduce(grads, keys, state._comm, step)
            if last:
                state.log_progress(step)
            fut.set_result(buffer)
        except BaseException as err:  # noqa: BLE001 - the error travels to backward()
            fut.set_exception(err)

    state.submit(run)
    return fut
