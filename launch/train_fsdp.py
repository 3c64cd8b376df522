"""An FSDP2 training script with distcomp's cross-node compression: one call after fully_shard.

    torchrun --nproc_per_node=4 launch/train_fsdp.py --comm powersgd --ranks-per-node 2
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        launch/train_fsdp.py --comm fp8 --sharding flat --all-gather int8

The lines that enable distcomp are marked "distcomp:" below. ``--sharding hybrid`` (the
default) shards the model inside each node and replicates it across nodes: ``--comm none`` is
native HSDP (FSDP2's dense all-reduce between nodes), any other ``--comm`` averages across nodes
with :class:`~distcomp.hooks.fsdp.FSDPCompression`. ``--sharding flat`` shards over every rank:
``--comm none`` is FSDP2's own reduce-scatter; a method whose payloads are byte strings (qsgd,
fp8, efsignsgd, topk) compresses it, and ``--all-gather int8`` the weights' all-gathers too.
``--bf16`` computes in bf16 and reduces in fp32 (``MixedPrecisionPolicy``).

Workloads, the per-epoch line (loss, slow-link bytes per step, step time), SIGTERM handling
(every rank stops at the same step, checkpoints, exits 143) and the timeout on every collective
are those of ``launch/train.py`` (default workload here: ``lm``, with the workload's own
optimizer). Checkpoints go through ``torch.distributed.checkpoint`` (each rank writes its
shards, the optimizer's and its compression state) into ``--checkpoint-dir``/``step-N``, written
under a temporary name and renamed once every rank finished, so ``--resume`` never reads a
half-written one; the newest two are kept.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from train import (
    EXIT_PREEMPTED,
    MOMENTUM,
    StopRequest,
    comm_options,
    init_distributed,
    make_task,
    parse_into,
    run_epochs,
    run_guarded,
)

from distcomp import CompressionConfig
from distcomp.hooks import comm_names
from distcomp.hooks.fsdp import ALL_GATHERS, FSDPCompression
from distcomp.sharding import SHARDINGS, shard_model

COMMS = ("none", *comm_names())
WORKLOADS = ("teacher", "lm", "cnn", "resnet")
KEEP = 2  # checkpoints kept


@dataclass
class Options:
    workload: str = "lm"  # one of WORKLOADS
    comm: str = "powersgd"  # one of COMMS; none = FSDP2's own reduction
    sharding: str = "hybrid"  # hybrid: shard in a node, replicate across; flat: over every rank
    all_gather: str = "dense"  # dense | int8 (flat: the weights' all-gathers as 8-bit codes)
    residual: str = ""  # flat: error feedback's memory, fp32 | float8 | none ("": the default)
    bf16: bool = False  # bf16 compute, fp32 gradient reduction
    warmup_steps: int = CompressionConfig().warmup_steps
    fixed_setting: bool = False
    ranks_per_node: int = 0  # 0: from the launcher (torchrun's LOCAL_WORLD_SIZE)
    epochs: int = 3
    steps_per_epoch: int = 100
    batch_size: int = 128  # teacher's (the other workloads have their own)
    width: int = 512  # teacher MLP width
    lr: float = 0.0  # 0: the workload's (teacher: SGD at 0.05)
    seed: int = 0
    timeout_s: float = 300.0
    checkpoint_dir: str = ""
    resume: bool = False
    data_dir: str = "bench-results/data"
    log_json: str = ""
    stop_check_steps: int = 10


def parse_args(argv=None) -> Options:
    opts, parser = parse_into(Options, argv, __doc__.splitlines()[0], COMMS)
    for name, allowed in (("workload", WORKLOADS), ("sharding", SHARDINGS),
                          ("all_gather", ALL_GATHERS)):
        if getattr(opts, name) not in allowed:
            parser.error(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                         f"got {getattr(opts, name)!r}")
    if opts.comm == "none" and (opts.all_gather != "dense" or opts.residual):
        parser.error("--all-gather and --residual belong to a --comm method; --comm none is "
                     "FSDP2's own reduction")
    if opts.sharding == "hybrid" and (opts.all_gather != "dense" or opts.residual):
        parser.error("--all-gather int8 and --residual are for --sharding flat (hybrid "
                     "all-gathers stay inside the node)")
    if opts.resume and not opts.checkpoint_dir:
        parser.error("--resume needs --checkpoint-dir")
    if opts.ranks_per_node < 0 or opts.stop_check_steps < 1:
        parser.error("--ranks-per-node must be >= 0 and --stop-check-steps >= 1")
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    rank, world = init_distributed(opts.timeout_s)
    return run_guarded("train_fsdp.py", rank,
                       lambda: 0 if train(opts, rank, world) else EXIT_PREEMPTED)


def build(opts: Options, task, device: torch.device):
    """The sharded model, its optimizer and the compression state (None for --comm none)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    torch.manual_seed(opts.seed)
    model = task.model().to(device)
    mp = {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                            reduce_dtype=torch.float32)} if opts.bf16 else {}
    shard_model(model, opts.sharding, compressed=opts.comm != "none",
                ranks_per_node=opts.ranks_per_node or None, **mp)
    if hasattr(task, "optimizer"):
        opt = task.optimizer(model.parameters())
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=MOMENTUM)
    for group in opt.param_groups:
        group["lr"] = opts.lr or group["lr"]
    state = None
    if opts.comm != "none":
        options = comm_options(opts)
        if opts.sharding == "flat":  # one setting per chunk: never a schedule
            options.pop("accordion")
            options["all_gather"] = opts.all_gather
        if opts.residual:
            options["residual"] = opts.residual
        # distcomp: compressed averaging across nodes (or a compressed reduce-scatter)
        state = FSDPCompression(model, opts.comm, optimizer=opt, **options)
    return model, opt, state


def train(opts: Options, rank: int, world: int) -> bool:
    """Train; False if stopped early by SIGTERM (after saving, with --checkpoint-dir)."""
    stop = StopRequest(opts.stop_check_steps, opts.timeout_s)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    task = make_task(opts, rank)
    model, opt, state = build(opts, task, device)
    if rank == 0 and state is not None:
        t = state.topology
        print(f"train_fsdp.py: {opts.sharding} sharding, {t.nodes} nodes x {t.ranks_per_node} "
              f"ranks: {opts.comm} across nodes", flush=True)
    try:
        return _loop(opts, rank, task, model, opt, state, stop, device)
    finally:
        if state is not None:
            state.close()  # distcomp: it holds process groups; closed before they are destroyed


def _checkpoint(model, opt, state, step: int) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, opt_sd = get_state_dict(model, opt)
    out = {"model": model_sd, "optimizer": opt_sd, "step": torch.tensor(step)}
    if state is not None:
        out["comm"] = state  # Stateful: torch.distributed.checkpoint calls its state_dict()
    return out


def save(directory: str, model, opt, state, step: int, rank: int) -> None:
    """``directory``/step-<step>, complete or absent: written as ``.tmp-step-<step>``, renamed
    by rank 0 after every rank wrote its part; older ones beyond the newest ``KEEP`` removed."""
    import torch.distributed.checkpoint as dcp

    root = Path(directory)
    tmp, final = root / f".tmp-step-{step:08d}", root / f"step-{step:08d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    dcp.save(_checkpoint(model, opt, state, step), checkpoint_id=str(tmp))
    dist.barrier()  # every rank's shards are on disk
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(root.glob("step-*"))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def resume(directory: str, model, opt, state) -> int:
    """Load the newest complete checkpoint; the step it was taken at (0: none yet)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    done = sorted(Path(directory).glob("step-*"))
    if not done:
        return 0
    loaded = _checkpoint(model, opt, state, 0)
    dcp.load(loaded, checkpoint_id=str(done[-1]))
    set_state_dict(model, opt, model_state_dict=loaded["model"],
                   optim_state_dict=loaded["optimizer"])
    return int(loaded["step"])


def _loop(opts: Options, rank: int, task, model, opt, state, stop: StopRequest,
          device: torch.device) -> bool:
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    step = resume(opts.checkpoint_dir, model, opt, state) if opts.resume else 0
    tag = f"fsdp {opts.comm}"
    if step and rank == 0:
        print(f"[{tag}] resumed at step {step}", flush=True)

    def link_bytes(count: int) -> tuple[float, float]:
        """The slow link's bytes per step, and what native HSDP / FSDP2 would send."""
        if state is not None and state.ledger.per_step:
            return (state.ledger.mean_bytes_per_step(last=count),
                    state.ledger.summary()["dense_bytes_per_step"])
        return dense_bytes, dense_bytes

    return run_epochs(opts, rank, task, model, opt, stop, device, step, tag,
                      lambda at: save(opts.checkpoint_dir, model, opt, state, at, rank),
                      link_bytes)


if __name__ == "__main__":
    sys.exit(main())
