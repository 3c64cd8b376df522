"""An HF accelerate script with distcomp's compression: ``prepare()``, then the two lines.

    torchrun --nproc_per_node=2 launch/train_accelerate.py --comm powersgd
    accelerate launch --num_processes 2 --cpu launch/train_accelerate.py --comm topk

The lines that enable distcomp are marked "distcomp:". ``prepare()`` wraps the model in DDP
(on CPU too, over gloo); the hook is registered on that DDP model. Prints the per-epoch line of
``launch/train.py`` once at the end; ``--log-json`` writes every rank's losses, the compression
stats and a parameter checksum (the tests compare ranks).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from accelerate import Accelerator

from distcomp.hooks import CompressionState, compression_hook
from distcomp.workloads.teacher import TeacherTask


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comm", choices=("none", "powersgd", "topk", "qsgd"), default="powersgd",
                   help="none: accelerate's own DDP all-reduce (default: %(default)s)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.05,
                   help="SGD learning rate (default: %(default)s)")
    p.add_argument("--log-json", default="", help="write rank R's record to PATH.rankR")
    args = p.parse_args(argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank = accelerator.process_index
    task = TeacherTask(seed=0)
    torch.manual_seed(0)
    model = task.model()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    model, opt = accelerator.prepare(model, opt)
    state = None
    if args.comm != "none":
        options = {"timeout_s": 120.0}
        if args.comm == "topk":
            options["momentum"] = 0.9  # top-k's momentum correction, told the SGD momentum
        state = CompressionState(model, args.comm, **options)  # distcomp
        model.register_comm_hook(state, compression_hook)  # distcomp
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
    stats = state.compression_stats() if state is not None else None
    if state is not None:
        state.close()  # distcomp: its thread and process group
    dense = sum(q.numel() * q.element_size() for q in model.parameters())
    sent = stats["sent_bytes_per_step"] if stats else dense
    if accelerator.is_main_process:
        tail = losses[-10:]
        print(f"[{args.comm}] accelerate {args.steps} steps loss {sum(tail) / len(tail):.4f} "
              f"bytes/step {sent:,.0f} (dense/sent {dense / max(sent, 1):.1f}x) "
              f"step {elapsed / args.steps * 1e3:.1f} ms", flush=True)
    if args.log_json:
        checksum = float(sum(q.detach().double().sum() for q in model.parameters()))
        with open(f"{args.log_json}.rank{rank}", "w") as f:
            json.dump({"losses": losses, "stats": stats, "checksum": checksum,
                       "steps": None if state is None else state.step}, f)
    accelerator.end_training()
    if torch.distributed.is_initialized():  # the default group, not left to interpreter exit
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
