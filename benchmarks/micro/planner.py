"""Cost of one L-GreCo re-plan of a 100-layer model: error statistics + dynamic program.

    python -m benchmarks.micro.planner [--layers 100] [--json PATH]

Layers cycle through transformer-like shapes (256x256, 768x256, 1024x256, 256x1024); their
gradients are low-rank plus noise. For each family at its default uniform setting and default
candidate sets, times (single thread, median of 3) one full re-plan: every candidate's error for
every layer, then the DP over the default 10000 error bins; and the DP alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import environment, write_json
from distcomp import CompressionConfig, method_names
from distcomp.compression.lgreco import LGreCo, LGreCoConfig
from distcomp.compression.planner import solve

SHAPES = [(256, 256), (768, 256), (1024, 256), (256, 1024)]


def gradients(layers: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for i in range(layers):
        n, m = SHAPES[i % len(SHAPES)]
        low = torch.randn(n, 8, generator=gen) @ torch.randn(8, m, generator=gen)
        out[f"layer{i:03d}.weight"] = low + 0.1 * torch.randn(n, m, generator=gen)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=100)
    p.add_argument("--json", default="bench-results/planner.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    grads = gradients(args.layers)
    results = []
    for method in method_names():
        config = CompressionConfig(method)
        comp = config.compressor()
        plan_times, dp_times = [], []
        for _ in range(3):
            lg = LGreCo(LGreCoConfig(warmup_steps=1, window=1), comp,
                        comp.validate_setting(config.setting), 1.0)
            for k, g in grads.items():
                lg.observe(k, g, step=0)
            start = time.perf_counter()
            lg.plan(1, lambda t: t)
            plan_times.append(time.perf_counter() - start)
            rows = lg.rows
            start = time.perf_counter()
            solve([[r["bytes"]] * 9 for r in rows], [[r["error"]] * 9 for r in rows],
                  sum(r["uniform_error"] for r in rows), lg.config.bins)
            dp_times.append(time.perf_counter() - start)
        last = lg.plans[-1]
        results.append({
            "method": method, "layers": args.layers,
            "plan_s": statistics.median(plan_times), "dp_s": statistics.median(dp_times),
            "bytes_over_uniform": last["bytes"] / last["uniform_bytes"],
            "error_ratio": last["error"] / last["uniform_error"],
        })
    write_json(args.json, {"benchmark": "planner", "env": environment(), "results": results})
    line = ", ".join(f"{r['method']} {r['plan_s']:.3f}s (DP {r['dp_s'] * 1e3:.0f}ms)"
                     for r in results)
    print(f"one re-plan of a {args.layers}-layer model: {line} -> {args.json}")


if __name__ == "__main__":
    main()
