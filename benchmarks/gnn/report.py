"""README table from ``benchmarks.gnn.gnnpipe`` JSON.

    python -m benchmarks.gnn.report --readme README.md RESULTS.json
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks.common import replace_block

START, END = "<!-- gnnpipe:start -->", "<!-- gnnpipe:end -->"


def render(payload: dict, path: str) -> list[str]:
    cfg, f = payload["config"], payload["figures"]
    net = f"two hosts, {cfg['bandwidth']}" if cfg["two_hosts"] else "loopback"
    lines = [f"{cfg['nodes']:,}-vertex SBM, {cfg['epochs']} epochs, {cfg['chunks']} chunks, "
             f"multi-rank modes on {net}. Bytes: ledger, all ranks, training only; time: "
             f"slowest rank's mean epoch after 2 warm-up epochs; accuracy: final model. "
             f"Command: `{cfg['command']}` → `{path}` ({cfg['seconds']:.0f} s)", "",
             "| layers | mode | ranks | MB / epoch | s / epoch | test acc | stale reads |",
             "|---|---|---|---|---|---|---|"]
    for r in payload["results"]:
        if r["status"] != "ok":
            lines.append(f"| {r['layers']} | {r['mode']} | {r['ranks']} | error | | | |")
            continue
        lines.append(f"| {r['layers']} | {r['mode']} | {r['ranks']} | "
                     f"{r['bytes_per_epoch'] / 1e6:.2f} | {r['epoch_time_s']:.2f} | "
                     f"{100 * r['test_acc']:.1f}% | {100 * r['staleness']:.0f}% |")

    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    lines += ["", f"At {f['layers']} layers: graph-parallel / pipeline bytes "
              f"**{fmt(f['graph_parallel_over_pipeline_bytes'], '.1f')}×** (goal ≥ 8), pipeline "
              f"− single test accuracy **{fmt(f['pipeline_minus_single_test_acc_points'], '+.1f')}"
              f" points** (goal within ±2), pipeline / graph-parallel epoch time "
              f"**{fmt(f['pipeline_over_graph_parallel_time'], '.2f')}** (goal < 1)."]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", required=True)
    p.add_argument("results")
    args = p.parse_args()
    with open(args.results) as f:
        block = render(json.load(f), os.path.relpath(args.results))
    replace_block(args.readme, START, END, "\n".join(block) + "\n")


if __name__ == "__main__":
    main()
