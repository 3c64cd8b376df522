"""A PyTorch Lightning script with distcomp's compression: the state and hook go into
``DDPStrategy`` unchanged, as torch's PowerSGD state does.

    torchrun --nproc_per_node=2 launch/train_lightning.py --comm powersgd

The lines that enable distcomp are marked "distcomp:". The state is built before
``trainer.fit`` (no process group exists yet) and binds on its first hook call. Lightning
registers DDP communication hooks on CUDA devices only (``DDPStrategy._register_ddp_hooks``) and
silently ignores them on CPU; on CPU this script uses :class:`CPUHookDDPStrategy`, which calls
Lightning's own registration on any device, so the path is the same one a GPU run takes. Prints the
per-epoch line of ``launch/train.py`` once at the end, and with ``--log-json`` writes every rank's
losses, the compression stats and a parameter checksum (the tests compare ranks).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import _register_ddp_comm_hook
from lightning.pytorch.strategies import DDPStrategy

from distcomp.hooks import CompressionState, compression_hook
from distcomp.workloads.teacher import TeacherTask


class CPUHookDDPStrategy(DDPStrategy):
    """DDPStrategy that registers its ``ddp_comm_hook`` on CPU too (Lightning: CUDA only)."""

    def _register_ddp_hooks(self) -> None:
        _register_ddp_comm_hook(model=self.model, ddp_comm_state=self._ddp_comm_state,
                                ddp_comm_hook=self._ddp_comm_hook,
                                ddp_comm_wrapper=self._ddp_comm_wrapper)


class TeacherModule(pl.LightningModule):
    """The teacher MLP of ``launch/train.py`` under Lightning, recording its losses."""

    def __init__(self, task: TeacherTask, lr: float):
        super().__init__()
        self.task, self.lr, self.net, self.losses = task, lr, task.model(), []

    def training_step(self, batch, index):
        x, y = batch
        loss = self.task.loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class Batches(torch.utils.data.IterableDataset):
    """``steps`` batches of this rank's stream, the same ones launch/train.py draws."""

    def __init__(self, task: TeacherTask, steps: int, rank: int):
        self.task, self.steps, self.rank = task, steps, rank

    def __iter__(self):
        return (self.task.batch(step, self.rank) for step in range(self.steps))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comm", choices=("none", "powersgd", "topk", "qsgd"), default="powersgd",
                   help="none: Lightning's own DDP all-reduce (default: %(default)s)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.05,
                   help="SGD learning rate (default: %(default)s)")
    p.add_argument("--log-json", default="", help="write rank R's record to PATH.rankR")
    args = p.parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    task = TeacherTask(seed=0)
    torch.manual_seed(0)
    module = TeacherModule(task, args.lr)
    state = None
    options = {"timeout_s": 120.0}
    if args.comm != "none":
        # distcomp: built before the process group exists; binds on the first hook call
        state = CompressionState(module, args.comm, **options)
    cls = DDPStrategy if torch.cuda.is_available() else CPUHookDDPStrategy
    strategy = cls(process_group_backend="gloo", ddp_comm_state=state,  # distcomp: as torch's
                   ddp_comm_hook=compression_hook if state is not None else None)
    trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                         num_nodes=max(world // int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1),
                         strategy=strategy, max_steps=args.steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    loader = torch.utils.data.DataLoader(Batches(task, args.steps, rank), batch_size=None)
    start = time.perf_counter()
    trainer.fit(module, loader)
    elapsed = time.perf_counter() - start
    stats = state.compression_stats() if state is not None else None
    if state is not None:
        state.close()  # distcomp: its thread and process group, before Lightning's teardown
    dense = sum(q.numel() * q.element_size() for q in module.parameters())
    sent = stats["sent_bytes_per_step"] if stats else dense
    if rank == 0:
        tail = module.losses[-10:]
        print(f"[{args.comm}] lightning {args.steps} steps loss {sum(tail) / len(tail):.4f} "
              f"bytes/step {sent:,.0f} (dense/sent {dense / max(sent, 1):.1f}x) "
              f"step {elapsed / args.steps * 1e3:.1f} ms", flush=True)
    if args.log_json:
        checksum = float(sum(q.detach().double().sum() for q in module.parameters()))
        with open(f"{args.log_json}.rank{rank}", "w") as f:
            json.dump({"losses": module.losses, "stats": stats, "checksum": checksum,
                       "steps": None if state is None else state.step}, f)
    # Lightning leaves the default group alive; destroyed here, not by a gloo destructor at
    # interpreter exit (which aborted a plain `--comm none` run under load in CI)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
