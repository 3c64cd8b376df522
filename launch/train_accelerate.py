"""An HF accelerate script with distcomp's compression: ``prepare()``, then the two lines.

    torchrun --nproc_per_node=2 launch/train_accelerate.py --comm powersgd
    accelerate launch --num_processes 2 --cpu launch/train_accelerate.py --comm topk

The lines that enable distcomp are marked "distcomp:". ``prepare()`` wraps the model in DDP
(on CPU too, over gloo); the hook is registered on that DDP model. Prints the per-epoch line of
``launch/train.py`` once at the end; ``--log-json`` writes every rank's losses, the compression
stats and a parameter checksum (the tests compare ranks).
"""

from __future__ import annotations

import time

import torch
from accelerate import Accelerator
from framework_run import MOMENTUM, finish, parse_args

from distcomp.hooks import attach
from distcomp.workloads.teacher import TeacherTask


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], "accelerate", argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank = accelerator.process_index
    task = TeacherTask(seed=0)
    torch.manual_seed(0)
    model = task.model()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM)
    model, opt = accelerator.prepare(model, opt)
    state = None
    if args.comm != "none":
        state = attach(model, args.comm, optimizer=opt, **args.hook_options)  # distcomp
    losses = []
    start = time.perf_counter()
    for step in range(args.steps):
        x, y = task.batch(step, rank)
        loss = task.loss(model(x.to(accelerator.device)), y.to(accelerator.device))
        opt.zero_grad()
        accelerator.backward(loss)
        opt.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    finish(args, "accelerate", rank, model, losses, state, elapsed)
    accelerator.end_training()
    if torch.distributed.is_initialized():  # the default group, not left to interpreter exit
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
