"""Helpers every benchmark shares: JSON output written atomically, environment description,
README blocks regenerated between markers."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch


def environment(packages: tuple[str, ...] = ()) -> dict:
    """Where a figure was measured. ``packages``: distributions whose versions can change the
    figure (e.g. the ones that generate a dataset), recorded as {name: version or None}."""
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "kernel": platform.release(),
    }
    if packages:
        env["packages"] = {name: _version(name) for name in packages}
    return env


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


NATIVE_ABORT = "terminate called"
"""What a rank prints when gloo's C++ side calls std::terminate. Seen rarely under load, with no
Python error before it, at a process group's teardown: a benchmark runs such a run once more
(on a fresh port, ``RETRY_PORT_OFFSET`` up) and keeps the first attempt's error in the record."""
RETRY_PORT_OFFSET = 500
PEER_GRACE_S = 20.0  # how long the other ranks may run on after one failed


def free_port() -> int:
    """A TCP port free on the loopback now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(target, world: int, args: tuple, timeout_s: float) -> list[int | None]:
    """Run ``target(rank, *args)`` in ``world`` spawned processes with one OpenMP thread each;
    return their exit codes (None for one still running at ``timeout_s``, which is killed).
    Once a rank has failed, the others get ``PEER_GRACE_S`` to finish and are then killed: they
    would wait for it in the rendezvous or a collective until their own timeouts."""
    ctx = torch.multiprocessing.get_context("spawn")
    env = dict(os.environ)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        procs = [ctx.Process(target=target, args=(r, *args)) for r in range(world)]
        for p in procs:
            p.start()
    finally:
        os.environ.clear()
        os.environ.update(env)
    start, failed_at = time.monotonic(), None
    while any(p.is_alive() for p in procs) and time.monotonic() - start < timeout_s:
        if failed_at is None and any(p.exitcode for p in procs):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > PEER_GRACE_S:
            break
        time.sleep(0.2)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    return codes


def write_json(path: str | Path, payload: dict) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def replace_block(readme: str | Path, start: str, end: str, body: str) -> None:
    """Replace the text between the ``start`` and ``end`` markers of ``readme`` with ``body``
    (atomically); exits with a message if the markers are missing."""
    path = Path(readme)
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} block to regenerate")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(head + start + "\n" + body + end + tail)
    tmp.replace(path)


def reap(procs: dict, logs: dict) -> dict[str, str]:
    """Kill what still runs of ``procs`` (whole process groups: they are started with
    ``start_new_session``), then return and close each log file's text, by name."""
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    texts = {}
    for name, f in logs.items():
        f.seek(0)
        texts[name] = f.read()
        f.close()
    return texts


def ci95(values) -> float:
    """Half-width of the 95% confidence interval of the mean of ``values`` (paired differences
    or ratios, one per seed; Student t, n - 1 degrees of freedom): a mean closer to its null
    than this is not resolved. 0 for a single seed."""
    import numpy as np
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    return float(t.ppf(0.975, n - 1) * v.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
