"""What the framework scripts (``train_lightning.py``, ``train_accelerate.py``) share: their
flags (``args.hook_options``: the timeout and the method options given, ``--density`` ...),
and the end of a run: the compression stats, closing the state, the one summary line (the
shape of ``launch/train.py``'s per-epoch line) and the per-rank ``--log-json`` record the tests
compare across ranks."""

from __future__ import annotations

import argparse
import json

import torch

from distcomp.compression.flags import add_method_flags
from distcomp.hooks import comm_names

MOMENTUM = 0.9  # both scripts' SGD momentum
TIMEOUT_S = 120.0  # on every collective of the compression hook


def parse_args(description: str, framework: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--comm", choices=("none", *comm_names()), default="powersgd",
                   help=f"none: {framework}'s own DDP all-reduce (default: %(default)s)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.05,
                   help="SGD learning rate (default: %(default)s)")
    p.add_argument("--log-json", default="", help="write rank R's record to PATH.rankR")
    knobs = add_method_flags(p)
    args = p.parse_args(argv)
    args.hook_options = {"timeout_s": TIMEOUT_S,
                         **{k: getattr(args, k) for k in knobs if getattr(args, k) is not None}}
    return args


def finish(args: argparse.Namespace, framework: str, rank: int, model: torch.nn.Module,
           losses: list[float], state, elapsed_s: float) -> None:
    """Stats, then ``state.close()`` (its thread and process group), then rank 0's summary
    line and, with ``--log-json``, this rank's losses, stats and parameter checksum."""
    stats = state.compression_stats() if state is not None else None
    if state is not None:
        state.close()
    dense = sum(q.numel() * q.element_size() for q in model.parameters())
    sent = stats["sent_bytes_per_step"] if stats else dense
    if rank == 0:
        tail = losses[-10:]
        print(f"[{args.comm}] {framework} {args.steps} steps loss {sum(tail) / len(tail):.4f} "
              f"bytes/step {sent:,.0f} (dense/sent {dense / max(sent, 1):.1f}x) "
              f"step {elapsed_s / args.steps * 1e3:.1f} ms", flush=True)
    if args.log_json:
        checksum = float(sum(q.detach().double().sum() for q in model.parameters()))
        with open(f"{args.log_json}.rank{rank}", "w") as f:
            json.dump({"losses": losses, "stats": stats, "checksum": checksum,
                       "steps": None if state is None else state.step,
                       "config": None if state is None else state.config.to_dict()}, f)
