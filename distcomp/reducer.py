"""Average a group of gradient tensors across ranks with compression and error feedback.

This is the choreography shared by every integration (DDP hook, DeepSpeed, Horovod): it takes
the tensors of one bucket, decides per tensor whether to compress, runs the collectives through a
:class:`~distcomp.comm.Comm` and writes the averages back in place. It is synchronous: callers run
it on one thread per process group so that every rank issues its collectives in the same order.

Per bucket, with W ranks:
  1. Tensors that compression would not shrink (biases, norms, tiny layers) are fused into one
     dense fp32 all-reduce, with one extra element: the count of ranks whose bucket holds a
     non-finite value. It rides along the first collective, so agreement costs no extra round.
  2. Compressed tensors get their error-feedback residual added, then
       linear (PowerSGD): P = M Q joins the dense all-reduce; orth(P); Q = M^T P all-reduced;
       gather (top-k, QSGD): encoded payloads are all-gathered alongside the dense all-reduce.
  3. If any rank saw inf/NaN, every rank discards the compressed results and all-reduces the raw
     bucket instead: AMP's GradScaler then sees the inf everywhere, and residuals and warm-start
     Qs stay untouched (a NaN must never enter error-feedback memory).
  4. Otherwise averages are written back and residuals updated: residual = input - C(input),
     where C is this rank's own compressed contribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distcomp.comm import Comm
from distcomp.compressor import FP32_BYTES, GatherCompressor
from distcomp.config import CompressionConfig
from distcomp.ledger import CONTROL_KEY, ByteLedger
from distcomp.powersgd import as_matrix, orthogonalize


@dataclass
class _Slot:
    key: str
    grad: torch.Tensor  # view into the caller's buffer; averages are written here
    setting: float | None  # None: travels uncompressed


class CompressedReducer:
    """Compression state of one process for a set of named tensors.

    Fields:
      config: the validated :class:`CompressionConfig`.
      compressor: the method's :class:`~distcomp.compressor.Compressor`.
      settings: per-key overrides of the uniform setting (L-GreCo writes its plan here).
      residuals: key -> fp32 error-feedback memory, same shape as the gradient.
      qs: key -> PowerSGD warm-start Q (m, r), identical on every rank.
      ledger: bytes contributed to collectives.
      nonfinite_buckets: buckets that fell back to a dense all-reduce because of inf/NaN.
    """

    def __init__(self, config: CompressionConfig, rank: int = 0):
        self.config = config
        self.compressor = config.compressor()
        self.rank = rank
        self.settings: dict[str, float] = {}
        self.residuals: dict[str, torch.Tensor] = {}
        self.qs: dict[str, torch.Tensor] = {}
        self.ledger = ByteLedger()
        self.nonfinite_buckets = 0
        self._generators: dict[str, torch.Generator] = {}

    # -- per-tensor decisions ------------------------------------------------------------------
    def setting_for(self, key: str, shape: torch.Size) -> float | None:
        """The setting this tensor is compressed with, or None if it travels uncompressed."""
        setting = self.settings.get(key, self.config.setting)
        if self.compressor.compresses(shape, setting, self.config.min_compression_rate):
            return setting
        return None

    def generator(self, device: torch.device) -> torch.Generator:
        """Per-device RNG for stochastic rounding; rank-dependent, checkpointed."""
        name = str(device)
        if name not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.config.seed * 7919 + self.rank + 1)
            self._generators[name] = gen
        return self._generators[name]

    # -- the reduction ------------------------------------------------------------------------
    def reduce(self, grads: list[torch.Tensor], keys: list[str], comm: Comm, step: int) -> None:
        """Replace every tensor in ``grads`` by its average over ranks (in place).

        grads: tensors (any shape, float dtype) that every rank passes in the same order, with
        the same keys and shapes. keys: stable names (parameter names) for per-tensor state.
        """
        if step < self.config.warmup_steps:
            self._dense(grads, keys, comm, step)
            return
        slots = [_Slot(k, g, self.setting_for(k, g.shape)) for k, g in zip(keys, grads)]
        if all(s.setting is None for s in slots):
            self._dense(grads, keys, comm, step)
            return
        # One float per rank: any inf/NaN makes the sum non-finite (so can an overflow of
        # values near the fp32 limit, which then just takes the safe dense path).
        total = torch.stack([g.detach().sum(dtype=torch.float32) for g in grads]).sum()
        nonfinite = (~torch.isfinite(total)).to(torch.float32).reshape(1)
        dense = [s for s in slots if s.setting is None]
        comp = [s for s in slots if s.setting is not None]
        inputs = [self._compensated(s) for s in comp]
        if isinstance(self.compressor, GatherCompressor):
            ok = self._reduce_gather(dense, comp, inputs, nonfinite, comm, step)
        else:
            ok = self._reduce_lowrank(dense, comp, inputs, nonfinite, comm, step)
        if not ok:
            self.nonfinite_buckets += 1
            self._dense(grads, keys, comm, step)

    def _compensated(self, slot: _Slot) -> torch.Tensor:
        x = slot.grad.detach().to(torch.float32, copy=True)
        if self.config.error_feedback and slot.key in self.residuals:
            x += self.residuals[slot.key]
        return x

    def _set_residual(self, slot: _Slot, residual: torch.Tensor) -> None:
        if self.config.error_feedback:
            self.residuals[slot.key] = residual

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
            self.ledger.record(step, s.key, FP32_BYTES * n, "allreduce")
            offset += n
        return offset

    def _dense(self, grads: list[torch.Tensor], keys: list[str], comm: Comm, step: int) -> None:
        """Plain averaging all-reduce of the tensors in their own dtype, fused into one buffer."""
        flat = torch.cat([g.detach().reshape(-1) for g in grads])
        comm.all_reduce_sum(flat).wait()
        flat /= comm.world_size
        offset = 0
        for k, g in zip(keys, grads):
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            self.ledger.record(step, k, flat.element_size() * n, "allreduce")
            offset += n

    def _reduce_lowrank(self, dense, comp, inputs, nonfinite, comm: Comm, step: int) -> bool:
        world = comm.world_size
        ms = [as_matrix(x) for x in inputs]
        qs = []
        for s, m in zip(comp, ms):
            r = self.compressor.effective_rank(s.grad.shape, s.setting)
            q = self.qs.get(s.key)
            if q is None or q.shape != (m.shape[1], r) or q.device != m.device:
                q = self.compressor.initial_q(s.grad.shape, r, self.config.seed, s.key, m.device)
            qs.append(q)
        ps = [m @ q for m, q in zip(ms, qs)]
        fused = comm.all_reduce_sum(self._dense_fused(dense, ps, nonfinite)).wait()
        if fused[-1].item() > 0:
            return False
        offset = self._write_dense(dense, fused, world, step)
        ps_sum = []
        for p in ps:
            ps_sum.append(orthogonalize(fused[offset : offset + p.numel()].view_as(p)))
            offset += p.numel()
        q_local = [m.t() @ p for m, p in zip(ms, ps_sum)]
        q_flat = comm.all_reduce_sum(torch.cat([q.reshape(-1) for q in q_local])).wait()
        offset = 0
        for s, m, p, ql in zip(comp, ms, ps_sum, q_local):
            q_sum = q_flat[offset : offset + ql.numel()].view_as(ql)
            offset += ql.numel()
            s.grad.copy_((p @ q_sum.t()).view_as(s.grad) / world)
            self._set_residual(s, (m - p @ ql.t()).view_as(s.grad))
            self.qs[s.key] = q_sum.clone()
            self.ledger.record(step, s.key, FP32_BYTES * (p.numel() + ql.numel()), "allreduce")
        self.ledger.record(step, CONTROL_KEY, FP32_BYTES, "allreduce")
        return True

    def _reduce_gather(self, dense, comp, inputs, nonfinite, comm: Comm, step: int) -> bool:
        world = comm.world_size
        gen = self.generator(inputs[0].device)
        payloads = [
            self.compressor.encode(x.reshape(-1), s.setting, gen) for s, x in zip(comp, inputs)
        ]
        dense_handle = comm.all_reduce_sum(self._dense_fused(dense, [], nonfinite))
        gather_handle = comm.all_gather(torch.cat(payloads))
        fused = dense_handle.wait()
        gathered = gather_handle.wait()
        if fused[-1].item() > 0:
            return False
        self._write_dense(dense, fused, world, step)
        offset = 0
        for s, x, own in zip(comp, inputs, payloads):
            n, nb = x.numel(), own.numel()
            rows = gathered[:, offset : offset + nb]
            offset += nb
            total = self.compressor.decode_sum(rows, n, s.setting)
            s.grad.copy_(total.view_as(s.grad) / world)
            approx = self.compressor.decode(own, n, s.setting)
            self._set_residual(s, x - approx.view_as(x))
            self.ledger.record(step, s.key, nb, "allgather")
        self.ledger.record(step, CONTROL_KEY, FP32_BYTES, "allreduce")
        return True

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "settings": dict(self.settings),
            "residuals": {k: v.clone() for k, v in self.residuals.items()},
            "qs": {k: v.clone() for k, v in self.qs.items()},
            "generators": {k: g.get_state() for k, g in self._generators.items()},
            "ledger": self.ledger.state_dict(),
            "nonfinite_buckets": self.nonfinite_buckets,
        }

    def load_state_dict(self, state: dict) -> None:
        saved = CompressionConfig.from_dict(state["config"])
        if saved.method != self.config.method:
            raise ValueError(
                f"checkpoint was made with method {saved.method!r}, "
                f"this reducer uses {self.config.method!r}"
            )
        self.settings = dict(state["settings"])
        self.residuals = {k: v.clone() for k, v in state["residuals"].items()}
        self.qs = {k: v.clone() for k, v in state["qs"].items()}
        self._generators = {}
        for name, gen_state in state["generators"].items():
            gen = torch.Generator(device=name)
            gen.set_state(gen_state)
            self._generators[name] = gen
        self.ledger.load_state_dict(state["ledger"])
        self.nonfinite_buckets = int(state["nonfinite_buckets"])
