"""A plain DDP training script, the kind users already have, with distcomp as a two-line change.

    torchrun --nproc_per_node=2 launch/train.py --comm powersgd --rank 4
    torchrun --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 launch/train.py --comm lgreco-powersgd
    mpirun -n 2 python launch/train.py --comm topk --density 0.01

The lines that enable distcomp are marked "distcomp:" below. Workloads: ``teacher`` (built in:
a fixed random network labels Gaussian inputs, an MLP learns it) and the benchmark's ``lm``
(character GPT on the Python standard library's source), ``cnn`` (1-D CNN on mnist1d) and
``resnet`` (ResNet with BatchNorm on cluttered digit images), built offline into
``--data-dir`` on first use. Prints one line per epoch: loss, payload bytes
per step and step time. With ``--checkpoint-dir`` every rank saves its state after each epoch
(model, optimizer, compression / CO2 state: error-feedback residuals differ per rank);
``--resume`` continues from the newest checkpoint all ranks completed, taking the same steps an
uninterrupted run takes. SIGTERM (what SLURM sends before a time limit or a preemption, and
what torchrun forwards) makes every rank stop at the same step within ``--stop-check-steps``,
save a checkpoint (with ``--checkpoint-dir``) and exit with ``EXIT_PREEMPTED`` = 143: not
finished, resumable.
Every collective has a timeout (``--timeout-s``): a lost peer ends every rank with an error
naming it, never a hang.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from distcomp import CompressionConfig
from distcomp.checkpoint import latest, load_rank, save_rank
from distcomp.co2 import CO2, CO2Config
from distcomp.comm import wait_work
from distcomp.compression.flags import add_method_flags
from distcomp.hooks import attach, comm_names, local_hook, method_options
from distcomp.workloads.teacher import TeacherTask

COMMS = ("none", *comm_names(), "co2")
MOMENTUM = 0.9  # the scripts' SGD momentum (top-k's momentum correction reads it)
WORKLOADS = ("teacher", "lm", "cnn", "resnet")


@dataclass
class Options:
    workload: str = "teacher"  # one of WORKLOADS
    comm: str = "none"  # one of COMMS; none = plain DDP all-reduce
    warmup_steps: int = CompressionConfig().warmup_steps  # dense steps before compressing
    fixed_setting: bool = False  # one setting throughout: no Accordion schedule
    ranks_per_node: int = 0  # 0: from the launcher (torchrun, srun, mpirun); 1: flat reduction
    tau: int = 4  # CO2 local steps per outer round
    epochs: int = 3
    steps_per_epoch: int = 100
    batch_size: int = 128
    width: int = 512  # teacher MLP width
    lr: float = 0.05
    seed: int = 0
    timeout_s: float = 300.0
    checkpoint_dir: str = ""
    resume: bool = False
    data_dir: str = "bench-results/data"
    log_json: str = ""  # rank 0 writes every step's loss here (for comparisons)
    stop_check_steps: int = 10  # how often ranks agree on whether a SIGTERM arrived


def parse_into(cls, argv, description: str, comms) -> tuple:
    """Parse ``--field-name`` flags of the dataclass ``cls`` (bools are switches) and every
    compression method's own options (``--rank``, ``--density``, ``--qsgd-norm``, ...: from the
    registry, each at its method's default unless given), and check ``--comm``; (options,
    parser) for further checks. The method options land in ``options.method_knobs`` (only
    those given). Shared by the launch scripts."""
    parser = argparse.ArgumentParser(description=description)
    for f in fields(cls):
        flags = {"--" + f.name.replace("_", "-"), "--" + f.name}  # --local_rank (deepspeed)
        if f.type == "bool":
            parser.add_argument(*sorted(flags), action="store_true")
        else:
            parser.add_argument(*sorted(flags), type=type(f.default), default=f.default)
    knobs = add_method_flags(parser)
    parsed = vars(parser.parse_args(argv))
    opts = cls(**{k: v for k, v in parsed.items() if k not in knobs})
    opts.method_knobs = {k: parsed[k] for k in knobs if parsed[k] is not None}
    if opts.comm not in comms:
        parser.error(f"--comm must be one of {', '.join(comms)}, got {opts.comm!r}")
    try:  # the settings --comm will use, checked before the process group forms
        if opts.comm in comm_names():
            method, options = method_options(opts.comm, **comm_options(opts))
            CompressionConfig(method, **{k: v for k, v in options.items()
                                         if k not in ("ranks_per_node", "lgreco")})
        elif opts.comm == "co2":
            CO2Config(tau=opts.tau, timeout_s=opts.timeout_s)
        else:  # the framework's own all-reduce: only the timeout
            CompressionConfig(timeout_s=opts.timeout_s)
    except ValueError as err:
        parser.error(f"{err}")
    return opts, parser


def parse_args(argv=None) -> Options:
    opts, parser = parse_into(Options, argv, __doc__.splitlines()[0], COMMS)
    if opts.workload not in WORKLOADS:
        parser.error(f"--workload must be one of {', '.join(WORKLOADS)}, got {opts.workload!r}")
    if opts.resume and not opts.checkpoint_dir:
        parser.error("--resume needs --checkpoint-dir")
    if opts.ranks_per_node < 0:
        parser.error(f"--ranks-per-node must be >= 0, got {opts.ranks_per_node}")
    if opts.stop_check_steps < 1:
        parser.error(f"--stop-check-steps must be >= 1, got {opts.stop_check_steps}")
    return opts


def comm_options(opts) -> dict:
    """The hook's options from the command line: the method options given (``--rank`` ...;
    those ``--comm``'s method does not read are logged as ignored), the warm-up, the schedule
    and the timeout. What a method reads from the optimizer (top-k's momentum) is added by
    :func:`distcomp.hooks.method_options`."""
    options = {"warmup_steps": opts.warmup_steps, "accordion": not opts.fixed_setting,
               "timeout_s": opts.timeout_s, **getattr(opts, "method_knobs", {})}
    if getattr(opts, "ranks_per_node", 0):  # else the launcher's environment says
        options["ranks_per_node"] = opts.ranks_per_node
    return options


def print_epoch(tag: str, epoch: int, epochs: int, loss: float, sent: float, dense: int,
                step_time: float, extra: str = "") -> None:
    """The per-epoch line every launch script prints (tests and benchmarks parse it): mean
    loss, payload bytes per step, dense/sent ratio, mean step time."""
    print(f"[{tag}] epoch {epoch + 1}/{epochs} loss {loss:.4f} bytes/step {sent:,.0f} "
          f"(dense/sent {dense / max(sent, 1):.1f}x) step {step_time * 1e3:.1f} ms{extra}",
          flush=True)


def run_guarded(script: str, rank: int, fn) -> int:
    """``fn()``'s exit code; a lost peer, a timeout or a bad setting or checkpoint becomes one
    line on stderr naming the rank, and exit code 1. The process group is always torn down.

    Objects in reference cycles that hold process groups (DeepSpeed's engine does) are
    collected first, so that no gloo destructor runs during the interpreter's finalisation,
    where it can abort the process ("terminate called without an active exception")."""
    try:
        return fn()
    except (RuntimeError, ValueError) as err:
        hint = "" if isinstance(err, ValueError) or "peer" in str(err) else \
            " (a peer rank may have been lost or stopped responding)"
        print(f"{script}: rank {rank}: {type(err).__name__}: {err}{hint}", file=sys.stderr,
              flush=True)
        return 1
    finally:
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()


EXIT_PREEMPTED = 128 + signal.SIGTERM


class StopRequest:
    """Set by SIGTERM; :meth:`agreed` turns it into the same decision on every rank.

    Ranks get the signal at different steps (or one rank only), so a rank cannot simply stop:
    the others would wait in their next collective until the timeout. Every ``every`` steps all
    ranks all-reduce their flag (4 bytes, MAX); all see the same result at the same step.
    """

    def __init__(self, every: int, timeout_s: float):
        self.every, self.timeout_s, self.requested = every, timeout_s, False
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, step: int, device: torch.device) -> bool:
        if step % self.every:
            return False
        flag = torch.tensor([float(self.requested)], device=device)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True)
        wait_work(work, "all_reduce of the stop flag", self.timeout_s)
        return bool(flag.item())


def init_distributed(timeout_s: float) -> tuple[int, int]:
    """Join the process group as torchrun or mpirun started us; (rank, world size)."""
    env = os.environ
    if "RANK" not in env:
        mpi = [("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"),
               ("PMIX_RANK", "PMIX_SIZE")]
        found = next(((r, s) for r, s in mpi if r in env and s in env), None)
        if found is None:
            raise SystemExit("train.py: no launcher found (neither torchrun's RANK nor an MPI "
                             "rank variable is set): run it with torchrun --nproc_per_node=N "
                             "launch/train.py ... or mpirun -n N python launch/train.py ...")
        rank, world = int(env[found[0]]), int(env[found[1]])
        addr, port = _rendezvous_from_mpi(rank, world)
        env.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR=addr,
                   MASTER_PORT=str(port))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        dist.init_process_group(backend, timeout=timeout, **_attempt_store(timeout))
    else:
        dist.init_process_group(backend, timeout=timeout)
    if backend == "nccl":
        torch.cuda.set_device(int(env.get("LOCAL_RANK", env.get("OMPI_COMM_WORLD_LOCAL_RANK",
                                                                 0))))
    return dist.get_rank(), dist.get_world_size()


def _attempt_store(timeout: datetime.timedelta) -> dict:
    """Under torchrun, the process group's keys in a namespace of this restart attempt's own.

    torchrun's agent keeps its store across ``--max-restarts`` restarts, and the default group
    keys its rendezvous the same way in every attempt, so a restarted rank can read a killed
    peer's address from the previous attempt and fail with "connection refused" (seen here
    on gloo; pytorch/pytorch#167288 on NCCL). The attempt number comes from the store itself
    (every worker of an attempt adds 1 once), the same on every node, which
    TORCHELASTIC_RESTART_COUNT is not (pytorch/pytorch#108158)."""
    env = os.environ
    world = int(env["WORLD_SIZE"])
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False,
                          timeout=timeout)
    attempt = (store.add("distcomp/workers_started", 1) - 1) // world
    return {"store": dist.PrefixStore(f"distcomp/attempt{attempt}", store),
            "rank": int(env["RANK"]), "world_size": world}


def _rendezvous_from_mpi(rank: int, world: int) -> tuple[str, int]:
    """Rank 0's address and a free port, broadcast with mpi4py; without mpi4py, MASTER_ADDR /
    MASTER_PORT from the environment, or the loopback when every rank is on this node."""
    try:
        from mpi4py import MPI
    except ImportError:
        local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "0"))
        if "MASTER_ADDR" in os.environ:
            return os.environ["MASTER_ADDR"], int(os.environ.get("MASTER_PORT", 29500))
        if local == world:
            return "127.0.0.1", int(os.environ.get("MASTER_PORT", 29500))
        raise SystemExit("train.py: under mpirun across nodes, install mpi4py (the mpi extra) "
                         "or set MASTER_ADDR/MASTER_PORT to rank 0's host") from None
    here = None
    if rank == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        here = (socket.gethostbyname(socket.gethostname()), port)
    return MPI.COMM_WORLD.bcast(here, root=0)


def make_task(opts: Options, rank: int):
    if opts.workload == "teacher":
        return TeacherTask(opts.batch_size, opts.width, opts.seed)
    from distcomp.workloads import WORKLOADS, prepare

    if rank == 0:
        prepare(opts.data_dir)
    dist.barrier()
    return WORKLOADS[opts.workload](opts.data_dir, seed=opts.seed)


def main(argv=None) -> int:
    opts = parse_args(argv)
    rank, world = init_distributed(opts.timeout_s)
    return run_guarded("train.py", rank,
                       lambda: 0 if train(opts, rank, world) else EXIT_PREEMPTED)


def train(opts: Options, rank: int, world: int) -> bool:
    """Train; False if stopped early by SIGTERM (after saving, with --checkpoint-dir)."""
    stop = StopRequest(opts.stop_check_steps, opts.timeout_s)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    task = make_task(opts, rank)
    torch.manual_seed(opts.seed)
    model = DDP(task.model().to(device))
    opt = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=MOMENTUM)
    state = None
    if opts.comm == "co2":
        # distcomp: local steps, pseudo-gradient averaged in the background every tau steps
        model.register_comm_hook(None, local_hook)
        topo = {"ranks_per_node": opts.ranks_per_node} if opts.ranks_per_node else {}
        opt = CO2(opt, model, tau=opts.tau, timeout_s=opts.timeout_s, **topo)
        if rank == 0 and opt.node is not None:
            t = opt.node.topology
            print(f"train.py: CO2 across {t.nodes} nodes x {t.ranks_per_node} ranks: gradients "
                  "averaged inside a node every step, outer rounds only between nodes",
                  flush=True)
    elif opts.comm != "none":
        # distcomp: the one-line change (compressed gradient all-reduce)
        state = attach(model, opts.comm, optimizer=opt, **comm_options(opts))
        if rank == 0 and state.hier is not None:
            t = state.hier.topology
            print(f"train.py: averaging in three stages, {t.nodes} nodes x {t.ranks_per_node} "
                  "ranks: dense inside a node, compressed only between nodes", flush=True)
    # distcomp: states hold a thread and a process group; closed before the group is destroyed
    try:
        return _loop(opts, rank, world, task, model, opt, state, stop, device)
    finally:
        for resource in (state, opt):
            if hasattr(resource, "close"):
                resource.close()


def _loop(opts: Options, rank: int, world: int, task, model: DDP, opt, state, stop: StopRequest,
          device: torch.device) -> bool:
    ledger = state.ledger if state is not None else getattr(opt, "ledger", None)
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    step = 0
    if opts.resume:
        done = latest(opts.checkpoint_dir, world)
        if done is not None:
            saved = load_rank(opts.checkpoint_dir, done, rank)
            model.module.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            if state is not None:
                state.load_state_dict(saved["comm"])
            step = saved["step"]
            if rank == 0:
                print(f"[{opts.comm}] resumed at step {step}", flush=True)

    def save(step: int) -> None:
        save_rank(opts.checkpoint_dir, step, rank, world, {
            "model": model.module.state_dict(), "optimizer": opt.state_dict(),
            "comm": state.state_dict() if state is not None else None, "step": step})

    def link_bytes(count: int) -> tuple[float, float]:
        if ledger is not None and ledger.per_step:
            return ledger.mean_bytes_per_step(last=count), dense_bytes
        return dense_bytes, dense_bytes

    if not run_epochs(opts, rank, task, model, opt, stop, device, step, opts.comm, save,
                      link_bytes):
        return False
    if isinstance(opt, CO2):
        opt.synchronize()
    return True


def run_epochs(opts, rank: int, task, model, opt, stop: StopRequest, device: torch.device,
               step: int, tag: str, save, link_bytes) -> bool:
    """The epoch loop every launch script with checkpoints shares, from ``step`` to
    ``opts.epochs``: one line per epoch (``link_bytes(steps)`` -> (sent, dense) bytes per step),
    ``save(step)`` after each epoch and when the ranks agree on a SIGTERM (with
    ``--checkpoint-dir``), ``--log-json`` at the end. False if stopped by SIGTERM."""
    world = dist.get_world_size()
    log = []
    for epoch in range(step // opts.steps_per_epoch, opts.epochs):
        start, total, count = time.perf_counter(), 0.0, 0
        while count == 0 or step % opts.steps_per_epoch:
            x, y = task.batch(step, rank)
            loss = task.loss(model(x.to(device)), y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            count += 1
            log.append({"step": step, "loss": loss.item()})
            step += 1
            if stop.agreed(step, device):
                if opts.checkpoint_dir:
                    save(step)
                if rank == 0:
                    saved = f"saved step {step}" if opts.checkpoint_dir else "no --checkpoint-dir"
                    print(f"[{tag}] SIGTERM: stopped at step {step} ({saved})", flush=True)
                _write_log(opts, rank, log)
                return False
        step_time = (time.perf_counter() - start) / count
        mean = torch.tensor([total / count], device=device)
        dist.all_reduce(mean)
        sent, dense = link_bytes(count)
        if rank == 0:
            print_epoch(tag, epoch, opts.epochs, mean.item() / world, sent, dense, step_time)
        if opts.checkpoint_dir:
            save(step)
    _write_log(opts, rank, log)
    return True


def _write_log(opts: Options, rank: int, log: list) -> None:
    if rank == 0 and opts.log_json:
        Path(opts.log_json).write_text(json.dumps(log))


if __name__ == "__main__":
    sys.exit(main())
