"""Average a group of gradient tensors across ranks with compression and error feedback.

This is the choreography shared by every integration (DDP hook, DeepSpeed, Horovod): it takes
the tensors of one bucket, decides per tensor whether to compress, runs the collectives through a
:class:`~distcomp.comm.Comm` and writes the averages back in place. It is synchronous: callers run
it on one thread per process group so that every rank issues its collectives in the same order.

Per bucket, with W ranks:
  1. Tensors that compression would not shrink (biases, norms, tiny layers) are fused into one
     dense fp32 all-reduce, with one extra element: the count of ranks whose bucket holds a
     non-finite value. It rides along the first collective, so agreement costs no extra round.
  2. Compressed tensors get their error-feedback residual added, then the method runs its
     collectives (:meth:`~distcomp.compression.compressor.Compressor.reduce`): its summable
     payloads join that first all-reduce (PowerSGD's P = M Q), its byte payloads travel in an
     all-gather beside it (top-k, QSGD), and it may run further rounds (PowerSGD's Q = M^T P).
  3. If any rank saw inf/NaN, every rank discards the compressed results and all-reduces the raw
     bucket instead: AMP's GradScaler then sees the inf everywhere, and residuals and the
     methods' memory stay untouched (a NaN must never enter error-feedback memory).
  4. Otherwise averages are written back and residuals updated: residual = input - C(input),
     where C is this rank's own compressed contribution.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import torch

from distcomp.comm import Comm, split_like
from distcomp.compression.accordion import Accordion
from distcomp.compression.compressor import FP32_BYTES, Item
from distcomp.compression.config import CompressionConfig
from distcomp.compression.dgc import MomentumCorrection
from distcomp.compression.lgreco import LGreCo, LGreCoConfig
from distcomp.ledger import CONTROL_KEY, ByteLedger


def step_generator(seed: int, rank: int, step: int, key: str,
                   device: torch.device) -> torch.Generator:
    """RNG seeded by (seed, rank, step, key): the random numbers do not depend on how tensors
    are grouped into buckets (DDP regroups them after the first step, and again in a resumed
    run), so a resumed run repeats the original bit for bit without any RNG state in the
    checkpoint."""
    mix = (seed * 1_000_003 + rank) * 1_000_003 + step
    gen = torch.Generator(device=device)
    gen.manual_seed((mix * 1_000_003 + zlib.crc32(key.encode())) % 2**63)
    return gen


@dataclass(frozen=True)
class RowBlocks:
    """The tensors a reducer averages are blocks of rows of larger ones (FSDP2's shards),
    the other blocks on the ranks of ``comm`` (this rank's node, block i on its rank i).
    ``shapes``: key -> the whole tensor's shape, on which every decision is made (compress or
    not, the setting), so the node's ranks decide alike."""

    comm: Comm
    shapes: dict[str, torch.Size]


@dataclass
class _Slot:
    key: str
    grad: torch.Tensor  # view into the caller's buffer; averages are written here
    setting: float | None  # None: travels uncompressed
    shape: torch.Size  # the whole tensor's (``grad``'s unless it is a row block)


class CompressedReducer:
    """Compression state of one process for a set of named tensors.

    Fields:
      config: the validated :class:`CompressionConfig`.
      compressor: the method's :class:`~distcomp.compression.compressor.Compressor`.
      settings: per-key overrides of the uniform setting (L-GreCo writes its plan here).
      accordion: the critical-regime schedule (None with ``accordion=False``): each layer's
        gentle or aggressive setting, the baseline L-GreCo plans against.
      dgc: momentum correction state (None unless the method corrects for momentum).
      residuals: key -> fp32 error-feedback memory, same shape as the gradient.
      memory: key -> what the method keeps between steps (PowerSGD's warm-start Q (m, r),
        identical on every rank).
      ledger: bytes contributed to collectives.
      nonfinite_buckets: buckets that fell back to a dense all-reduce because of inf/NaN.
      lgreco: the adaptive planner (None: uniform settings); it rewrites ``settings``.
      rows: where the tensors are row blocks that the method compresses jointly with the
        node's other blocks (:class:`RowBlocks`; a method declaring ``joins_row_blocks``,
        without L-GreCo, whose candidates and errors are per block); None: each tensor on its
        own. Statistics (Accordion's norms) are then averaged over the node too.
    """

    def __init__(self, config: CompressionConfig, rank: int = 0,
                 lgreco: LGreCoConfig | None = None, rows: RowBlocks | None = None):
        self.config = config
        self.compressor = config.compressor()
        self.rank = rank
        uniform = self.compressor.validate_setting(config.setting)
        self.lgreco = None
        if lgreco is not None:  # no plan before the dense warm-up ends: nothing to compress
            first = max(lgreco.warmup_steps, config.warmup_steps)
            self.lgreco = LGreCo(replace(lgreco, warmup_steps=first), self.compressor, uniform,
                                 config.min_compression_rate)
        self.accordion = None
        if config.accordion:
            self.accordion = Accordion(config.accordion_interval, config.accordion_threshold,
                                       config.gentle, uniform)
        momentum = self.compressor.momentum
        self.dgc = MomentumCorrection(momentum) if momentum else None
        self.rows = rows if self.compressor.joins_row_blocks and lgreco is None else None
        self._begun_step: int | None = None
        self.settings: dict[str, float] = {}
        self.residuals: dict[str, torch.Tensor] = {}
        self.memory: dict[str, torch.Tensor] = {}
        self.ledger = ByteLedger()
        self.nonfinite_buckets = 0

    # -- per-tensor decisions ------------------------------------------------------------------
    def setting_for(self, key: str, shape: torch.Size, step: int | None = None) -> float | None:
        """The setting this tensor is compressed with at ``step``, or None if it travels
        uncompressed: L-GreCo's plan, else Accordion's regime setting, else the uniform one;
        then the method's own ramp after the dense warm-up (top-k's density warm-up)."""
        setting = self.settings.get(key)
        if setting is None:
            setting = self.config.setting if self.accordion is None else \
                self.accordion.setting(key)
        if step is not None:
            setting = self.compressor.scheduled(setting, step - self.config.warmup_steps)
        if self.compressor.compresses(shape, setting, self.config.min_compression_rate):
            return setting
        return None

    def eligible(self, shape: torch.Size) -> bool:
        """Whether the uniform setting compresses a tensor of this shape: the layers Accordion,
        L-GreCo and momentum correction keep state for."""
        return self.compressor.compresses(shape, self.config.setting,
                                          self.config.min_compression_rate)

    def generator(self, key: str, step: int, device: torch.device,
                  shared: bool = False) -> torch.Generator:
        """RNG for one tensor in one step (QSGD's stochastic rounding): :func:`step_generator`
        of this rank, or with ``shared`` of rank -1, the same on every rank."""
        return step_generator(self.config.seed, -1 if shared else self.rank, step, key, device)

    # -- the reduction ------------------------------------------------------------------------
    def reduce(self, grads: list[torch.Tensor], keys: list[str], comm: Comm, step: int) -> None:
        """Replace every tensor in ``grads`` by its average over ranks (in place).

        grads: tensors (any shape, float dtype) that every rank passes in the same order, with
        the same keys and shapes. keys: stable names (parameter names) for per-tensor state.
        """
        if self._begun_step != step:
            self._begin_step(step, comm, grads[0].device)
        warmup = step < self.config.warmup_steps
        shapes = [g.shape if self.rows is None else self.rows.shapes[k]
                  for k, g in zip(keys, grads)]
        for k, g, shape in zip(keys, grads, shapes):
            self.ledger.record_dense(step, k, g.numel() * g.element_size())
            if not self.eligible(shape):
                continue
            if self.accordion is not None:
                self.accordion.observe(k, g)
            # L-GreCo measures every layer it may plan, also one that travels dense now (the
            # warm-up, or a setting too gentle to compress it): never observed, its candidates
            # would look free of error and the plan would compress it hardest (its raw gradient)
            if self.lgreco is not None and (warmup or self.setting_for(k, g.shape, step) is None) \
                    and bool(torch.isfinite(g).all()):
                self.lgreco.observe(k, g.detach().float(), step)
        if warmup:
            self._dense(grads, keys, comm, step, track=True)
            return
        slots = [_Slot(k, g, self.setting_for(k, shape, step), shape)
                 for k, g, shape in zip(keys, grads, shapes)]
        if all(s.setting is None for s in slots):
            self._dense(grads, keys, comm, step, track=True)
            return
        # One float per rank: any inf/NaN makes the sum non-finite (so can an overflow of
        # values near the fp32 limit, which then just takes the safe dense path).
        total = torch.stack([g.detach().sum(dtype=torch.float32) for g in grads]).sum()
        nonfinite = (~torch.isfinite(total)).to(torch.float32).reshape(1)
        if self.rows is not None:  # the node's ranks take the fallback together
            self.rows.comm.all_reduce_sum(nonfinite).wait()
        dense = [s for s in slots if s.setting is None]
        comp = [s for s in slots if s.setting is not None]
        inputs = [self._compensated(s) for s in comp]
        ok = self._reduce_compressed(dense, comp, inputs, nonfinite, comm, step)
        if not ok:
            self.nonfinite_buckets += 1
            self._dense(grads, keys, comm, step)
        elif self.lgreco is not None:  # statistics only from finite, successful steps
            for s, x in zip(comp, inputs):
                self.lgreco.observe(s.key, x, step)

    def _begin_step(self, step: int, comm: Comm, device: torch.device) -> None:
        """Once per step, at its first bucket (the same bucket on every rank): Accordion's
        regime decision and L-GreCo's measurement when due, and a new plan when either
        changed the picture. Each costs one small all-reduce of statistics."""
        self._begun_step = step
        mean = lambda t: self._mean(t.to(device), comm, step)  # noqa: E731
        changed = False
        if self.accordion is not None and self.accordion.due(step):
            changed = self.accordion.decide(step, mean)
        if self.lgreco is None or step < self.config.warmup_steps:
            return
        if self.lgreco.plan_steps_due(step) and self.lgreco.layers:
            budgets = (self.lgreco.uniform,) if self.accordion is None else \
                (self.lgreco.uniform, self.accordion.gentle)
            self.lgreco.measure(mean, budgets)
            changed = True
        if changed and self.lgreco.table:
            baseline = None if self.accordion is None else \
                self.accordion.baseline(self.lgreco.table)
            self.settings = self.lgreco.choose(step, baseline)

    def _mean(self, t: torch.Tensor, comm: Comm, step: int) -> torch.Tensor:
        """Average a small statistics tensor over ranks (L-GreCo's error table, Accordion's
        gradient norms), and over the node's ranks with :class:`RowBlocks` (each holds other
        rows of the same tensors: all must decide alike)."""
        comm.all_reduce_sum(t).wait()
        self.ledger.record(step, CONTROL_KEY, t.numel() * t.element_size(), "allreduce")
        if self.rows is None:
            return (t / comm.world_size).cpu()
        self.rows.comm.all_reduce_sum(t).wait()
        return (t / (comm.world_size * self.rows.comm.world_size)).cpu()

    def _compensated(self, slot: _Slot) -> torch.Tensor:
        x = slot.grad.detach().to(torch.float32, copy=True)
        residual = self.residuals.get(slot.key) if self.config.error_feedback else None
        if self.dgc is not None:
            if residual is None:
                residual = torch.zeros_like(x)
            return self.dgc.accumulate(slot.key, x, residual.to(x.device))
        if residual is not None:
            x += residual.to(x.device)
        return x

    def _dense_fused(self, dense: list[_Slot], extra: list[torch.Tensor], flag: torch.Tensor):
        parts = [s.grad.detach().reshape(-1).float() for s in dense]
        parts += [e.reshape(-1) for e in extra]
        parts.append(flag)
        return torch.cat(parts)

    def _write_dense(self, dense: list[_Slot], flat: torch.Tensor, world: int, step: int) -> int:
        offset = 0
        for s in dense:
            n = s.grad.numel()
            s.grad.copy_(flat[offset : offset + n].view_as(s.grad) / world)
            self._track_dense(s.key, s.grad)
            self.ledger.record(step, s.key, FP32_BYTES * n, "allreduce")
            offset += n
        return offset

    def _track_dense(self, key: str, avg: torch.Tensor) -> None:
        """Momentum correction follows the optimizer's buffer through a dense step."""
        if self.dgc is not None and self.eligible(avg.shape):
            self.dgc.dense(key, avg)

    def _dense(self, grads: list[torch.Tensor], keys: list[str], comm: Comm, step: int,
               track: bool = False) -> None:
        """Plain averaging all-reduce of the tensors in their own dtype, fused into one buffer
        (divided before the sum, as DDP does, so fp16 sums do not overflow). ``track``: the
        optimizer will apply this average (not the inf/NaN fallback, which AMP skips)."""
        flat = torch.cat([g.detach().reshape(-1) for g in grads])
        flat /= comm.world_size
        comm.all_reduce_sum(flat).wait()
        offset = 0
        for k, g in zip(keys, grads):
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            if track:
                self._track_dense(k, g)
            self.ledger.record(step, k, flat.element_size() * n, "allreduce")
            offset += n

    def _reduce_compressed(self, dense: list[_Slot], comp: list[_Slot],
                           inputs: list[torch.Tensor], nonfinite: torch.Tensor, comm: Comm,
                           step: int) -> bool:
        """The method's collectives (its first round fused with the dense tensors), then error
        feedback, momentum correction and the ledger; False where a rank saw inf/NaN."""
        exchange = _Exchange(self, dense, nonfinite, comm, step)
        items = [Item(s.key, x, s.setting, s.shape) for s, x in zip(comp, inputs)]
        results = self.compressor.reduce(items, exchange, self.memory)
        if results is None:
            return False
        for s, x, res in zip(comp, inputs, results):
            avg = res.average
            if res.own is not None:  # kept only with error feedback
                self.residuals[s.key] = x - res.own
                if self.dgc is not None:
                    self.dgc.mask(s.key, res.own != 0)
                    avg = self.dgc.deliver(s.key, avg)
            s.grad.copy_(avg)
            self.ledger.record(step, s.key, res.nbytes, res.collective)
        self.ledger.record(step, CONTROL_KEY, FP32_BYTES, "allreduce")
        return True

    def reduce_parameters(self, params: dict[str, torch.Tensor], names: list[str], comm: Comm,
                          step: int) -> None:
        """Average the ``.grad`` of ``params[name]`` for every name, in place: the entry point
        of integrations that own no gradient buckets (DeepSpeed, Horovod). A parameter without
        a gradient on this rank contributes zeros, so every rank reduces the same tensors in
        the same order (DeepSpeed's own all-reduce does the same)."""
        grads = []
        for name in names:
            p = params[name]
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            elif p.grad.is_sparse:
                raise ValueError(f"parameter {name!r} has a sparse gradient; distcomp "
                                 "compresses dense gradients only")
            grads.append(p.grad)
        self.reduce(grads, names, comm, step)

    def state_bytes(self) -> int:
        """Bytes of the per-tensor state this rank keeps between steps: error-feedback
        residuals, the method's memory (PowerSGD's Qs) and momentum correction's buffers."""
        tensors = [*self.residuals.values(), *self.memory.values()]
        if self.dgc is not None:
            tensors += [*self.dgc.velocity.values(), *self.dgc.buffer.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "settings": dict(self.settings),
            "residuals": {k: v.clone() for k, v in self.residuals.items()},
            "memory": {k: v.clone() for k, v in self.memory.items()},
            "ledger": self.ledger.state_dict(),
            "nonfinite_buckets": self.nonfinite_buckets,
            "lgreco": None if self.lgreco is None else self.lgreco.state_dict(),
            "accordion": None if self.accordion is None else self.accordion.state_dict(),
            "dgc": None if self.dgc is None else self.dgc.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = CompressionConfig.from_dict(state["config"]).to_dict()
        mine = self.config.to_dict()
        differ = [k for k in mine if k != "timeout_s" and saved.get(k) != mine[k]]
        if differ:
            raise ValueError(
                "checkpoint was made with other compression settings: "
                + ", ".join(f"{k}={saved.get(k)!r} (now {mine[k]!r})" for k in differ)
            )
        self.settings = dict(state["settings"])
        self.residuals = {k: v.clone() for k, v in state["residuals"].items()}
        self.memory = {k: v.clone() for k, v in state["memory"].items()}
        self.ledger.load_state_dict(state["ledger"])
        self.nonfinite_buckets = int(state["nonfinite_buckets"])
        if (state.get("lgreco") is None) != (self.lgreco is None):
            raise ValueError("checkpoint and reducer disagree on adaptive (L-GreCo) planning")
        if self.lgreco is not None:
            self.lgreco.load_state_dict(state["lgreco"])
        for name in ("accordion", "dgc"):  # present exactly when the (equal) config says so
            if getattr(self, name) is not None:
                getattr(self, name).load_state_dict(state[name])


class _Exchange:
    """The reducer's side of one bucket for :meth:`Compressor.reduce
    <distcomp.compression.compressor.Compressor.reduce>`: the first round fuses the dense
    tensors, the method's summable payloads and the non-finite flag into one all-reduce."""

    def __init__(self, reducer: CompressedReducer, dense: list[_Slot], flag: torch.Tensor,
                 comm: Comm, step: int):
        self.reducer, self.dense, self.flag, self.comm, self.step = \
            reducer, dense, flag, comm, step
        self.keep_own = reducer.config.error_feedback
        self.seed = reducer.config.seed
        self.rows = None if reducer.rows is None else reducer.rows.comm

    def first_round(self, summed: list[torch.Tensor], gathered: torch.Tensor | None
                    ) -> tuple[list[torch.Tensor], torch.Tensor | None] | None:
        r = self.reducer
        handle = self.comm.all_reduce_sum(r._dense_fused(self.dense, summed, self.flag))
        gather = None if gathered is None else self.comm.all_gather(gathered)
        fused = handle.wait()
        rows = None if gather is None else gather.wait()
        if fused[-1].item() > 0:
            return None
        offset = r._write_dense(self.dense, fused, self.comm.world_size, self.step)
        return split_like(fused[offset:], summed), rows

    def generator(self, key: str, shared: bool = False) -> torch.Generator:
        return self.reducer.generator(key, self.step, self.flag.device, shared=shared)
