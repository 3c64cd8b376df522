"""Render a benchmark's JSON ``results`` as a Markdown table, for README.

    python -m benchmarks.report bench-results/compressors.json
"""

from __future__ import annotations

import json
import sys


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def table(results: list[dict]) -> str:
    cols: list[str] = []
    for r in results:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in results]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m benchmarks.report RESULTS.json")
    with open(sys.argv[1]) as f:
        print(table(json.load(f)["results"]))


if __name__ == "__main__":
    main()
