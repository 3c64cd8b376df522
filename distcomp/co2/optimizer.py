"""CO2 (Sun et al., ICLR 2024): local updating whose outer all-reduce overlaps the next round.

On a link too slow even for compressed gradients, ranks stop averaging gradients. Each rank runs
``tau`` steps of its own optimizer on its own gradients (the DDP model uses
:func:`distcomp.hooks.local_hook`, which communicates nothing), then the ranks average what
those steps did, the pseudo-gradient, and an outer optimizer applies it to a shared anchor. CO2
hides that average: it is launched asynchronously and travels while the next ``tau`` local steps
compute, so it is applied one round late. Round t (anchor x_t, identical on every rank):

  1. local steps from where this rank's round started, b_t^i, give x_t^i; its pseudo-gradient
     d_t^i = b_t^i - x_t^i (fp32, one flat buffer) starts an all-reduce on a process group
     of its own (never interleaved with DDP's or the inner optimizer's collectives);
  2. the average D_{t-1} launched one round earlier is waited for (it had tau steps to arrive)
     and applied with the outer optimizer (heavy-ball or Nesterov momentum):
         m  <- beta m + s_{t-1} * D_{t-1}           (s: staleness-gap penalty, per tensor)
         m  <- m * min(1, clip_norm / ||m||)         (outer-momentum clipping)
         x_{t+1} = x_t - outer_lr * (m, or beta m + s D for Nesterov)
  3. every rank continues from x_{t+1} - d_t^i: the new anchor plus its own progress of round
     t, which is not averaged yet (D_t replaces it at the next boundary, so no progress is
     lost or applied twice); round t+1 starts while D_t travels. Resetting to x_{t+1} instead
     would make round t+1 redo round t's progress, which then lands twice (it diverges).

Staleness-gap penalty: D_{t-1} is applied one round after it was measured; the fresh average
would differ from it by about how much consecutive averages differ. Per parameter tensor,
    gap = ||D_{t-1} - D_{t-2}|| / (||D_{t-1}|| + ||D_{t-2}||)    in [0, 1],
0 when the trajectory is steady (staleness is harmless) and 1 when it reverses;
s = 1 / (1 + gap_penalty * gap). Blocking rounds (``overlap=False``, the DiLoCo schedule) are
not stale and use s = 1. Both the penalty and the clipping use only quantities that are identical
on every rank, so all ranks keep identical anchors. These two definitions are this library's own
(BENCHMARKS.md, "Local updating with overlapped averaging", says how they came about).
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict

import torch
import torch.distributed as dist
from torch import nn
from torch.amp.grad_scaler import OptState

from distcomp.co2.config import WIRE_DTYPES, CO2Config
from distcomp.co2.node import NodeShare
from distcomp.comm import CollectiveTimeout, TorchComm, check_same, model_fingerprint, wait_work
from distcomp.compression.config import CompressionConfig
from distcomp.compression.lgreco import LGreCoConfig
from distcomp.compression.options import settings_of, trainable
from distcomp.compression.reducer import CompressedReducer
from distcomp.compression.topology import agree, check_topology_options
from distcomp.ledger import ByteLedger

log = logging.getLogger(__name__)


class CO2:
    """Wraps an inner optimizer; ``step()`` runs it and, every ``tau`` calls, the outer round.

    Two lines in an existing DDP script (construct on every rank, after DDP)::

        ddp_model.register_comm_hook(None, distcomp.hooks.local_hook)   # no gradient all-reduce
        optimizer = CO2(optimizer, ddp_model, tau=4)

    With a GradScaler call ``optimizer.step(scaler=scaler)`` instead of ``scaler.step(...)``:
    the ranks then agree on skipping a step (one 4-byte all-reduce per step), so scales and round
    counters never drift apart. At the end of training call ``synchronize()`` (every rank) to
    fold in the in-flight and current rounds and leave identical parameters everywhere, then
    ``close()`` (or use it as a context manager) to release its thread and process groups.

    Args:
      inner: any optimizer over (a subset of) the model's parameters: SGD, AdamW, or torch's
        ZeroRedundancyOptimizer (its own broadcasts run on the default group, ours on a
        dedicated one, so they never collide).
      model: the DDP model (or plain module) whose parameters the anchor covers.
      compression: optional :class:`CompressionConfig` (or its dict) to compress the
        pseudo-gradient with a distcomp compressor (with error feedback across rounds);
        ``lgreco`` adds adaptive per-tensor settings (its schedule counts rounds, not steps).
      process_group: group to average over; default all ranks (a new group is made over it).
      hierarchical, ranks_per_node: with several ranks on each of several nodes (from the
        launcher's environment, or ``ranks_per_node``), gradients are averaged inside each node
        every step and only the outer round crosses nodes, its state sharded over the node's
        ranks (:mod:`distcomp.co2.node`); None (default): so wherever the world has that shape
        and no ``process_group`` is given; False: flat.
      **options: :class:`CO2Config` fields.

    Fields:
      config: the validated :class:`CO2Config`.
      anchor: flat fp32, the shared model x_t (identical on every rank).
      base: flat fp32, where this rank's current round started (anchor - own last progress).
      momentum: flat fp32 outer momentum.
      residual: flat fp32, what 16-bit rounding has not sent yet (None with the fp32 wire).
      rounds, steps: outer rounds completed; step() calls.
      ledger: payload bytes handed to the all-reduce, per round.
      reducer: CompressedReducer for the pseudo-gradient, or None.
      last_scale: per-tensor staleness-penalty factors of the last outer step.
      wait_s: seconds step() spent blocked on pseudo-gradient averages, per round (the part of
        the communication that computation did not hide; ~0 when the overlap is complete).
      round_s: seconds each outer round added to its step (waiting, averaging, reloading).
    """

    def __init__(self, inner: torch.optim.Optimizer, model: nn.Module, *,
                 compression: CompressionConfig | dict | None = None,
                 lgreco: LGreCoConfig | dict | None = None,
                 process_group: dist.ProcessGroup | None = None,
                 hierarchical: bool | None = None, ranks_per_node: int | None = None,
                 **options) -> None:
        self.config = CO2Config.from_dict(options)
        check_topology_options(hierarchical, ranks_per_node, process_group)
        if isinstance(compression, dict):
            compression = CompressionConfig.from_dict(compression)
        if isinstance(lgreco, dict):
            lgreco = LGreCoConfig.from_dict(lgreco)
        if lgreco is not None and compression is None:
            raise ValueError("lgreco needs a compression config (its uniform setting)")
        if compression is not None and self.config.wire_dtype != "float32":
            raise ValueError("wire_dtype applies to the uncompressed all-reduce; with a "
                             "compression config the compressor sets the wire format")
        named = trainable(model, sparse_ok=True)
        if not named:
            raise ValueError("the model has no trainable parameters")
        ids = {id(p) for _, p in named}
        for group in inner.param_groups:
            if any(id(p) not in ids for p in group["params"]):
                raise ValueError("the inner optimizer holds parameters that are not the model's")
        devices = {p.device for _, p in named}
        if len(devices) != 1:
            found = sorted(map(str, devices))
            raise ValueError(f"all parameters must be on one device, found {found}")
        if not dist.is_initialized():
            raise RuntimeError("CO2 needs torch.distributed to be initialized first")
        # -- validated; collectives from here on ---------------------------------------------
        self.inner = inner
        self.all_params = [p for _, p in named]
        ranks = None if process_group is None else dist.get_process_group_ranks(process_group)
        self.group = dist.new_group(ranks=ranks)
        self.comm = TorchComm(self.group, self.config.timeout_s)
        self.flag_group = dist.new_group(ranks=ranks)  # never queued behind a pseudo-gradient
        settings = {f"co2.{k}": v for k, v in asdict(self.config).items()}
        if compression is not None:
            settings.update(settings_of(compression, lgreco, named))
        else:
            settings["parameters"] = model_fingerprint(named)
        check_same(self.comm, "CO2", settings)
        self.node = None if process_group is not None else \
            self._bind_node(hierarchical, ranks_per_node)
        outer_group = self.group
        if self.node is not None:  # the outer round runs between nodes, on this rank's share
            named = self.node.mine(named)
            outer_group = self.node.peer_group
            self.comm = TorchComm(outer_group, self.config.timeout_s)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.numels = [p.numel() for p in self.params]
        self.reducer = None
        if compression is not None:
            self.reducer = CompressedReducer(compression, self.comm.rank, lgreco)
        self.ledger = self.reducer.ledger if self.reducer else ByteLedger()
        self.anchor = self._flat().float()
        src = dist.get_global_rank(outer_group, 0)
        work = dist.broadcast(self.anchor, src, group=outer_group, async_op=True)
        wait_work(work, "broadcast of the initial parameters", self.config.timeout_s)
        self._load(self.anchor)
        self.base = self.anchor.clone()  # where this rank's current round started
        self.momentum = torch.zeros_like(self.anchor)
        self.wire = WIRE_DTYPES[self.config.wire_dtype]
        self.residual = None if self.wire is torch.float32 else torch.zeros_like(self.anchor)
        self.prev_avg: torch.Tensor | None = None  # D_{t-2}, for the staleness gap
        self.last_scale: torch.Tensor | None = None
        self.rounds = 0
        self.steps = 0
        self.wait_s: list[float] = []
        self.round_s: list[float] = []
        self._waited = 0.0
        self._inflight: tuple[Future | object, torch.Tensor] | None = None
        self._ready: torch.Tensor | None = None  # an in-flight average already waited for
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="co2") if self.reducer else None
        self._closed = False

    def close(self) -> None:
        """Wait for the round in flight (its average is dropped: ``synchronize()`` first keeps
        it), stop the compression thread and destroy the two process groups this optimizer
        made. Idempotent; ``step()`` refuses a closed optimizer. No ``gc.collect()`` is
        needed before ``destroy_process_group()``."""
        if self._closed:
            return
        self._closed = True
        inflight, self._inflight, self._ready = self._inflight, None, None
        try:
            if isinstance(inflight, tuple) and isinstance(inflight[0], Future):
                inflight[0].result(timeout=self.config.timeout_s + 5)
            elif inflight is not None:
                inflight[0].wait()
        except Exception as err:  # noqa: BLE001 - closing: report, then release everything
            log.warning("distcomp: CO2.close: the round in flight failed: %s", err)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self.node is not None:
            self.node.close()
        if dist.is_initialized():
            for group in (self.group, self.flag_group):
                dist.destroy_process_group(group)

    def __enter__(self) -> CO2:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- optimizer surface ---------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None, scaler: torch.amp.GradScaler | None = None):
        """One inner step (skipped on every rank alike if any rank's scaled gradients overflow),
        then the outer round every ``tau`` calls. Returns the closure's loss, if any."""
        if self._closed:
            raise RuntimeError("this CO2 optimizer is closed; build a new one")
        if self.node is not None:  # the node's ranks step together on their mean gradient
            self.node.average_grads(self.all_params)
        loss = None
        if scaler is not None and scaler.is_enabled():
            if closure is not None:
                raise ValueError("closure is not supported together with a GradScaler")
            state = scaler._per_optimizer_states[id(self.inner)]
            if state["stage"] is OptState.READY:  # the user may have unscaled (for clipping)
                scaler.unscale_(self.inner)
            found = state["found_inf_per_device"]
            flag = torch.zeros(1, device=self.anchor.device)
            for v in found.values():
                flag += v.to(flag.device)
            work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.flag_group,
                                   async_op=True)
            wait_work(work, "all_reduce of the overflow flag", self.config.timeout_s)
            for v in found.values():
                v.fill_(float(flag.item() > 0))  # scaler.step and scaler.update see the same
            scaler.step(self.inner)
        else:
            loss = self.inner.step(closure)
        self.steps += 1
        if self.steps % self.config.tau == 0:
            start, self._waited = time.perf_counter(), 0.0
            self._round()
            self.round_s.append(time.perf_counter() - start)
            self.wait_s.append(self._waited)
        return loss

    # -- the outer round -----------------------------------------------------------------------
    def _round(self) -> None:
        own = self.base  # becomes this round's local progress d_t^i, in place
        for b, p in zip(self._split(own), self.params):
            b.sub_(p.detach().reshape(-1))
        if self.config.overlap:
            previous = self._collect()
            self._launch(own.clone())  # the collective owns (and overwrites) its buffer
            if previous is not None:
                self._apply(previous, stale=True)
            # keep own unaveraged progress on top of the new anchor; the average replaces it
            # next round, so no round's progress is dropped or counted twice
            self.base = torch.sub(self.anchor, own, out=own)
        else:
            self._launch(own)
            self._apply(self._collect(), stale=False)
            self.base = self.anchor.clone()
        self.rounds += 1
        self._load(self.base)

    def synchronize(self) -> None:
        """Fold the in-flight round and the current partial round into the anchor (blocking)
        and load it into the model: afterwards every rank holds the same parameters."""
        pending = self._collect()
        if pending is not None:
            self._apply(pending, stale=True)
        self._launch(self.base - self._flat())
        self._apply(self._collect(), stale=False)
        self.base = self.anchor.clone()
        self._load(self.base)

    def _launch(self, delta: torch.Tensor) -> None:
        if self.reducer is None:
            if self.residual is not None:  # error feedback: send what rounding dropped later
                delta.add_(self.residual)
                wire = delta.to(self.wire)
                torch.sub(delta, wire, out=self.residual)
                delta = wire
            nbytes = delta.numel() * delta.element_size()
            self.ledger.record(self.rounds, "pseudo_gradient", nbytes, "all_reduce")
            self._inflight = (self.comm.all_reduce_sum(delta), delta)
            return
        shaped = [v.view_as(p) for v, p in zip(self._split(delta), self.params)]
        round_ = self.rounds

        def run() -> None:
            self.reducer.reduce(shaped, self.names, self.comm, round_)

        self._inflight = (self._pool.submit(run), delta)

    def _collect(self) -> torch.Tensor | None:
        """The average launched last, waited for (None if nothing is in flight)."""
        if self._ready is not None:
            ready, self._ready = self._ready, None
            return ready
        if self._inflight is None:
            return None
        handle, delta = self._inflight
        self._inflight = None
        start = time.perf_counter()
        if isinstance(handle, Future):
            try:
                handle.result(timeout=self.config.timeout_s + 5)
            except TimeoutError as err:
                raise CollectiveTimeout("compressed pseudo-gradient average timed out") from err
            self._waited += time.perf_counter() - start
            return delta  # the reducer averaged it in place
        handle.wait()
        self._waited += time.perf_counter() - start
        return delta.float().div_(self.comm.world_size)  # fp32 in place; a 16-bit wire: a copy

    def _apply(self, avg: torch.Tensor, stale: bool) -> None:
        c = self.config
        beta, lr = c.outer_momentum, c.outer_lr
        scale = torch.ones(len(self.params), dtype=avg.dtype, device=avg.device)
        if stale and c.gap_penalty > 0 and self.prev_avg is not None:
            scale = 1.0 / (1.0 + c.gap_penalty * self._gap(avg, self.prev_avg))
        self.prev_avg = avg
        self.last_scale = scale
        factors = scale.tolist()
        self.momentum.mul_(beta)
        if all(s == 1.0 for s in factors):
            self.momentum.add_(avg)
        else:  # per tensor, in place: a (numel,) scale vector would cost a pass and a copy
            for m, d, s in zip(self._split(self.momentum), self._split(avg), factors):
                m.add_(d, alpha=s)
        if c.clip_norm is not None:
            norm = float(self.momentum.norm())
            if norm > c.clip_norm:
                self.momentum.mul_(c.clip_norm / norm)
        if c.nesterov:  # x -= lr * (beta m + s D)
            for x, d, s in zip(self._split(self.anchor), self._split(avg), factors):
                x.add_(d, alpha=-lr * s)
            self.anchor.add_(self.momentum, alpha=-lr * beta)
        else:
            self.anchor.add_(self.momentum, alpha=-lr)

    def _gap(self, avg: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Per-tensor ||D - D_prev|| / (||D|| + ||D_prev||), in [0, 1] (0 for zero tensors).
        Consumes ``prev`` (it is dropped after this round): no 4-bytes-per-parameter temporary."""
        size = self._norms(avg) + self._norms(prev)
        diff = self._norms(prev.sub_(avg))
        return torch.where(size > 0, diff / size.clamp_min(1e-30), torch.zeros_like(size))

    # -- helpers -------------------------------------------------------------------------------
    def _norms(self, flat: torch.Tensor) -> torch.Tensor:
        """L2 norm of every parameter's slice of a flat buffer, (len(params),)."""
        return torch.stack([x.norm() for x in self._split(flat)])

    def _split(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(flat, self.numels)

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).float() for p in self.params])

    @torch.no_grad()
    def _load(self, flat: torch.Tensor) -> None:
        """Parameters from ``flat`` (this rank's share; across nodes, the node's ranks then take
        every tensor from its owner)."""
        for p, a in zip(self.params, self._split(flat)):
            p.copy_(a.view_as(p))
        if self.node is not None:
            self.node.share(self.all_params)

    def _bind_node(self, hierarchical: bool | None, ranks_per_node: int | None
                   ) -> NodeShare | None:
        """The node-sharing half where the world is several nodes of several ranks and
        ``hierarchical`` is not False (:mod:`distcomp.co2.node`); the same error on every rank
        where the ranks disagree on the shape."""
        topo = agree(self.comm, hierarchical, ranks_per_node)
        return None if topo is None else \
            NodeShare(topo, [p.numel() for p in self.all_params], self.config.timeout_s)

    def outer_state_bytes(self) -> int:
        """Bytes this rank holds for the outer loop: anchor, round start, outer momentum, the
        previous average and the rounding residual (not the model or the inner optimizer)."""
        bufs = (self.anchor, self.base, self.momentum, self.prev_avg, self.residual)
        return sum(b.numel() * b.element_size() for b in bufs if b is not None)

    def anchor_digest(self) -> str:
        """SHA-256 of the anchor's bytes: equal on all ranks after every round (for checks)."""
        return hashlib.sha256(self.anchor.cpu().numpy().tobytes()).hexdigest()

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Waits for an in-flight average first (it is part of the state); every rank's
        in-flight all-reduce was launched already, so one rank may save alone."""
        if self._inflight is not None:
            self._ready = self._collect()
        return {
            "config": asdict(self.config),
            "inner": self.inner.state_dict(),
            "anchor": self.anchor.clone(),
            "base": self.base.clone(),
            "momentum": self.momentum.clone(),
            "prev_avg": None if self.prev_avg is None else self.prev_avg.clone(),
            "residual": None if self.residual is None else self.residual.clone(),
            "ready": None if self._ready is None else self._ready.clone(),
            "rounds": self.rounds,
            "steps": self.steps,
            "names": list(self.names),
            # with a reducer the ledger is the reducer's, saved inside its state
            "reducer": None if self.reducer is None else self.reducer.state_dict(),
            "ledger": None if self.reducer is not None else self.ledger.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = CO2Config.from_dict(state["config"])
        mine = {**asdict(self.config), "timeout_s": 0}
        if {**asdict(saved), "timeout_s": 0} != mine:
            raise ValueError(f"checkpoint was made with {saved}, this run uses {self.config}")
        if state["names"] != self.names:
            raise ValueError("checkpoint covers different parameters than this model")
        if (state["reducer"] is None) != (self.reducer is None):
            raise ValueError("checkpoint and this run disagree on pseudo-gradient compression")
        dev = self.anchor.device
        self.inner.load_state_dict(state["inner"])
        self.anchor = state["anchor"].to(dev).clone()
        self.base = state["base"].to(dev).clone()
        self.momentum = state["momentum"].to(dev).clone()
        self.prev_avg = None if state["prev_avg"] is None else state["prev_avg"].to(dev).clone()
        self._ready = None if state["ready"] is None else state["ready"].to(dev).clone()
        if self.residual is not None:
            self.residual = state["residual"].to(dev).clone()
        self._inflight = None
        self.rounds, self.steps = int(state["rounds"]), int(state["steps"])
        if self.reducer is not None:
            self.reducer.load_state_dict(state["reducer"])
            self.ledger = self.reducer.ledger
        else:
            self.ledger.load_state_dict(state["ledger"])

