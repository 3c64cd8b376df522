"""Plots and README tables from ``benchmarks.netbench`` JSON (never typed by hand).

    python -m benchmarks.netbench_report --readme README.md benchmarks/results/netbench*.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from benchmarks.common import replace_block
from benchmarks.netns import default_burst

START, END = "<!-- netbench:start -->", "<!-- netbench:end -->"


def plot(payload: dict, path: str) -> None:
    """One row per workload: bytes/step (wire and ledger), step time, loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = payload["config"]["workloads"]
    fig, axes = plt.subplots(len(workloads), 4, figsize=(21, 4.2 * len(workloads)), squeeze=False)
    for row, w in zip(axes, workloads):
        recs = [r for r in payload["results"] if r["workload"] == w]
        names = [r["arm"] for r in recs]
        ok = [r["status"] == "ok" for r in recs]
        xs = range(len(recs))
        wire = [r.get("wire_bytes_per_step") or 0 for r in recs]
        ledger = [r.get("ledger_bytes_per_step") or 0 for r in recs]
        row[0].bar([x - 0.2 for x in xs], [b / 1e6 for b in wire], 0.4, label="wire (veth)")
        row[0].bar([x + 0.2 for x in xs], [b / 1e6 for b in ledger], 0.4, label="payload (ledger)")
        row[0].set_yscale("symlog", linthresh=0.01)
        row[0].set_ylabel("MB per step")
        row[0].legend()
        row[1].bar(xs, [r.get("step_time_s") or 0 for r in recs],
                   color=["C0" if o else "red" for o in ok])
        row[1].set_ylabel("median step time (s)")
        for ax in row[:2]:
            ax.set_xticks(list(xs), [n + ("" if o else "\n(error)") for n, o in zip(names, ok)],
                         rotation=30, fontsize=8)
        for r in recs:
            curve = payload["curves"].get(f"{w}/{r['arm']}")
            if curve:
                row[2].plot(curve, label=r["arm"], color=_color(r["arm"]))
        if not row[2].lines:
            row[2].text(0.5, 0.5, "no loss curves", ha="center", transform=row[2].transAxes)
        row[2].set_xlabel("step")
        row[2].set_ylabel("training loss")
        for r in recs:
            curve = payload["curves"].get(f"{w}/{r['arm']}")
            clock = payload.get("clocks", {}).get(f"{w}/{r['arm']}")
            if curve and clock:
                row[3].plot(clock, curve, label=r["arm"], color=_color(r["arm"]))
        row[3].set_xlabel("wall-clock (s)")
        row[3].set_ylabel("training loss")
        for ax in row[2:]:
            if ax.lines:
                ax.legend(fontsize=7)
        row[0].set_title(f"{w}: bandwidth {payload['config']['bandwidth'] or 'unshaped'}")
    fig.tight_layout()
    _save(fig, path)
    if payload.get("plans"):
        plot_plans(payload, str(Path(path).with_name(Path(path).stem + "-plans.png")))


def _color(arm: str) -> str:
    from benchmarks.netbench_worker import ARMS

    return f"C{ARMS.index(arm) % 10}" if arm in ARMS else "black"


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def plot_plans(payload: dict, path: str) -> None:
    """Each L-GreCo arm: the setting every layer got at every re-plan (a heat map)."""
    import matplotlib.pyplot as plt

    arms = sorted(payload["plans"])
    fig, axes = plt.subplots(1, len(arms), figsize=(5 * len(arms), 9), squeeze=False)
    for ax, name in zip(axes[0], arms):
        plans = payload["plans"][name]
        layers = sorted(plans[0]["settings"])
        grid = [[p["settings"][k] for p in plans] for k in layers]
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(len(plans)), [str(p["step"]) for p in plans])
        ax.set_yticks(range(len(layers)), layers, fontsize=5)
        ax.set_xlabel("plan at step")
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    _save(fig, path)


def _mb(v) -> str:
    return "" if v is None else f"{v / 1e6:.3f}"


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def link_burst(cfg: dict) -> str:
    """The tbf bucket a run used; files from before ``--burst`` existed used the rate's
    default, which ``benchmarks.netns`` still computes the same way."""
    if cfg.get("burst"):
        return cfg["burst"]
    return default_burst(cfg["bandwidth"]) if cfg["bandwidth"] else "none"


def section(payload: dict, json_path: str) -> str:
    cfg, env = payload["config"], payload["config"]["env"]
    lines = [
        f"**{cfg['bandwidth'] or 'unshaped'} link"
        + (f", delay {cfg['delay']}" if cfg["delay"] else "")
        + f"** (tbf burst {link_burst(cfg)}) — {env['cpus']}-core {env['machine']} CPU, "
        f"torch {env['torch']}, 2 ranks "
        f"(one per network namespace), gloo; steps {cfg['steps']} ({cfg['warmup_steps']} "
        f"untimed). Command: `{cfg['command']}` → `{json_path}`",
        "",
        "| workload | arm | status | wire MB/step | payload MB/step | wire/payload "
        "| step time (s) median / mean / wall | final loss | error ratio: gradient "
        "| error ratio: layer sum |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["results"]:
        if r["status"] == "ok":
            cells = [
                _mb(r["wire_bytes_per_step"]), _mb(r["ledger_bytes_per_step"]),
                _fmt(r["wire_over_ledger"], ".2f"),
                " / ".join(_fmt(r.get(k), ".3f") for k in
                           ("step_time_s", "mean_step_time_s", "wall_step_time_s")),
                _fmt(r["final_loss"], ".3f"),
                *(_fmt((r.get("error_ratios") or {}).get(m), ".3f")
                  for m in ("gradient", "layer_sum")),
            ]
            lines.append(f"| {r['workload']} | {r['arm']} | ok | " + " | ".join(cells) + " |")
        else:
            err = r["error"].replace("|", "/")[:160]
            lines.append(f"| {r['workload']} | {r['arm']} | **error** | | | | | {err} | | |")
    figs = [
        f"{w}: " + ", ".join(f"{k} = {v:.3f}" for k, v in f.items() if v is not None)
        for w, f in payload["figures"].items()
    ]
    lines += ["", "Ratios (same run): " + "; ".join(figs)]
    rounds = [f"{r['workload']}/{r['arm']} {r['mean_round_wait_s']:.3f} of "
              f"{r['mean_round_s']:.3f}" for r in payload["results"]
              if r["status"] == "ok" and r.get("mean_round_s") is not None]
    if rounds:
        lines += ["", "Outer rounds, seconds a round boundary waited for the average, of all it "
                  "added to its step (slower rank, mean): " + ", ".join(rounds)]
    for w in cfg["workloads"]:
        at, losses = loss_at_wallclock(payload, w)
        if len(losses) > 1:
            lines += ["", f"Loss against wall-clock ({w}; mean of the last {WINDOW} steps done "
                      f"by {at:.0f} s, when the fastest arm finished): "
                      + ", ".join(f"{a} {v:.3f}" for a, v in losses.items())]
    return "\n".join(lines)


WINDOW = 10


def loss_at_wallclock(payload: dict, workload: str) -> tuple[float, dict[str, float]]:
    """Each arm's training loss at the wall-clock time the fastest arm ended (a time budget,
    where the final-loss column compares at equal steps)."""
    runs = {}
    for r in payload["results"]:
        key = f"{workload}/{r['arm']}"
        curve, clock = payload["curves"].get(key), payload.get("clocks", {}).get(key)
        if r["workload"] == workload and r["status"] == "ok" and curve and clock:
            runs[r["arm"]] = (curve, clock)
    if not runs:
        return 0.0, {}
    at = min(clock[-1] for _, clock in runs.values())
    out = {}
    for arm, (curve, clock) in runs.items():
        done = [loss for loss, t in zip(curve, clock) if t <= at][-WINDOW:]
        if done:
            out[arm] = sum(done) / len(done)
    return at, out


def update_readme(readme: str, json_paths: list[str]) -> None:
    """Replace the text between the netbench markers with tables from the JSON files."""
    blocks = []
    for path in json_paths:
        with open(path) as f:
            blocks.append(section(json.load(f), os.path.relpath(path)))
    replace_block(readme, START, END, "\n\n".join(blocks) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", required=True)
    p.add_argument("json", nargs="+")
    args = p.parse_args()
    update_readme(args.readme, args.json)


if __name__ == "__main__":
    main()
