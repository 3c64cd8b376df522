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

import os
import time

import lightning.pytorch as pl
import torch
from framework_run import MOMENTUM, finish, parse_args
from lightning.pytorch.overrides.distributed import _register_ddp_comm_hook
from lightning.pytorch.strategies import DDPStrategy

from distcomp.hooks import CompressionState, compression_hook, method_options
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
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=MOMENTUM)


class Batches(torch.utils.data.IterableDataset):
    """``steps`` batches of this rank's stream, the same ones launch/train.py draws."""

    def __init__(self, task: TeacherTask, steps: int, rank: int):
        self.task, self.steps, self.rank = task, steps, rank

    def __iter__(self):
        return (self.task.batch(step, self.rank) for step in range(self.steps))


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], "Lightning", argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    task = TeacherTask(seed=0)
    torch.manual_seed(0)
    module = TeacherModule(task, args.lr)
    state = None
    if args.comm != "none":
        # distcomp: built before the process group exists; binds on the first hook call; the
        # optimizer the module will configure tells top-k its momentum
        method, options = method_options(args.comm, module.configure_optimizers(),
                                         **args.hook_options)
        state = CompressionState(module, method, **options)
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
    finish(args, "lightning", rank, module, module.losses, state, elapsed)
    # Lightning leaves the default group alive; destroyed here, not by a gloo destructor at
    # interpreter exit (which aborted a plain `--comm none` run under load in CI)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
