"""One rank of one ``benchmarks.gnn.gnnpipe`` run (started by torchrun, or alone for ``single``).

Builds the same SBM graph and model on every rank, trains ``--epochs`` full-graph epochs in the
given mode, evaluates once, and rank 0 writes one JSON record: bytes per epoch summed over all
ranks (training only), mean epoch time after the warm-up epochs (slowest rank), test accuracy
of the final model. A heartbeat file is touched every epoch for the driver's hang watchdog.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from distcomp.gnn.graph import partition, sbm
from distcomp.gnn.graph_parallel import GraphParallel
from distcomp.gnn.halo import HaloPlan
from distcomp.gnn.layers import deep_gcn
from distcomp.gnn.pipeline import GNNPipe

MODES = ("single", "graph_parallel", "pipeline", "hybrid")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per collective")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.mode != "single":
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    out = Path(args.out)
    beat = out / f"{args.mode}-{args.layers}-rank{rank}.progress"
    graph = sbm(args.nodes, seed=args.seed)
    torch.manual_seed(args.seed)
    modules = deep_gcn(graph.x.shape[1], args.hidden, graph.num_classes, args.layers)
    if args.mode in ("single", "graph_parallel"):
        trainer = GraphParallel(modules, graph, timeout_s=args.timeout)
    else:
        trainer = GNNPipe(modules, graph, num_chunks=args.chunks,
                          partitions=2 if args.mode == "hybrid" else 1, timeout_s=args.timeout)
    opt = torch.optim.Adam(trainer.parameters(), lr=args.lr)
    times, losses = [], []
    for epoch in range(args.epochs):
        beat.write_text(str(epoch))
        start = time.perf_counter()
        losses.append(trainer.train_epoch(opt))
        times.append(time.perf_counter() - start)
    acc = trainer.evaluate()
    ledger = trainer.ledger
    by_key = {k: v for k, v in ledger.per_key.items() if not k.startswith("eval")}
    train_bytes = sum(by_key.values())
    timed = times[args.warmup_epochs:] or times
    stats = torch.tensor([float(train_bytes), sum(timed) / len(timed)], dtype=torch.float64)
    if dist.is_initialized():
        total = stats[:1].clone()
        slow = stats[1:].clone()
        dist.all_reduce(total)
        dist.all_reduce(slow, op=dist.ReduceOp.MAX)
        stats = torch.cat([total, slow])
        keys = [None] * world
        dist.all_gather_object(keys, by_key)
        by_key = {k: sum(d.get(k, 0) for d in keys) for k in set().union(*keys)}
    if rank == 0:
        plan_parts = 2 if args.mode in ("graph_parallel", "hybrid") else 1
        halo = 0
        if plan_parts > 1:
            assign = partition(graph, 2)
            halo = sum(len(HaloPlan.build(graph.edge_index, assign, p).halo)
                       for p in range(2))
        record = {
            "mode": args.mode, "layers": args.layers, "ranks": world, "status": "ok",
            "bytes_per_epoch": stats[0].item() / args.epochs,
            "epoch_time_s": stats[1].item(), "test_acc": acc["test"], "val_acc": acc["val"],
            "final_loss": losses[-1], "losses": losses, "epochs": args.epochs,
            "bytes_by_key_per_epoch": {k: v / args.epochs for k, v in sorted(by_key.items())},
            "nodes": args.nodes, "edges": int(graph.edge_index.shape[1]),
            "halo_vertices": halo,
            "chunks": args.chunks if args.mode in ("pipeline", "hybrid") else None,
            "staleness": trainer.staleness() if isinstance(trainer, GNNPipe) else 0.0,
            "host_of_rank0": os.environ.get("GNNBENCH_HOST", "local"),
        }
        tmp = out / f"{args.mode}-{args.layers}.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(out / f"{args.mode}-{args.layers}.json")
    if dist.is_initialized():
        dist.barrier()  # nobody tears its sockets down while a peer is still mid-collective
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
