"""Dataset quantization end to end at scale: time and peak memory as n grows.

    python -m benchmarks.data.scale [--n 1000000] [--dim 128] [--binning kmeans] --json PATH

Synthetic clustered embeddings (10 classes, each a mixture of 20 Gaussian clusters on the unit
sphere), then :func:`distcomp.data.quantize.quantize` at ratio 0.1 with its default bins: 10
GraphCut bins and the default method choice, or with ``--binning kmeans`` one k-means bin per
3 kept samples. Each size runs in a fresh process so its peak RSS (ru_maxrss) is its own; sizes are
1e5, 3e5 and ``--n``. Records: {"n", "dim", "seconds", "peak_rss_bytes", "method", "kept"},
method being "exact" or "knn" (GraphCut) or "kmeans".
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import environment, write_json


def synthetic(n: int, dim: int, seed: int = 0, classes: int = 10, modes: int = 20):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, modes, dim)).astype(np.float32)
    mode = rng.integers(0, modes, n)
    x = centres[labels, mode]
    x += 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    return x, labels


def one(n: int, dim: int, binning: str = "graphcut") -> dict:
    from distcomp.data.quantize import graphcut_method, quantize

    x, labels = synthetic(n, dim)
    start = time.perf_counter()
    keep = quantize(x, labels, 0.1, seed=0, binning=binning)
    seconds = time.perf_counter() - start
    per_class = int(np.bincount(labels).max())
    method = "kmeans" if binning == "kmeans" else graphcut_method("auto", per_class)
    return {"n": n, "dim": dim, "seconds": round(seconds, 2),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "method": method, "kept": int(len(keep))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--sizes", default=None, help="comma list (default: 100000,300000,N)")
    p.add_argument("--binning", choices=("graphcut", "kmeans"), default="graphcut")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default="bench-results/data_scale.json")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.n, args.dim, args.binning)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else sorted(
        {100_000, 300_000, args.n})
    results = []
    for n in sizes:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.data.scale", "--one", "--n",
                               str(n), "--dim", str(args.dim), "--binning", args.binning],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            results.append({"n": n, "dim": args.dim, "error": proc.stderr.strip()[-2000:]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {results[-1]}", file=sys.stderr, flush=True)
    payload = {"benchmark": "data_scale", "results": results, "config": {
        "command": "python -m benchmarks.data.scale " + " ".join(
            argv if argv is not None else sys.argv[1:]), "env": environment()}}
    write_json(args.json, payload)
    print("data_scale: " + ", ".join(
        f"n={r['n']}: {r['seconds']} s, {r['peak_rss_bytes'] / 2**30:.2f} GiB"
        if "seconds" in r else f"n={r['n']}: error" for r in results) + f" -> {args.json}")
    return 0 if all("seconds" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
