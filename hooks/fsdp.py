"""Compressed cross-node gradient averaging for sharded models (FSDP2, HSDP layout).

One call after ``fully_shard``, with each node's ranks as the shard mesh::

    mesh = init_device_mesh("cuda", (nodes, ranks_per_node), mesh_dim_names=("node", "shard"))
    for block in model.blocks:
        fully_shard(block, mesh=mesh["shard"])
    fully_shard(model, mesh=mesh["shard"])
    state = FSDPCompression(model, "powersgd", rank=4)
    ...
    state.close()

Why this layout: FSDP2's reduce-scatter then runs inside each node, dense, over the fast link,
and leaves every rank with its node's mean of one shard of every gradient; nodes hold the same
shards, so the average over nodes is one all-reduce per shard among the ranks with the same
place in their node (the *peers*). That all-reduce is what native HSDP sends dense over the
slow link; here it is replaced through ``FSDPModule.set_all_reduce_hook``, which runs on the
reduce-scatter output when the mesh is 1-D, by distcomp's reducer: each parameter's shard is a
row block (rows, *rest) of its weight, compressed like any gradient (top-k, QSGD, L-GreCo plans
per shard), with error feedback and schedules kept per shard, so a rank's residuals are about
1/ranks_per_node of the model's. PowerSGD runs its power iteration on the whole weight, each
rank computing its rows' part (``joins_row_blocks``): a node sends one pair of factors per
weight, as DDP's hook does, not one per shard.
Nothing else of FSDP2 changes: all-gathers, resharding, mixed precision, activation
checkpointing and the optimizer see ordinary sharded gradients.

A model sharded over the whole world (one-level FSDP2, no replicas) has no average left to
compress: there the same call replaces each module's reduce-scatter (``set_custom_reduce_scatter``)
by :class:`~distcomp.compression.reduce_scatter.CompressedReduceScatter`, exact inside a node
and compressed across nodes, with any method whose payloads are byte strings (QSGD, fp8,
EF-SignSGD, top-k without momentum correction) and one setting for every chunk.
"""

from __future__ import annotations

import io
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from distcomp.comm import TorchComm, check_same
from distcomp.compression.hierarchical import node_groups
from distcomp.compression.lgreco import LGreCoConfig
from distcomp.compression.options import parse_options, settings_of, trainable
from distcomp.compression.reduce_scatter import (
    RESIDUALS,
    CompressedReduceScatter,
    Residual,
    reduce_scatter_config,
)
from distcomp.compression.reducer import CompressedReducer, RowBlocks
from distcomp.compression.sharded import (
    ShardSlot,
    check_placement,
    layout,
    managed_parameters,
    views,
)
from distcomp.compression.topology import Topology, check_topology, check_topology_options, resolve
from distcomp.compression.weight_gather import QuantizedAllGather, check_custom_all_gather
from distcomp.hooks.by_name import method_options
from distcomp.ledger import ByteLedger

_FSDP_METHODS = ("set_all_reduce_hook", "set_reduce_scatter_unused_params",
                 "set_requires_gradient_sync")
ALL_GATHERS = ("dense", "int8")


def fsdp_module_class() -> type:
    """torch's ``FSDPModule``; RuntimeError naming what is missing on an older torch."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        raise RuntimeError(f"FSDPCompression needs FSDP2 (torch.distributed.fsdp.FSDPModule); "
                           f"torch {torch.__version__} has none: use torch >= 2.6") from None
    missing = [m for m in _FSDP_METHODS if not hasattr(FSDPModule, m)]
    if missing:
        raise RuntimeError(f"torch {torch.__version__}'s FSDPModule lacks {', '.join(missing)}: "
                           "use torch >= 2.6")
    return FSDPModule


class FSDPCompression:
    """Compressed averaging across nodes for a model sharded with ``fully_shard`` inside each
    node. Construct it on every rank after the last ``fully_shard`` and before the first
    backward; settings are validated before any collective, then compared across ranks (the
    same ValueError everywhere where they differ).

    Args:
      model: the root module (an ``FSDPModule``, or a module holding ``FSDPModule`` s); every
        sharded module must use the same 1-D mesh of one node's ranks.
      method, **options: a name :func:`distcomp.hooks.attach` takes (a method, or
        ``"lgreco-"`` + a method) and the options of
        :class:`distcomp.hooks.ddp.CompressionState` (``rank``, ``density``, ``bits``,
        ``warmup_steps``, ``error_feedback``, ``timeout_s``, ...).
      optimizer: what a method reads from it (top-k's momentum from ``SGD(momentum=m)``), as
        :func:`distcomp.hooks.attach` does; explicit options win.
      lgreco: L-GreCo planning per shard (an ``LGreCoConfig`` or a dict of its fields).
      ranks_per_node: checked against the mesh when given (the mesh size is the truth);
        for a model sharded over the whole world, the nodes the reduce-scatter's exact first
        hop stays inside (default: the launcher's, e.g. torchrun's ``LOCAL_WORLD_SIZE``; 1:
        compress every chunk).
      residual: for a model sharded over the whole world, error feedback's memory:
        ``"fp32"`` (the default), ``"float8"`` (a quarter of the bytes) or ``"none"``.
      all_gather: the weights' all-gathers, ``"dense"`` (FSDP2's own, the default) or
        ``"int8"`` (:class:`~distcomp.compression.weight_gather.QuantizedAllGather`: 8-bit
        codes, a scale per 256 elements, about a quarter of fp32's bytes; the master shards
        stay fp32). Worth it where the all-gathers cross the slow link (a model sharded over
        the whole world); measured in BENCHMARKS.md.

    Fields:
      config: the validated configuration.
      flat: whether the model is sharded over the whole world (compressed reduce-scatter).
      reducer: the cross-node :class:`~distcomp.compression.reducer.CompressedReducer` (None
        when flat); its state covers this rank's shards only and its ledger counts slow-link
        bytes.
      scatter: the :class:`~distcomp.compression.reduce_scatter.CompressedReduceScatter`
        (None unless flat).
      topology: nodes x ranks per node, from the mesh.
      step: gradient reductions done (a backward under ``set_requires_gradient_sync(False)``
        reduces nothing and does not count).
      fast_ledger: bytes this rank handed to FSDP2's reduce-scatters inside the node.
      gathers: the quantized all-gather of each sharded module (empty when dense).

    It holds a process group: :meth:`close` it before ``destroy_process_group()``.
    """

    def __init__(self, model: nn.Module, method: str = "powersgd", *, optimizer=None,
                 lgreco: LGreCoConfig | dict | None = None, ranks_per_node: int | None = None,
                 residual: Residual | None = None, all_gather: str = "dense", **options):
        if lgreco is not None:
            options["lgreco"] = lgreco
        method, options = method_options(method, optimizer, **options)
        lgreco = options.pop("lgreco", None)
        explicit_accordion = options.get("accordion")
        if residual is not None and residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {', '.join(RESIDUALS)}, got {residual!r}")
        if all_gather not in ALL_GATHERS:
            raise ValueError(f"all_gather must be one of {', '.join(ALL_GATHERS)}, got "
                             f"{all_gather!r}")
        if all_gather != "dense":
            check_custom_all_gather()
        self.config, lgreco = parse_options(method, options, lgreco)
        check_topology_options(None, ranks_per_node, None)
        fsdp = fsdp_module_class()
        if not dist.is_initialized():
            raise RuntimeError("FSDPCompression needs torch.distributed initialized")
        self._root = model
        names = {p: n for n, p in model.named_parameters()}
        modules = [m for m in model.modules() if isinstance(m, fsdp)]
        if not modules:
            raise ValueError("the model holds no FSDPModule: call fully_shard(...) on it first")
        self._groups, mesh, gathered = [], None, []
        for m in modules:
            managed = [p for _, p in managed_parameters(m, lambda c: isinstance(c, fsdp))
                       if hasattr(p, "device_mesh")]
            params = [p for p in managed if p.requires_grad]
            for p in params:
                mesh = check_placement(names[p], p, mesh)
            self._groups.append((m, [(names[p], p.shape) for p in params]))
            gathered.append([(names[p], p.shape) for p in managed])  # frozen ones included
        shards = mesh.size()
        self._rank, world = dist.get_rank(), dist.get_world_size()
        self.flat = shards == world
        if self.flat:  # every rank a shard: the reduce-scatter itself is compressed
            self.topology, local_rank = resolve(self._rank, world, ranks_per_node)
            self.config = reduce_scatter_config(self.config, lgreco, explicit_accordion)
        else:
            self.topology, local_rank = Topology(self._rank, world, shards), None
            if ranks_per_node is not None and ranks_per_node != shards:
                raise ValueError(f"ranks_per_node={ranks_per_node}, but the model is sharded "
                                 f"over {shards} ranks: shard each node's ranks (mesh['shard'])")
            if residual is not None:
                raise ValueError("residual= is for a model sharded over the whole world (the "
                                 "compressed reduce-scatter); here the residual is fp32 per "
                                 "shard")
        self._settings = settings_of(self.config, lgreco, trainable(model))
        self._settings.update(flat=self.flat, residual=residual, all_gather=all_gather)
        self.reducer: CompressedReducer | None = None  # made with the groups
        self.scatter: CompressedReduceScatter | None = None
        self.fast_ledger = ByteLedger()
        self._step = 0
        self._reduced = self._closed = False
        self._peer_groups: list = []
        self._peers = None
        world_comm = TorchComm(None, self.config.timeout_s)
        check_same(world_comm, "FSDPCompression", self._settings)
        mesh_ranks = dist.get_process_group_ranks(mesh.get_group())
        t = self.topology
        check_topology(world_comm, t, local_rank if self.flat else mesh_ranks.index(self._rank))
        if t.nodes < 2:
            raise ValueError(f"all {world} ranks are on one node: nothing crosses a slow link "
                             "to compress; with several nodes shard over each node's ranks "
                             "(mesh['shard']), or pass ranks_per_node=1 to compress every "
                             "chunk of a reduce-scatter over the whole world")
        if self.flat:
            self._bind_flat(residual or ("fp32" if self.config.error_feedback else "none"))
        elif mesh_ranks != t.node_ranks(t.node):
            raise ValueError(f"rank {self._rank} shards with ranks {mesh_ranks}, not its node "
                             f"{t.node_ranks(t.node)}")
        else:
            self._bind(model, lgreco)
        self.gathers = [QuantizedAllGather(self.config.timeout_s,
                                           splits=[s.padded for s in layout(g, shards, 0)])
                        for g in gathered] if all_gather == "int8" else []
        for (m, _), gather in zip(self._groups, self.gathers):
            m.set_custom_all_gather(gather)

    def _bind(self, model: nn.Module, lgreco: LGreCoConfig | None) -> None:
        """Node and peer groups (collective: every rank creates every group), the reducer
        (PowerSGD's factors computed with the node's other shards of each weight), the same
        starting parameters on every node, then the hooks."""
        t, timeout = self.topology, self.config.timeout_s
        node, group, self._peer_groups = node_groups(t)
        self._peers = TorchComm(group, timeout)
        shapes = {k: torch.Size(shape) for _, params in self._groups for k, shape in params}
        self.reducer = CompressedReducer(self.config, rank=self._rank, lgreco=lgreco,
                                         rows=RowBlocks(TorchComm(node, timeout), shapes))
        with torch.no_grad():  # like DDP: every replica starts from node 0's parameters
            for p in model.parameters():
                shard = p.to_local() if hasattr(p, "to_local") else None
                if shard is not None and shard.numel():
                    dist.broadcast(shard, src=t.peer_ranks(t.local_rank)[0], group=group)
        for m, params in self._groups:
            m.set_reduce_scatter_unused_params(True, recurse=False)  # a stable layout
            slots = layout(params, t.ranks_per_node, t.local_rank)
            m.set_all_reduce_hook(partial(sharded_all_reduce_hook, self, slots))
        self._forward_hook = self._root.register_forward_pre_hook(lambda *_: self._end_step())

    def _bind_flat(self, residual: str) -> None:
        """Node and peer groups (collective: every rank creates every group), then each sharded
        module's reduce-scatter replaced by the compressed one."""
        t, timeout = self.topology, self.config.timeout_s
        node, peer, self._peer_groups = node_groups(t)
        self._peers = TorchComm(peer, timeout)
        self.scatter = CompressedReduceScatter(
            self.config.compressor(), self.config.setting, self._peers,
            TorchComm(node, timeout) if t.ranks_per_node > 1 else None,
            warmup_steps=self.config.warmup_steps, residual=residual, seed=self.config.seed)
        self.fast_ledger = self.scatter.fast_ledger
        for i, (m, _) in enumerate(self._groups):
            m.set_reduce_scatter_unused_params(True, recurse=False)
            m.set_custom_reduce_scatter(_CompressedReduceScatterComm(self, f"module{i}"))
        self._forward_hook = self._root.register_forward_pre_hook(lambda *_: self._end_step())

    @property
    def step(self) -> int:
        """Steps whose gradients were reduced (the one in progress included once it reduced)."""
        return self._step + self._reduced

    def _end_step(self) -> None:
        """The next forward begins a new step if this one reduced anything."""
        if self._reduced:
            self._step += 1
            self._reduced = False

    def close(self) -> None:
        """Destroy the peer groups; the installed hooks then refuse to run (the replicas would
        drift apart silently otherwise). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._forward_hook.remove()
        for gather in self.gathers:
            gather.closed = True
        if dist.is_initialized():
            for g in self._peer_groups:
                dist.destroy_process_group(g)
        self._peer_groups, self._peers = [], None

    def __enter__(self) -> FSDPCompression:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def _engine(self) -> CompressedReducer | CompressedReduceScatter:
        """What holds the slow link's state and ledger: the scatter when flat, else the
        reducer."""
        return self.scatter if self.flat else self.reducer

    @property
    def ledger(self) -> ByteLedger:
        """The slow link's ledger: what crossed between nodes, against native HSDP's (or
        FSDP2's reduce-scatter's) dense bytes."""
        return self._engine.ledger

    def compression_stats(self, per_layer: bool = False) -> dict:
        """Bytes per link so far: the slow link (the compressed cross-node averages, sent
        bytes against what native HSDP's dense all-reduce would send) and ``"fast_link"``
        (FSDP2's reduce-scatters), plus ``"state_bytes"``: the compression state this rank
        holds (error feedback, method memory, momentum correction); with ``all_gather="int8"``
        also ``"all_gather"``: the weights' bytes sent against FSDP2's dense all-gathers."""
        out = self.ledger.summary(per_key=per_layer)
        out["fast_link"] = self.fast_ledger.summary(per_key=per_layer)
        out["state_bytes"] = self._engine.state_bytes()
        if self.gathers:
            sums = [g.summary() for g in self.gathers]
            sent, dense = (sum(s[k] for s in sums) for k in ("sent_bytes", "dense_bytes"))
            out["all_gather"] = {"sent_bytes": sent, "dense_bytes": dense,
                                 "ratio": sent / dense if dense else 1.0}
        return out

    def plan(self) -> list[dict]:
        """L-GreCo's latest per-shard plan on this rank (empty without L-GreCo)."""
        if self.reducer is None or self.reducer.lgreco is None:
            return []
        return list(self.reducer.lgreco.rows)

    def state_dict(self) -> dict:
        """This rank's state under a key of its own, ``{"rank<r>": bytes}`` (plus the step):
        ranks hold different shards' residuals, so ``torch.distributed.checkpoint`` keeps each
        rank's entry (it would keep one copy of a key every rank shares). Put the object itself
        in the dict given to ``dcp.save``/``dcp.load``, or ``torch.save`` the result per rank."""
        self._end_step()
        blob = io.BytesIO()
        torch.save({"engine": self._engine.state_dict(), "topology": self._topology_key(),
                    "fast_ledger": self.fast_ledger.state_dict()}, blob)
        return {"step": self.step, f"rank{self._rank}": blob.getvalue()}

    def load_state_dict(self, state: dict) -> None:
        mine = state.get(f"rank{self._rank}")
        if mine is None:
            raise ValueError(f"the checkpoint holds no compression state for rank {self._rank}")
        saved = torch.load(io.BytesIO(mine), weights_only=False)
        if saved["topology"] != self._topology_key():
            raise ValueError(f"checkpoint was saved with topology {saved['topology']}, this run "
                             f"has {self._topology_key()}: residuals are sharded by it")
        self._engine.load_state_dict(saved["engine"])
        self.fast_ledger.load_state_dict(saved["fast_ledger"])
        self._step, self._reduced = int(state["step"]), False

    def _topology_key(self) -> dict:
        t = self.topology
        return {"nodes": t.nodes, "ranks_per_node": t.ranks_per_node, "rank": t.rank,
                "flat": self.flat}

    def __repr__(self) -> str:
        return (f"FSDPCompression(method={self.config.method!r}, "
                f"setting={self.config.setting}, {self.topology.nodes} nodes x "
                f"{self.topology.ranks_per_node}, step={self.step}"
                f"{', closed' if self._closed else ''})")


def sharded_all_reduce_hook(state: FSDPCompression, slots: list[ShardSlot],
                            reduce_output: torch.Tensor) -> None:
    """FSDP2's all-reduce hook for one sharded module: ``reduce_output`` (flat, this rank's
    node-mean shards of the module's gradients) becomes the mean over all nodes, in place,
    through the cross-node reducer. Runs where FSDP2 calls it, synchronously: every peer
    reaches the modules in the same backward order."""
    if state._closed:
        raise RuntimeError("FSDPCompression is closed: the model's gradients are no longer "
                           "averaged across nodes; build a new one")
    if not slots:
        return
    expected = sum(s.padded for s in slots)
    if reduce_output.numel() != expected:
        raise RuntimeError(
            f"FSDP2 reduced {reduce_output.numel()} elements where this module's parameters "
            f"make {expected}: parameters were added, frozen or laid out unlike FSDP2's order "
            f"({[s.key for s in slots]})")
    step = state._step
    state._reduced = True
    grads = views(reduce_output, slots)
    keys = [s.key for s in slots]
    state.reducer.reduce(grads, keys, state._peers, step)
    size = reduce_output.element_size() * state.topology.ranks_per_node
    for s in slots:
        state.fast_ledger.record_dense(step, s.key, s.padded * size)
        state.fast_ledger.record(step, s.key, s.padded * size, "reduce_scatter")


class _CompressedReduceScatterComm:
    """What FSDP2 calls in place of its reduce-scatter for one sharded module (its
    ``set_custom_reduce_scatter`` object): the flat gradient buffer, one padded chunk per rank,
    goes through :class:`~distcomp.compression.reduce_scatter.CompressedReduceScatter`."""

    def __init__(self, state: FSDPCompression, key: str):
        self.state, self.key = state, key

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group, op,
                 async_op: bool = False) -> None:
        state = self.state
        if state._closed:
            raise RuntimeError("FSDPCompression is closed: the model's gradients are no longer "
                               "reduced; build a new one")
        if op not in (dist.ReduceOp.AVG, dist.ReduceOp.SUM):
            raise RuntimeError(f"FSDP2 asked for a reduce-scatter with {op}; the compressed one "
                               "sums or averages (no set_gradient_divide_factor)")
        state._reduced = True
        state.scatter.reduce_scatter(output_tensor, input_tensor, self.key, state._step)
        if op == dist.ReduceOp.AVG:
            output_tensor.div_(group.size())

