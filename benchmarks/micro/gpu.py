"""Compression on the GPU: how fast each compressor runs, and at which link speed it stops paying.

    python -m benchmarks.micro.gpu [--elements 25000000,100000000] [--repeats 5] [--json PATH]

For each compressor and setting (those of ``benchmarks.micro.compressors``), on a gradient of
25-100 M fp32 elements (a (n / 4096, 4096) matrix of Gaussian entries: PowerSGD sees one large
layer),
the median time of compress + decompress of one round on one GPU, timed with CUDA events,
and its throughput in GB/s of gradient, beside the GPU's memory bandwidth measured in the same
run (a device-to-device copy: bytes read + written per second).

Then the all-reduce the compression replaces, computed from the bytes for two nodes at 10, 100
and 400 Gbit/s: a dense all-reduce moves 4n bytes each way, the compressed one the payload, so

    dense time  = 4n / link,    compressed time = codec time + payload / link,

and compression pays while the codec time is below what it saves on the wire: up to the link
speed 8 (4n - payload) / codec time. That break-even speed, per method and setting, is the
answer README's "Choosing a method" needs: above it, send the gradient dense.

Without a CUDA device it measures nothing: it says so in one line and writes a JSON whose
``status`` says why (CI runs it that way, so the command never rots).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks.common import environment, write_json
from benchmarks.micro.compressors import SETTINGS, one_round

LINKS_GBIT = (10, 100, 400)


def timed(fn, repeats: int, device: str = "cuda") -> float:
    """Median seconds of ``fn()`` after one warm-up: CUDA events on the current stream (the
    host returns before the kernels finish), the host clock on the CPU (tests)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(n: int, repeats: int, device: str = "cuda") -> float:
    """Device memory bandwidth in GB/s: bytes read plus written by a device-to-device copy."""
    x = torch.empty(n, device=device)
    y = torch.empty_like(x)
    return 2 * 4 * n / timed(lambda: y.copy_(x), repeats, device) / 1e9


def links(dense: int, payload: int, codec_s: float) -> dict:
    """Per link speed, the dense and compressed all-reduce time (s) and the break-even speed."""
    out = {}
    for gbit in LINKS_GBIT:
        rate = gbit * 1e9 / 8
        out[f"{gbit}gbit"] = {"dense_s": dense / rate, "compressed_s": codec_s + payload / rate}
    saved = dense - payload
    out["pays_below_gbit"] = 8 * saved / codec_s / 1e9 if codec_s > 0 and saved > 0 else None
    return out


def measure(n: int, repeats: int, device: str = "cuda") -> list[dict]:
    """One row per compressor setting on an (n / 4096, 4096) Gaussian gradient."""
    gen = torch.Generator(device).manual_seed(0)
    g = torch.randn(n // 4096, 4096, device=device, generator=gen)
    dense = 4 * g.numel()
    rows = []
    for method, setting in SETTINGS:
        gen = torch.Generator(device).manual_seed(0)
        approx, payload = one_round(method, setting, g, gen)
        rel = float((g - approx).norm() / g.norm())
        seconds = timed(lambda m=method, s=setting, r=gen: one_round(m, s, g, r), repeats, device)
        rows.append({
            "elements": g.numel(), "method": method,
            "setting": "{}={}".format(*next(iter(setting.items()))),
            "dense_bytes": dense, "payload_bytes": payload, "rel_error": rel,
            "codec_s": seconds, "codec_gb_per_s": dense / seconds / 1e9,
            **links(dense, payload, seconds),
        })
        del approx
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--elements", default="25000000,100000000",
                   help="comma list of gradient sizes in fp32 elements")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="bench-results/gpu.json")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.elements.split(",") if s]
    if any(s < 4096 for s in sizes) or args.repeats < 1:
        p.error("--elements must be >= 4096 each, --repeats >= 1")
    command = "python -m benchmarks.micro.gpu " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    if not torch.cuda.is_available():
        why = "no CUDA device (torch.cuda.is_available() is False): nothing measured"
        write_json(args.json, {"benchmark": "gpu", "status": "skipped", "reason": why,
                               "command": command, "env": environment()})
        print(f"gpu: skipped, {why} -> {args.json}")
        return 0
    device = torch.cuda.get_device_name()
    bandwidth = copy_bandwidth(max(sizes), args.repeats)
    rows = [r for n in sizes for r in measure(n, args.repeats)]
    for r in rows:
        r["codec_over_copy_bandwidth"] = r["codec_gb_per_s"] / bandwidth
    write_json(args.json, {"benchmark": "gpu", "status": "ok", "device": device,
                           "copy_gb_per_s": bandwidth, "command": command,
                           "env": environment(), "results": rows})
    big = [r for r in rows if r["elements"] == max(r["elements"] for r in rows)]
    print(f"gpu {device}: copy {bandwidth:.0f} GB/s; compression pays below: " + ", ".join(
        f"{r['method']}({r['setting']}) "
        + (f"{r['pays_below_gbit']:.0f} Gbit/s" if r["pays_below_gbit"] else "never")
        for r in big) + f" -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
