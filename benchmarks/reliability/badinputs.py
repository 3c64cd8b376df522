"""The bad-input catalogue, run for real: every case of
``benchmarks.reliability.badinput_cases`` in fresh processes, one record each.

    python -m benchmarks.reliability.badinputs --json benchmarks/results/badinputs.json

A case runs in ``ranks`` processes forked from a server that has imported the package once
(so a case costs a fork, not an interpreter start), each in a process group of its own, with a
gloo group over a file store when the case needs one. A case still running after ``--timeout``
seconds is killed (whole process group) and recorded as hung. Record fields: case, component,
expected and seen outcome ("error" | "works"), error type and message (first rank that
raised), exit code (CLI and script cases), whether files appeared or changed under the case's
directory after a refusal (partial output), hung, seconds, and ok = the expected outcome
happened, the error names ``match``, a CLI error is one line with exit code 2, nothing partial
was left and nothing hung. The same catalogue runs as
``tests/benchmarks/reliability/test_badinputs.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import multiprocessing as mp
import os
import signal
import tempfile
import time
from pathlib import Path

from benchmarks.common import environment, replace_block, write_json

CTX = mp.get_context("forkserver")
# Imported once, not per case. Not torch._dynamo (the first optimizer built imports it, ~2 s):
# forked after it is imported, torch's fp16 DDP hook hung at teardown in 5 of 12 soak runs.
CTX.set_forkserver_preload(["benchmarks.reliability.badinput_cases", "distcomp.data.cli",
                            "datasets", "distcomp.hooks.ddp", "distcomp.gnn.pipeline"])


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if not p.name.startswith("store")}


def _child(source: str, name: str, rank: int, world: int, work: str, queue) -> None:
    os.setpgrp()  # the runner kills the whole group if the case hangs
    import importlib

    import torch
    import torch.distributed as dist

    from benchmarks.reliability.badinput_types import Ctx, ExitStatus

    torch.set_num_threads(1)
    module, attr = source.split(":")
    case = next(c for c in getattr(importlib.import_module(module), attr) if c.name == name)
    ctx = Ctx(rank, world, Path(work))
    result = {"rank": rank, "outcome": "works", "error_type": None, "message": "",
              "exit_code": None}
    try:
        if case.group:
            store = dist.FileStore(str(ctx.work / "store"), world)
            dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=30))
        if rank == 0 and case.setup is not None:
            case.setup(ctx)
        if case.group:
            dist.barrier()
        queue.put(("ready", rank, _snapshot(ctx.work) if rank == 0 else None))
        case.act(ctx)
    except ExitStatus as err:  # the record keeps the last line (argparse prints usage first)
        lines = str(err).splitlines() or [""]
        result.update(outcome="error", error_type="exit", message=lines[-1],
                      exit_code=err.code, stderr_lines=len(lines))
    except BaseException as err:  # noqa: BLE001 - recorded, not raised
        result.update(outcome="error", error_type=type(err).__name__, message=str(err))
    if case.group and dist.is_initialized():
        dist.destroy_process_group()
    queue.put(("done", rank, result))


def run_case(case, root: Path, timeout_s: float = 90.0,
             source: str = "benchmarks.reliability.badinput_cases:CASES") -> dict:
    """Run one case in fresh processes under ``root``; its record (see the module doc).
    ``source`` ("module:list") is where the processes look the case up by name."""
    work = Path(tempfile.mkdtemp(prefix=f"{case.name}-", dir=root))
    queue = CTX.Queue()
    start = time.monotonic()
    procs = [CTX.Process(target=_child, args=(source, case.name, r, case.ranks, str(work), queue))
             for r in range(case.ranks)]
    for p in procs:
        p.start()
    before, results = None, {}
    while len(results) < case.ranks and time.monotonic() - start < timeout_s:
        try:
            kind, rank, value = queue.get(timeout=0.2)
        except Exception:  # noqa: BLE001 - queue.Empty: nothing yet
            if all(p.exitcode is not None for p in procs) and queue.empty():
                break
            continue
        if kind == "ready" and rank == 0:
            before = value
        elif kind == "done":
            results[rank] = value
    for p in procs:  # a process that reported but never exits is hung too
        p.join(max(0.0, min(10.0, start + timeout_s - time.monotonic())))
    hung = len(results) < case.ranks or any(p.is_alive() for p in procs)
    queue.close()
    queue.join_thread()
    for p in procs:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        p.join(5)
    seen = next((r for r in results.values() if r["outcome"] == "error"),
                results.get(0, {"outcome": "error", "error_type": "hang", "message": "",
                                "exit_code": None}))
    if hung:
        seen = {**seen, "outcome": "error", "error_type": "hang",
                "message": f"no result within {timeout_s:.0f} s"}
    partial = seen["outcome"] == "error" and before is not None and _snapshot(work) != before
    record = {"case": case.name, "component": case.component, "expected": case.expect,
              "outcome": seen["outcome"], "error_type": seen["error_type"],
              "message": seen["message"][:400], "exit_code": seen["exit_code"],
              "partial_output": partial, "hung": hung,
              "seconds": round(time.monotonic() - start, 2)}
    record["ok"] = _ok(case, record, results)
    return record


def _ok(case, rec: dict, results: dict) -> bool:
    if rec["hung"] or rec["partial_output"] or rec["outcome"] != case.expect:
        return False
    if case.expect == "works":
        return True
    if case.ranks > 1 and any(r["outcome"] != "error" for r in results.values()):
        return False  # one rank refused, another went on: that is a hang waiting to happen
    if case.match not in rec["message"]:
        return False
    if rec["error_type"] == "exit":  # the data CLI: one line; a script: argparse's usage too
        one_line = case.component != "data-cli" or all(
            r.get("stderr_lines", 1) == 1 for r in results.values())
        return rec["exit_code"] == 2 and one_line
    return True


def table(records: list[dict]) -> str:
    """README block: per component, cases tried, handled as expected, hung, partial output,
    and which ones are supported (work)."""
    lines = ["| component | cases | handled as expected | hung | left partial output | "
             "supported (work) |", "|---|---|---|---|---|---|"]
    for comp in dict.fromkeys(r["component"] for r in records):
        rows = [r for r in records if r["component"] == comp]
        works = ", ".join(r["case"] for r in rows if r["expected"] == "works") or "-"
        lines.append(f"| {comp} | {len(rows)} | {sum(r['ok'] for r in rows)} | "
                     f"{sum(r['hung'] for r in rows)} | "
                     f"{sum(r['partial_output'] for r in rows)} | {works} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from benchmarks.reliability.badinput_cases import CASES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--cases", default="", help="comma-separated case names (default all)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per case")
    parser.add_argument("--readme", help="regenerate this README's catalogue table from --json")
    args = parser.parse_args(argv)
    if args.readme:
        import json
        body = table(json.loads(Path(args.json).read_text())["results"])
        replace_block(args.readme, "<!-- badinputs:start -->", "<!-- badinputs:end -->", body)
        return 0
    chosen = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    records = []
    with tempfile.TemporaryDirectory() as root:
        for case in chosen:
            records.append(run_case(case, Path(root), args.timeout))
            r = records[-1]
            print(f"  {'ok ' if r['ok'] else 'BAD'} {r['case']:30s} {r['outcome']:5s} "
                  f"{r['seconds']:5.1f} s  {r['message'][:70]}", flush=True)
    write_json(args.json, {"benchmark": "badinputs", "environment": environment(),
                           "config": vars(args), "results": records})
    bad = [r["case"] for r in records if not r["ok"]]
    print(f"badinputs: {len(records) - len(bad)}/{len(records)} handled as expected, "
          f"{sum(r['hung'] for r in records)} hung, "
          f"{sum(r['partial_output'] for r in records)} left partial output"
          + (f"; not as expected: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
