"""A plain Horovod training script with distcomp's compression as a two-line change.

    horovodrun -np 2 --gloo python launch/train_horovod.py --comm powersgd --rank 4
    horovodrun -np 8 -H a:4,b:4 python launch/train_horovod.py --comm lgreco-qsgd

The lines that enable distcomp are marked "distcomp:" below. ``--comm none`` is Horovod's own
``DistributedOptimizer`` (fp32 all-reduce), ``--comm fp16`` the same with Horovod's fp16
compression. Workload, per-epoch line and ``--log-json`` as in ``launch/train.py``; bytes per
step for Horovod's own arms are the dense gradient's (4 or 2 bytes per element, what its
all-reduce carries), for distcomp's the ledger's. Horovod: see ``make horovod``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from train import MOMENTUM, comm_options, parse_into, print_epoch

from distcomp import CompressionConfig
from distcomp.hooks import comm_names, method_options
from distcomp.workloads.teacher import TeacherTask

COMMS = ("none", "fp16", *comm_names())


@dataclass
class Options:
    comm: str = "none"  # one of COMMS
    warmup_steps: int = CompressionConfig().warmup_steps
    fixed_setting: bool = False
    epochs: int = 3
    steps_per_epoch: int = 100
    batch_size: int = 128
    width: int = 512
    lr: float = 0.05
    seed: int = 0
    timeout_s: float = 300.0
    log_json: str = ""


def parse_args(argv=None) -> Options:
    return parse_into(Options, argv, __doc__.splitlines()[0], COMMS)[0]


def main(argv=None) -> int:
    opts = parse_args(argv)
    import horovod.torch as hvd

    hvd.init()
    try:
        train(opts, hvd)
    except (RuntimeError, ValueError) as err:  # a lost peer, a timeout, a bad setting
        print(f"train_horovod.py: rank {hvd.rank()}: {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
        return 1
    finally:
        hvd.shutdown()
    return 0


def train(opts: Options, hvd) -> None:
    from distcomp.hooks.horovod import DistributedOptimizer, HorovodCompression

    rank, world = hvd.rank(), hvd.size()
    task = TeacherTask(opts.batch_size, opts.width, opts.seed)
    torch.manual_seed(opts.seed)
    model = task.model()
    opt = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=MOMENTUM)
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    state = None
    if opts.comm in ("none", "fp16"):
        compression = hvd.Compression.fp16 if opts.comm == "fp16" else hvd.Compression.none
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(),
                                       compression=compression)
        sent = dense_bytes // 2 if opts.comm == "fp16" else dense_bytes
    else:
        # distcomp: the two-line change (compressed averaging over hvd.allreduce / allgather)
        method, options = method_options(opts.comm, opt, **comm_options(opts))
        state = HorovodCompression(model, method, **options)
        opt = DistributedOptimizer(opt, state)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    log, step = [], 0
    for epoch in range(opts.epochs):
        start, total = time.perf_counter(), 0.0
        for _ in range(opts.steps_per_epoch):
            x, y = task.batch(step, rank)
            loss = task.loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            log.append({"step": step, "loss": loss.item()})
            step += 1
        step_time = (time.perf_counter() - start) / opts.steps_per_epoch
        mean = hvd.allreduce(torch.tensor([total / opts.steps_per_epoch]), op=hvd.Average)
        if state is not None:
            sent = state.ledger.mean_bytes_per_step(last=opts.steps_per_epoch)
        if rank == 0:
            print_epoch(f"horovod {opts.comm}", epoch, opts.epochs, mean.item(), sent,
                        dense_bytes, step_time, extra=f" ({world} ranks)")
    if rank == 0 and opts.log_json:
        Path(opts.log_json).write_text(json.dumps(
            {"losses": log, "steps": step, "dense_bytes": dense_bytes, "bytes_per_step": sent}))


if __name__ == "__main__":
    sys.exit(main())
