"""README tables from ``benchmarks.data.quality`` and ``benchmarks.data.scale`` JSON.

    python -m benchmarks.data.report --readme README.md [--val VAL.json] QUALITY.json SCALE.json

VAL.json is a ``--split val`` run of data_quality (how its defaults were chosen), shown first.
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks.common import replace_block

START, END = "<!-- data:start -->", "<!-- data:end -->"


def _features(cfg: dict) -> str:
    names = {"input": "the standardised inputs", "probe": "the probe's hidden layer"}
    auto = cfg.get("auto_features")
    if auto:
        return "embedding methods compare samples by " + ", ".join(
            f"{m}: {names[f]}" for m, f in auto.items()) + " (chosen on the validation split)"
    return f"embedding methods compare samples by {names[cfg.get('features', 'probe')]}"


def quality(payload: dict, path: str) -> list[str]:
    cfg = payload["config"]
    where = "test set" if cfg.get("split", "test") == "test" else \
        "validation split (a fifth of the training set; seeds from 100)"
    models = ", ".join(f"{d}: {m}" for d, m in cfg["models"].items())
    with_ci = all("diff_ci95" in r for r in payload["results"])
    lines = [f"Accuracy of the fixed model ({models}) trained on the subset, {where}, final "
             f"model; {_features(cfg)}; mean ± std over {cfg['seeds']} paired "
             f"seeds, difference to random in points"
             + (" ± the half-width of its 95% confidence interval (paired t)" if with_ci else "")
             + f" and wins out of {cfg['seeds']}. Command: "
             f"`{cfg['command']}` → `{path}` ({cfg['seconds']:.0f} s)", ""]
    lines += _table(payload["results"], cfg["ratios"], lambda r: (
        f"{100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f}",
        f" ({100 * r['diff_vs_random']:+.1f}"
        + (f" ± {100 * r['diff_ci95']:.1f}" if with_ci else "") + f", {r['wins']}/{r['seeds']})"))
    if all("spacing_mean" in r for r in payload["results"]):
        lines += ["", "Spacing of the kept samples in the same run: mean distance from each to "
                  "the nearest other kept sample of its class (standardised input units), "
                  "paired difference to random in brackets.", ""]
        lines += _table(payload["results"], cfg["ratios"], lambda r: (
            f"{r['spacing_mean']:.2f}", f" ({r['spacing_diff_vs_random']:+.2f})"))
    return lines


def _table(results: list[dict], ratios: list, cell) -> list[str]:
    """Header, then one row per (dataset, method) with a column per ratio; ``cell(record)``
    gives (value, comparison to random)."""
    rows: dict = {}
    for r in results:
        value, versus = cell(r)
        rows.setdefault((r["dataset"], r["method"]), {})[r["ratio"]] = \
            value + (versus if r["method"] != "random" else "")
    header = ["| dataset | method | " + " | ".join(f"{100 * r:.0f}%" for r in ratios) + " |",
              "|---|---|" + "---|" * len(ratios)]
    return header + [f"| {dataset} | {method} | " + " | ".join(
        cells.get(ratio, "") for ratio in ratios) + " |"
        for (dataset, method), cells in rows.items()]


def scale(payload: dict, path: str) -> list[str]:
    lines = [f"Command: `{payload['config']['command']}` → `{path}`", "",
             "| n | dim | variant | seconds | peak RSS (GiB) |", "|---|---|---|---|---|"]
    for r in payload["results"]:
        if "seconds" in r:
            lines.append(f"| {r['n']:,} | {r['dim']} | {r['method']} | {r['seconds']:.0f} | "
                         f"{r['peak_rss_bytes'] / 2**30:.2f} |")
        else:
            lines.append(f"| {r['n']:,} | {r['dim']} | error | | |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", required=True)
    p.add_argument("--val", action="append", default=[], help="a --split val run (repeatable)")
    p.add_argument("quality")
    p.add_argument("scale", nargs="+", help="data_scale runs (GraphCut, then variants)")
    args = p.parse_args()
    blocks = []
    for path, render in [*((v, quality) for v in args.val), (args.quality, quality),
                         *((s, scale) for s in args.scale)]:
        with open(path) as f:
            blocks += render(json.load(f), os.path.relpath(path)) + [""]
    replace_block(args.readme, START, END, "\n".join(blocks))


if __name__ == "__main__":
    main()
