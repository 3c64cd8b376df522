"""One benchmark arm, parsed once from its name: what it trains with, and how it attaches to a
DDP model. The network benchmark, the soak and the accuracy runs all read arms here.

    allreduce        plain DDP, the anchor every ratio is taken to
    local            no communication at all: the compute-only bound
    local_node       DDP's average inside each host only (the floor of CO2 across hosts)
    torch_fp16       torch's ``fp16_compress_hook``
    torch_powersgd   torch's ``powerSGD_hook`` (one DDP bucket: :meth:`Arm.bucket_cap_mb`)
    co2, diloco, co2_qsgd, co2_bf16, co2_bf16_flat          local updating; ``@TAU``
    [lgreco_]METHOD[_fixed][_flat][_layersum|_relative]     ours; ``@SETTING`` of its knob
    fsdp, hsdp, hsdp_[lgreco_]METHOD..., fsdp_METHOD...[_ag8]   FSDP2 (:mod:`benchmarks.sharded`)

METHOD is any registered method (:func:`distcomp.method_names`), so a new method has every
form at once: ``lgreco_`` plans its settings per layer (L-GreCo); ``_fixed`` turns the
Accordion-style schedule off and takes torch's dense warm-up, the arm to set beside
``torch_powersgd``; ``_flat`` keeps the flat reduction where ranks share a host (the default
compresses only between hosts); ``_layersum`` and ``_relative`` are L-GreCo's other error
measures. ``topk@0.003`` runs top-k at density 0.003, ``co2_bf16@2`` CO2 at tau 2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from benchmarks.sharded import PREFIXES, Sharding, shard
from distcomp import CompressionConfig, method_class, method_names
from distcomp.compression.methods.powersgd import PowerSGDOptions
from distcomp.hooks.by_name import ADAPTIVE as ADAPTIVE_NAME

Kind = Literal["allreduce", "local", "local_node", "torch", "ours", "co2", "sharded"]
BUILTIN: dict[str, Kind] = {"allreduce": "allreduce", "local": "local",
                            "local_node": "local_node", "torch_fp16": "torch",
                            "torch_powersgd": "torch"}
# local updating: the CO2 options of each arm (co2_qsgd: the pseudo-gradient as 8-bit QSGD with
# error feedback from the first round; co2_bf16: as bf16; _flat: the outer round over every
# rank where ranks share a host, where the default shares it inside the host)
CO2_ARMS: dict[str, dict] = {
    "co2": {"overlap": True},
    "diloco": {"overlap": False},
    "co2_qsgd": {"overlap": True, "compression": {"method": "qsgd", "bits": 8,
                                                  "warmup_steps": 0, "accordion": False}},
    "co2_bf16": {"overlap": True, "wire_dtype": "bfloat16"},
    "co2_bf16_flat": {"overlap": True, "wire_dtype": "bfloat16", "hierarchical": False},
}
ADAPTIVE = "lgreco_"
SUFFIXES = ("_fixed", "_flat")
MEASURES = {"_layersum": "layer_sum", "_relative": "relative"}
GATHER8 = "_ag8"  # a sharded arm's weights all-gathered as 8-bit codes (all_gather="int8")


@dataclass
class RunSettings:
    """What every arm of one run shares.

    timeout_s: seconds any collective may take.
    knobs: method options from the command line (``--rank 4``); each arm takes its method's.
    dense_warmup: our hooks' and torch's dense warm-up steps (None: the library's).
    lgreco: L-GreCo options of the adaptive arms.
    tau, outer_momentum: CO2's round length and outer momentum (None: the library's).
    extra: hook options that override the arm's (a named variant of an arm).
    """

    timeout_s: float = 300.0
    knobs: dict = field(default_factory=dict)
    dense_warmup: int | None = None
    lgreco: dict = field(default_factory=dict)
    tau: int = 4
    outer_momentum: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Arm:
    """A parsed arm. ``text`` as given; ``name`` without the ``@SETTING``; ``method`` the
    registered method of ours (None otherwise); ``setting`` the value after ``@`` (the
    method's knob, or CO2's tau)."""

    text: str
    name: str
    kind: Kind
    method: str | None = None
    adaptive: bool = False
    fixed: bool = False
    flat: bool = False
    measure: str | None = None
    setting: float | None = None
    sharding: Sharding | None = None
    gather8: bool = False

    @classmethod
    def parse(cls, text: str) -> Arm:
        """ValueError naming the arm for an unknown name or a setting it cannot take."""
        name, at, value = text.partition("@")
        prefix, _, rest = name.partition("_")
        if prefix in PREFIXES and rest:  # FSDP2 around one of our methods
            gather8 = rest.endswith(GATHER8)
            arm = cls._ours(text, rest.removesuffix(GATHER8))
            if arm.flat:
                raise ValueError(f"arm {text!r}: a sharded arm's hosts are its mesh; no _flat")
            arm = dataclasses.replace(arm, name=name, sharding=PREFIXES[prefix], gather8=gather8)
        elif name in PREFIXES:
            arm = cls(text, name, "sharded", sharding=PREFIXES[name])
        elif name in BUILTIN:
            arm = cls(text, name, BUILTIN[name])
        elif name in CO2_ARMS:
            arm = cls(text, name, "co2")
        else:
            arm = cls._ours(text, name)
        if not at:
            return arm
        return dataclasses.replace(arm, setting=arm._setting(value))

    @classmethod
    def _ours(cls, text: str, name: str) -> Arm:
        adaptive = name.startswith(ADAPTIVE)
        rest = name.removeprefix(ADAPTIVE) if adaptive else name
        for method in sorted(method_names(), key=len, reverse=True):
            if rest != method and not rest.startswith(method + "_"):
                continue
            tail, flags = rest[len(method):], {}
            for suffix in SUFFIXES:
                if tail.startswith(suffix):
                    flags[suffix.strip("_")], tail = True, tail[len(suffix):]
            if adaptive and tail in MEASURES:
                flags["measure"], tail = MEASURES[tail], ""
            if not tail:
                return cls(text, name, "ours", method, adaptive, **flags)
        raise ValueError(f"unknown arm {name!r}; arms: {', '.join(builtin_arms())}, and "
                         f"[{ADAPTIVE}]METHOD[_fixed][_flat][_layersum|_relative] for METHOD in "
                         f"{method_names()}")

    def _setting(self, value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"arm {self.text!r}: the setting after @ must be a number") from None
        if self.kind == "co2":
            if not number.is_integer() or number < 1:
                raise ValueError(f"arm {self.text!r}: tau must be a whole number >= 1")
            return int(number)
        if self.kind != "ours":
            raise ValueError(f"arm {self.text!r} has no compression setting to give with @")
        try:
            return method_class(self.method)().validate_setting(number)
        except ValueError as err:
            raise ValueError(f"arm {self.text!r}: {err}") from None

    # -- what it runs with ------------------------------------------------------------------------
    def hook_options(self, run: RunSettings) -> dict:
        """Our hook's options: the library's defaults but for the method options the command
        line or the arm's @setting names, the timeout, the dense warm-up, the variant's changes
        and ``run.extra``. What the method reads from the optimizer (top-k's momentum) is added
        by :func:`distcomp.hooks.attach`."""
        cls = method_class(self.method)
        own = {f.name for f in dataclasses.fields(cls.Options)}
        opts: dict[str, Any] = {"timeout_s": run.timeout_s,
                                **{k: v for k, v in run.knobs.items() if k in own}}
        if self.setting is not None:
            opts[cls.knob] = self.setting
        if run.dense_warmup is not None:
            opts["warmup_steps"] = run.dense_warmup
        if self.fixed:
            opts.update(accordion=False, warmup_steps=torch_start_iter(opts.get("warmup_steps")))
        if self.flat:
            opts["hierarchical"] = False
        if self.gather8:
            opts["all_gather"] = "int8"
        if self.adaptive:
            measure = {"error_measure": self.measure} if self.measure else {}
            opts["lgreco"] = {**run.lgreco, **measure}
        extra = dict(run.extra)
        if "lgreco" in extra and "lgreco" in opts:
            extra["lgreco"] = {**opts["lgreco"], **extra["lgreco"]}
        return {**opts, **extra}

    @property
    def tau(self) -> int | None:
        return int(self.setting) if self.kind == "co2" and self.setting is not None else None

    def wrap(self, net: torch.nn.Module, ddp_buckets: bool = False) -> torch.nn.Module:
        """``net`` as this arm trains it: under DDP, or sharded with FSDP2."""
        if self.sharding is not None:
            return shard(net, self.sharding, compressed=self.kind == "ours")
        return DDP(net, bucket_cap_mb=self.bucket_cap_mb(net, ddp_buckets))

    def setup(self, model: DDP, optimizer: torch.optim.Optimizer, run: RunSettings
              ) -> tuple[torch.optim.Optimizer, Any]:
        """Attach the arm to ``model`` (from :meth:`wrap`: its DDP communication hook, or
        ``FSDPCompression``); returns the optimizer to step (CO2's wrapper for local updating)
        and the state to ``close()`` (None where there is none: plain DDP, torch's hooks,
        FSDP2's own reduction)."""
        if self.kind in ("allreduce", "sharded"):
            return optimizer, None
        if self.sharding is not None:
            from distcomp.hooks import FSDPCompression

            name = (ADAPTIVE_NAME if self.adaptive else "") + self.method
            return optimizer, FSDPCompression(model, name, optimizer=optimizer,
                                              **self.hook_options(run))
        if self.kind == "torch":
            register_torch_hook(model, self.name, run.knobs.get("rank"), run.dense_warmup)
            return optimizer, None
        if self.kind == "local_node":
            return optimizer, NodeAverage(model)
        from distcomp.hooks import attach, local_hook

        if self.kind == "ours":
            name = (ADAPTIVE_NAME if self.adaptive else "") + self.method
            return optimizer, attach(model, name, optimizer=optimizer, **self.hook_options(run))
        model.register_comm_hook(None, local_hook)
        if self.kind == "local":
            return optimizer, None
        from distcomp.co2 import CO2

        outer = {} if run.outer_momentum is None else {"outer_momentum": run.outer_momentum}
        co2 = CO2(optimizer, model, tau=self.tau or run.tau, timeout_s=run.timeout_s, **outer,
                  **CO2_ARMS[self.name])
        return co2, co2

    def bucket_cap_mb(self, model: torch.nn.Module, ddp_buckets: bool = False) -> float:
        """DDP's bucket size: its default (25 MB), except for torch's powerSGD_hook, which
        gets one bucket holding every gradient: with several, its second all-reduce (launched
        from a future callback) races the next bucket's first, and on gloo that aborts or hangs
        (README). The soak keeps DDP's buckets (``ddp_buckets``) to count exactly that."""
        if not ddp_buckets and self.name == "torch_powersgd":
            return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20 + 1
        return 25.0


def builtin_arms() -> list[str]:
    """Every arm name that is not a form of a registered method."""
    return [*BUILTIN, *CO2_ARMS]


def method_arms(prefix: str = "") -> list[str]:
    """Each registered method as an arm (``prefix`` before it: ``lgreco_``)."""
    return [prefix + m for m in method_names()]


def torch_start_iter(dense: int | None = None) -> int:
    """torch's start_powerSGD_iter for the comparison: ``dense`` steps (default: our default
    dense warm-up), but at least 2, the least torch accepts with error feedback and warm start."""
    return max(2, CompressionConfig().warmup_steps if dense is None else dense)


def register_torch_hook(model: DDP, name: str, rank: int | None = None,
                        dense: int | None = None) -> None:
    """Attach one of torch's own hooks, the anchors beside ours: fp16_compress_hook, or
    powerSGD_hook at ``rank`` (our default when None) with our dense warm-up as its
    start_powerSGD_iter. powerSGD_hook needs one DDP bucket on gloo (:meth:`Arm.bucket_cap_mb`)."""
    if name == "torch_fp16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        model.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as ps

    state = ps.PowerSGDState(None, matrix_approximation_rank=rank or PowerSGDOptions().rank,
                             start_powerSGD_iter=torch_start_iter(dense))
    model.register_comm_hook(state, ps.powerSGD_hook)


class NodeAverage:
    """The ``local_node`` arm: DDP's buckets all-reduced (averaged) over this host's ranks only,
    as the launcher's LOCAL_WORLD_SIZE places them; ``close()`` destroys the groups."""

    def __init__(self, model: DDP):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        from distcomp.compression.hierarchical import node_groups
        from distcomp.compression.topology import resolve

        topo, _ = resolve(dist.get_rank(), dist.get_world_size())
        self.group, _, self.groups = node_groups(topo)
        model.register_comm_hook(self.group, allreduce_hook)  # DDP's own average, on the group

    def close(self) -> None:
        for group in self.groups:
            dist.destroy_process_group(group)
