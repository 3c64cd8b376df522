"""What the framework scripts (``train_lightning.py``, ``train_accelerate.py``) share: their
flags, and the end of a run: the compression stats, closing the state, the one summary line
(the shape of ``launch/train.py``'s per-epoch line) and the per-rank ``--log-json`` record the
tests compare across ranks."""

from __future__ import annotations

import argparse
import json

import torch

MOMENTUM = 0.9  # both scripts' SGD momentum


def hook_options(comm: str) -> dict:
    """CompressionState options for ``--comm``: a timeout on every collective, and for top-k
    its momentum correction told the optimizer's momentum (what an SGD(momentum=m) user is told
    to set)."""
    return {"timeout_s": 120.0, **({"momentum": MOMENTUM} if comm == "topk" else {})}


def parse_args(description: str, framework: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--comm", choices=("none", "powersgd", "topk", "qsgd"), default="powersgd",
                   help=f"none: {framework}'s own DDP all-reduce (default: %(default)s)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.05,
                   help="SGD learning rate (default: %(default)s)")
    p.add_argument("--log-json", default="", help="write rank R's record to PATH.rankR")
    return p.parse_args(argv)


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
                       "steps": None if state is None else state.step}, f)
