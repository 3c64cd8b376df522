"""A plain DeepSpeed training script with distcomp's compression as a two-line change.

    torchrun --nproc_per_node=2 launch/train_deepspeed.py --comm powersgd --rank 4
    deepspeed --num_gpus 2 launch/train_deepspeed.py --comm topk --density 0.01

The lines that enable distcomp are marked "distcomp:" below (compression needs ZeRO stage 0:
see :mod:`distcomp.hooks.deepspeed`). ``--comm none`` is DeepSpeed's own all-reduce, at any
``--zero-stage``. Workloads, the per-epoch line (loss, bytes per step, step time), the timeout
on every collective and the clear error on a lost peer are those of ``launch/train.py``.
``--log-json`` writes every step's loss and, with ``--comm none``, the bytes DeepSpeed's own
comms logger recorded, for side-by-side comparisons.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from train import (
    MOMENTUM,
    comm_options,
    init_distributed,
    make_task,
    parse_into,
    print_epoch,
    run_guarded,
)

from distcomp import CompressionConfig
from distcomp.hooks import comm_names, method_options

COMMS = ("none", *comm_names())


@dataclass
class Options:
    workload: str = "teacher"  # teacher | lm | cnn
    comm: str = "none"  # one of COMMS; none = DeepSpeed's own all-reduce
    zero_stage: int = 0
    warmup_steps: int = CompressionConfig().warmup_steps
    fixed_setting: bool = False
    epochs: int = 3
    steps_per_epoch: int = 100
    batch_size: int = 128
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 0.0  # max global gradient norm; 0 = off (DeepSpeed's default is 1.0)
    width: int = 512
    lr: float = 0.05
    seed: int = 0
    timeout_s: float = 300.0
    data_dir: str = "bench-results/data"
    log_json: str = ""
    local_rank: int = -1  # passed by the deepspeed launcher; unused


def parse_args(argv=None) -> Options:
    opts, parser = parse_into(Options, argv, __doc__.splitlines()[0], COMMS)
    if opts.zero_stage not in (0, 1, 2, 3):
        parser.error(f"--zero-stage must be 0..3, got {opts.zero_stage}")
    if opts.grad_accum < 1:
        parser.error(f"--grad-accum must be >= 1, got {opts.grad_accum}")
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    # DeepSpeed JIT-compiles a small op on first use; keep it out of the home directory.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR",
                          str(Path(__file__).resolve().parents[1] / ".torch_extensions"))
    rank, world = init_distributed(opts.timeout_s)
    return run_guarded("train_deepspeed.py", rank, lambda: train(opts, rank, world) or 0)


def train(opts: Options, rank: int, world: int) -> None:
    import deepspeed
    from deepspeed import comm as ds_comm

    from distcomp.hooks.deepspeed import DeepSpeedCompression, register_deepspeed_hook

    task = make_task(opts, rank)
    torch.manual_seed(opts.seed)
    model = task.model()
    config = {
        "train_micro_batch_size_per_gpu": opts.batch_size,
        "gradient_accumulation_steps": opts.grad_accum,
        "zero_optimization": {"stage": opts.zero_stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": opts.grad_clip,
        "comms_logger": {"enabled": opts.comm == "none" and bool(opts.log_json),
                         "verbose": False, "prof_all": True},
        "steps_per_print": 10**9,
    }
    opt = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=MOMENTUM)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config,
                                           dist_init_required=False)
    state = None
    if opts.comm != "none":
        # distcomp: the two-line change (compressed gradient averaging, ZeRO stage 0)
        method, options = method_options(opts.comm, opt, **comm_options(opts))
        state = DeepSpeedCompression(engine, method, **options)
        register_deepspeed_hook(engine, state)
    device = engine.device
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    log, step = [], 0
    for epoch in range(opts.epochs):
        start, total = time.perf_counter(), 0.0
        for _ in range(opts.steps_per_epoch):
            for micro in range(opts.grad_accum):
                x, y = task.batch(step * opts.grad_accum + micro, rank)
                loss = task.loss(engine(x.to(device)), y.to(device))
                engine.backward(loss)
                engine.step()
                total += loss.item() / opts.grad_accum
            log.append({"step": step, "loss": loss.item()})
            step += 1
        step_time = (time.perf_counter() - start) / opts.steps_per_epoch
        mean = torch.tensor([total / opts.steps_per_epoch], device=device)
        dist.all_reduce(mean)
        sent = dense_bytes
        if state is not None and state.ledger.per_step:
            sent = state.ledger.mean_bytes_per_step(last=opts.steps_per_epoch)
        if rank == 0:
            print_epoch(f"deepspeed zero{opts.zero_stage} {opts.comm}", epoch, opts.epochs,
                        mean.item() / world, sent, dense_bytes, step_time)
    if rank == 0 and opts.log_json:
        result = {"losses": log, "steps": step, "dense_bytes": dense_bytes}
        if state is not None:
            result["bytes_per_step"] = state.ledger.mean_bytes_per_step(last=step)
        else:
            result["deepspeed_comms"] = _logged_bytes(ds_comm)
        Path(opts.log_json).write_text(json.dumps(result))
    if state is not None:
        state.close()


def _logged_bytes(ds_comm) -> dict:
    """DeepSpeed's comms logger: collective name -> total message bytes this rank sent."""
    totals: dict[str, int] = {}
    for op, sizes in ds_comm.comms_logger.comms_dict.items():
        totals[op] = sum(int(size) * vals[0] for size, vals in sizes.items())
    return totals


if __name__ == "__main__":
    sys.exit(main())
