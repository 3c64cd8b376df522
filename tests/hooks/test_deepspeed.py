"""distcomp.hooks.deepspeed on real DeepSpeed engines, 2 gloo ranks: exact where nothing is
compressed, converging with fewer bytes where it is, resumable, refusing what it cannot do, and
a killed rank ending the survivor with a clear error."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.multiproc import run_ranks, survivor_reports_lost_peer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="needs deepspeed (`make deepspeed`, or DS_BUILD_OPS=0 pip install deepspeed)")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "launch" / "train_deepspeed.py")
DDP_SCRIPT = str(REPO / "launch" / "train.py")
# DeepSpeed JIT-compiles a small shared-memory op on CPU once (~45 s); where the script keeps it.
EXTENSIONS = str(REPO / ".torch_extensions")
# The venv's own ninja first, as an activated venv has it: ninja versions hash build commands
# differently, and a different ninja rebuilds the op.
PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": EXTENSIONS, "PATH": PATH}


def _engine(zero_stage: int = 0, grad_accum: int = 1, bf16: bool = False):
    os.environ.update(TORCH_EXTENSIONS_DIR=EXTENSIONS, PATH=PATH)
    os.environ.setdefault("LOCAL_RANK", os.environ.get("RANK", "0"))
    import deepspeed

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    config = {"train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": grad_accum,
              "zero_optimization": {"stage": zero_stage}, "zero_allow_untested_optimizer": True,
              "bf16": {"enabled": bf16}, "steps_per_print": 10**9}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config,
                                           dist_init_required=False)
    return engine


def _steps(engine, rank: int, first: int, count: int, grad_accum: int) -> list[float]:
    w = torch.randn(16, 4, generator=torch.Generator().manual_seed(99))
    losses = []
    for step in range(first, first + count):
        for micro in range(grad_accum):
            g = torch.Generator().manual_seed(step * 100 + micro * 10 + rank)
            x = torch.randn(16, 16, generator=g)
            loss = torch.nn.functional.cross_entropy(engine(x), (x @ w).argmax(1))
            engine.backward(loss)
            engine.step()
        losses.append(loss.item())
    return losses


def _train(rank, world, comm, steps=6, grad_accum=1, **options):
    from distcomp.hooks.deepspeed import DeepSpeedCompression, register_deepspeed_hook

    os.environ["RANK"] = str(rank)
    engine = _engine(grad_accum=grad_accum)
    state = None
    if comm is not None:
        state = DeepSpeedCompression(engine, comm, **options)
        register_deepspeed_hook(engine, state)
    losses = _steps(engine, rank, 0, steps, grad_accum)
    params = [p.detach().clone() for p in engine.module.parameters()]
    per_step = None if state is None else state.ledger.mean_bytes_per_step(last=steps)
    return {"losses": losses, "params": params, "bytes": per_step,
            "reductions": None if state is None else state.step}


def test_uncompressed_path_equals_deepspeeds_own_allreduce():
    """With nothing worth compressing (min_compression_rate huge) the reducer's dense path
    replaces DeepSpeed's all-reduce: same losses and weights, across accumulation windows,
    on 4 ranks."""
    own = run_ranks(_train, world=4, comm=None, grad_accum=2)
    ours = run_ranks(_train, world=4, comm="powersgd", grad_accum=2, min_compression_rate=1e9)
    for a, b in zip(own, ours):
        assert b["reductions"] == 6  # one per optimizer step, none per micro-batch
        assert a["losses"] == pytest.approx(b["losses"], rel=1e-6, abs=1e-7)
        for pa, pb in zip(a["params"], b["params"]):
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert all(ours[0]["params"][0].equal(r["params"][0]) for r in ours)  # ranks agree
    dense = sum(p.numel() * 4 for p in ours[0]["params"])
    assert ours[0]["bytes"] == dense  # every parameter, once per optimizer step


def _resume(rank, world, methods):
    return [_resume_one(rank, m) for m in methods]


def _resume_one(rank, method):
    from distcomp.hooks.deepspeed import DeepSpeedCompression, register_deepspeed_hook

    os.environ["RANK"] = str(rank)
    runs = []
    for restart in (False, True):
        engine = _engine()
        state = DeepSpeedCompression(engine, method, rank=2, density=0.1, bits=4)
        register_deepspeed_hook(engine, state)
        if not restart:
            _steps(engine, rank, 0, 4, 1)
            saved = {"model": {k: v.clone() for k, v in engine.module.state_dict().items()},
                     "optimizer": engine.optimizer.state_dict(), "comm": state.state_dict()}
            saved = torch.load(_roundtrip(saved), weights_only=False)
        else:
            engine.module.load_state_dict(saved["model"])
            engine.optimizer.load_state_dict(saved["optimizer"])
            state.load_state_dict(saved["comm"])
        runs.append(_steps(engine, rank, 4, 4, 1))
    return runs


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def _resume_and_refusals(rank, world):
    return _resume(rank, world, ["powersgd", "topk"]), _refused(rank, world)


def test_resume_from_state_dict_and_unsupported_engines_refused_on_every_rank():
    """Save after 4 steps (model, optimizer, compression state), load into a fresh engine: the
    next 4 losses equal those of the run that went on (PowerSGD's Qs and residuals, top-k's
    residuals). ZeRO 1/2 and bf16 engines are refused with the reason, on every rank."""
    for per_method, messages in run_ranks(_resume_and_refusals):
        for whole, resumed in per_method:
            assert whole == resumed
        for message, (_, expected) in zip(messages, REFUSED):
            assert message is not None and expected in message, message


REFUSED = [((1, False), "ZeRO stage 0 only, this engine uses stage 1"),
           ((2, False), "ZeRO stage 0 only, this engine uses stage 2"),
           ((0, True), "does not support bfloat16")]


def _refused(rank, world):
    from distcomp.hooks.deepspeed import DeepSpeedCompression

    os.environ["RANK"] = str(rank)
    messages = []
    for (zero_stage, bf16), _ in REFUSED:
        engine = _engine(zero_stage=zero_stage, bf16=bf16)
        try:
            DeepSpeedCompression(engine, "powersgd")
            messages.append(None)
        except ValueError as err:
            messages.append(str(err))
    return messages



def test_script_matches_ddp_and_sends_fewer_bytes_than_deepspeed(tmp_path):
    """launch/train_deepspeed.py under torchrun takes the same steps as launch/train.py (DDP)
    with the same hook, sends the same bytes, a tenth of what DeepSpeed's comms logger
    counted for its own all-reduce, and (PowerSGD rank 4) ends near DeepSpeed's own loss.
    Run as ``make bench``'s integrations line with flags that shrink it (the other methods
    and Horovod: that line at full size)."""
    out = tmp_path / "integrations.json"
    cmd = [sys.executable, "-m", "benchmarks.integrations", "--json", str(out),
           "--frameworks", "ddp,deepspeed", "--comms", "powersgd", "--steps", "150",
           "--width", "256", "--rank", "4"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    arms = {(r["framework"], r["comm"]): r for r in json.loads(out.read_text())["results"]}
    ours, ddp = arms["deepspeed", "powersgd"], arms["ddp", "powersgd"]
    base = arms["deepspeed", "none"]
    assert ours["steps"] == ddp["steps"] == 150
    assert ours["same_losses_as_ddp"] and base["same_losses_as_ddp"]
    assert ours["bytes_per_step"] == ddp["bytes_per_step"]
    logged = base["deepspeed_logged_allreduce_bytes_per_step"]
    assert logged >= arms["ddp", "none"]["bytes_per_step"]  # the whole gradient per step
    assert ours["bytes_per_step"] < logged / 10
    assert base["final_loss"] < 0.6 * base["first_loss"]  # it learns: a meaningful comparison
    assert ours["final_loss"] < 1.15 * base["final_loss"], (ours, base)


def test_a_killed_rank_ends_the_survivor_with_a_clear_error():
    survivor_reports_lost_peer(SCRIPT, ["--comm", "powersgd", "--epochs", "100000",
                                        "--steps-per-epoch", "2", "--width", "32"], ENV,
                               "train_deepspeed.py: rank 0:", timeout_s=15)
