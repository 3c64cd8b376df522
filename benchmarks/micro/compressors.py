"""Compressors side by side on real gradients: bytes, relative error and compute time.

    python -m benchmarks.micro.compressors [--json PATH] [--repeats N]

The gradients are real: one backward pass of a 32-1024-1024-10 MLP on the offline teacher task
(see launch/train.py), taken after a few SGD steps. For each registered method at three
settings (:func:`sweep`: L-GreCo's harshest candidate, the default, the gentle setting):
bytes sent per step (the ledger's unit: payload this rank hands to collectives), compression
ratio vs dense fp32, relative error ||g - C(g)|| / ||g|| of one compression round on one rank,
and the median time of compress + decompress on this machine (single rank, no network).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from benchmarks.common import environment, write_json
from distcomp import LGreCoConfig, get_compressor, method_names
from distcomp.workloads.teacher import TeacherTask


def sweep(name: str) -> list[dict]:
    """Three settings of a method, as option dicts: L-GreCo's harshest candidate for a
    1024 x 1024 layer, the default, and the Accordion-style schedule's gentle setting."""
    comp = get_compressor(name)
    harsh = comp.candidates(comp.setting, torch.Size([1024, 1024]),
                            LGreCoConfig().plan_for(name))
    harshest = min(harsh, key=lambda s: comp.wire_bytes(torch.Size([1024, 1024]), s))
    points = [harshest, comp.setting, comp.gentle(comp.setting)]
    return [{comp.knob: s} for s in dict.fromkeys(points)]


SETTINGS = [(name, setting) for name in method_names() for setting in sweep(name)]


def real_gradients(seed: int = 0) -> dict[str, torch.Tensor]:
    """The weight gradients of a 1024-wide teacher MLP after 20 SGD steps: real, offline."""
    torch.manual_seed(seed)
    task = TeacherTask(batch_size=256, width=1024, seed=seed)
    model = task.model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(20):
        x, y = task.batch(step, 0)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.ndim >= 2}


def one_round(method: str, setting: dict, g: torch.Tensor, gen: torch.Generator):
    """(C(g), payload bytes): one compression round of one rank alone, through the method's
    own reduce (:meth:`~distcomp.compression.compressor.Compressor.roundtrip`)."""
    comp = get_compressor(method, **setting)
    return comp.roundtrip(g, comp.setting, gen), comp.wire_bytes(g.shape, comp.setting)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench-results/compressors.json")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    grads = real_gradients()
    dense = sum(4 * g.numel() for g in grads.values())
    results = []
    for method, setting in SETTINGS:
        gen = torch.Generator().manual_seed(0)
        times, sent, err2, norm2 = [], 0, 0.0, 0.0
        for rep in range(args.repeats):
            start = time.perf_counter()
            outs = {k: one_round(method, setting, g, gen) for k, g in grads.items()}
            times.append(time.perf_counter() - start)
            if rep == 0:
                for k, (approx, nbytes) in outs.items():
                    sent += nbytes
                    err2 += float((grads[k] - approx).pow(2).sum())
                    norm2 += float(grads[k].pow(2).sum())
        results.append({
            "method": method, "setting": "{}={}".format(*next(iter(setting.items()))),
            "bytes": sent, "dense_bytes": dense,
            "ratio": dense / sent, "rel_error": (err2 / norm2) ** 0.5,
            "ms": statistics.median(times) * 1e3,
        })
    write_json(args.json, {"benchmark": "compressors", "env": environment(), "results": results})
    summary = ", ".join(
        f"{r['method']}({r['setting']})={r['ratio']:.0f}x/err{r['rel_error']:.2f}/{r['ms']:.0f}ms"
        for r in results
    )
    print(f"compressors on {dense / 1e6:.1f} MB of real MLP gradients: {summary} -> {args.json}")


if __name__ == "__main__":
    main()
