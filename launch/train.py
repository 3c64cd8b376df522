"""A plain DDP training script, the kind users already have, with distcomp as a two-line change.

    torchrun --nproc_per_node=2 launch/train.py --comm powersgd --rank 4

The two lines that enable compression are marked "distcomp:" below. The task is generated
offline: a fixed random teacher network labels Gaussian inputs, and an MLP student learns it.
Prints one line per epoch: loss, payload bytes per step and step time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from hooks import CompressionState, compression_hook


@dataclass
class Options:
    comm: str = "none"  # none (plain DDP all-reduce) | powersgd | topk | qsgd
    rank: int = 4  # PowerSGD rank
    density: float = 0.01  # top-k density
    bits: int = 4  # QSGD bits
    epochs: int = 3
    steps_per_epoch: int = 100
    batch_size: int = 128
    width: int = 512
    lr: float = 0.05
    seed: int = 0
    timeout_s: float = 300.0


def parse_args() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in fields(Options):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, type=type(f.default), default=f.default)
    opts = Options(**vars(parser.parse_args()))
    if opts.comm not in ("none", "powersgd", "topk", "qsgd"):
        parser.error(f"--comm must be none, powersgd, topk or qsgd, got {opts.comm!r}")
    return opts


class TeacherTask:
    """Inputs x ~ N(0, I_32); label = argmax of a fixed random tanh network: offline, endless."""

    def __init__(self, dim: int = 32, classes: int = 10):
        g = torch.Generator().manual_seed(1234)
        self.w1 = torch.randn(dim, 64, generator=g) / dim**0.5
        self.w2 = torch.randn(64, classes, generator=g) / 8
        self.dim, self.classes = dim, classes

    def batch(self, seed: int, n: int):
        x = torch.randn(n, self.dim, generator=torch.Generator().manual_seed(seed))
        return x, (torch.tanh(x @ self.w1) @ self.w2).argmax(1)


def main() -> None:
    opts = parse_args()
    if "RANK" not in os.environ:
        raise SystemExit("launch with torchrun, e.g. torchrun --nproc_per_node=2 launch/train.py")
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=opts.timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(opts.seed)
    task = TeacherTask()
    model = nn.Sequential(
        nn.Linear(task.dim, opts.width), nn.ReLU(),
        nn.Linear(opts.width, opts.width), nn.ReLU(),
        nn.Linear(opts.width, task.classes),
    )
    model = DDP(model)
    state = None
    if opts.comm != "none":
        # distcomp: the two-line change
        state = CompressionState(model, opts.comm, rank=opts.rank, density=opts.density,
                                 bits=opts.bits, timeout_s=opts.timeout_s)
        model.register_comm_hook(state, compression_hook)
    dense_bytes = sum(4 * p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=0.9)
    step = 0
    for epoch in range(opts.epochs):
        start, total = time.perf_counter(), 0.0
        for _ in range(opts.steps_per_epoch):
            x, y = task.batch(seed=(opts.seed * 10**7 + step) * world + rank, n=opts.batch_size)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            step += 1
        step_time = (time.perf_counter() - start) / opts.steps_per_epoch
        loss_avg = torch.tensor([total / opts.steps_per_epoch])
        dist.all_reduce(loss_avg)
        sent = dense_bytes
        if state is not None:
            sent = state.ledger.mean_bytes_per_step(last=opts.steps_per_epoch)
        if rank == 0:
            print(
                f"[{opts.comm}] epoch {epoch + 1}/{opts.epochs} "
                f"loss {loss_avg.item() / world:.4f} bytes/step {sent:,.0f} "
                f"(dense/sent {dense_bytes / sent:.1f}x) step {step_time * 1e3:.1f} ms",
                flush=True,
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
