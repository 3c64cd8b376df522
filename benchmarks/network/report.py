"""Plots and README tables from ``benchmarks.network.netbench`` JSON (never typed by hand).

    python -m benchmarks.network.report --readme README.md benchmarks/results/netbench*.json
"""

from __future__ import annotations

import argparse
import json
import os
import zlib
from pathlib import Path

from benchmarks.common import replace_block
from benchmarks.metrics import smoothed
from benchmarks.network.netns import default_burst
from benchmarks.sharded import MEMORY_KEYS

START, END = "<!-- netbench:start -->", "<!-- netbench:end -->"
FRONTIER_START, FRONTIER_END = "<!-- frontier:start -->", "<!-- frontier:end -->"


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
            clock = payload.get("clocks", {}).get(f"{w}/{r['arm']}")
            if not curve:
                continue
            k = r.get("smooth_steps") or 1
            smooth = smoothed(curve, k)
            row[2].plot(range(1, len(smooth) + 1), smooth, label=r["arm"], color=_color(r["arm"]))
            if clock:
                row[3].plot(clock, smooth, label=r["arm"], color=_color(r["arm"]))
                if r.get("time_to_target_s") is not None:
                    row[3].plot([r["time_to_target_s"]], [r["target_loss"]], "o",
                                color=_color(r["arm"]))
        if not row[2].lines:
            row[2].text(0.5, 0.5, "no loss curves", ha="center", transform=row[2].transAxes)
        target = next((r.get("target_loss") for r in recs if r["arm"] == "allreduce"
                       and r["status"] == "ok"), None)
        for ax in row[2:]:
            if target is not None:
                ax.axhline(target, color="gray", linestyle=":", linewidth=1)
            ax.set_ylabel(f"training loss (mean of {recs[0].get('smooth_steps') or 1} steps)")
        equal = payload["config"]["steps"].get(w)
        if equal:
            row[2].axvline(equal, color="gray", linestyle=":", linewidth=1)
        row[2].set_xlabel("step (dotted: allreduce's steps and final loss, the target)")
        row[3].set_xlabel("wall-clock (s); dots: target reached")
        for ax in row[2:]:
            if ax.lines:
                ax.legend(fontsize=7)
        row[0].set_title(f"{w}: bandwidth {payload['config']['bandwidth'] or 'unshaped'}")
    fig.tight_layout()
    save_figure(fig, path)
    if payload.get("plans"):
        plot_plans(payload, str(Path(path).with_name(Path(path).stem + "-plans.png")))
    plot_frontier(payload, str(Path(path).with_name(Path(path).stem + "-frontier.png")))


def _color(arm: str) -> str:
    """The same colour for an arm in every plot: from its name (settings share it)."""
    return f"C{zlib.crc32(arm.partition('@')[0].encode()) % 10}"


def plot_frontier(payload: dict, path: str) -> None:
    """Per workload and family: bytes per step against loss at equal steps and against time
    to target, the uniform arms (``topk@0.003``...) and the adaptive ones (``lgreco_topk@...``)
    each joined into a line: a frontier that lies lower-left is the better one."""
    import matplotlib.pyplot as plt

    points = frontier_points(payload)
    if not points:
        return
    keys = sorted(points)
    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 4 * len(keys)), squeeze=False)
    for (ax_loss, ax_time), key in zip(axes, keys):
        for kind, marker in (("uniform", "s-"), ("adaptive", "o-")):
            pts = sorted(points[key][kind])
            if not pts:
                continue
            mb = [p[0] / 1e6 for p in pts]
            ax_loss.plot(mb, [p[1] for p in pts], marker, label=kind)
            timed = [(m, p[2]) for m, p in zip(mb, pts) if p[2] is not None]
            if timed:
                ax_time.plot(*zip(*timed), marker, label=kind)
            for m, p in zip(mb, pts):
                ax_loss.annotate(str(p[3]), (m, p[1]), fontsize=7)
        ax_loss.set_xlabel("wire MB per step")
        ax_loss.set_ylabel("loss at equal steps")
        ax_time.set_xlabel("wire MB per step")
        ax_time.set_ylabel("time to allreduce's loss (s)")
        ax_loss.set_title(f"{key[0]}: {key[1]}")
        for ax in (ax_loss, ax_time):
            ax.set_xscale("log")
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def frontier_points(payload: dict) -> dict:
    """(workload, family) -> {"uniform": [...], "adaptive": [...]}, each point (wire bytes per
    step, loss at equal steps, time to target or None, setting), from the arms run at an
    explicit setting (``ARM@SETTING``)."""
    from benchmarks.arms import Arm

    out: dict = {}
    for r in payload["results"]:
        setting = r["arm"].partition("@")[2]
        arm = Arm.parse(r["arm"])
        if r["status"] != "ok" or not setting or arm.kind != "ours" or arm.fixed or arm.flat \
                or arm.measure or arm.sharding:
            continue
        key, kind = (r["workload"], arm.method), "adaptive" if arm.adaptive else "uniform"
        point = (r["wire_bytes_per_step"], r["loss_at_equal_steps"], r.get("time_to_target_s"),
                 setting)
        out.setdefault(key, {"uniform": [], "adaptive": []})[kind].append(point)
    return out


def save_figure(fig, path: str) -> None:
    """Write ``fig`` as PNG through a temporary file, so an interrupted run never leaves a
    half-written plot in place of the last good one."""
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
    save_figure(fig, path)


def loss_of(r: dict | None) -> float | None:
    """Loss at equal steps; files from before time-to-accuracy have the final loss (the mean of
    the last fifth of a fixed-length run) instead."""
    if r is None:
        return None
    return r.get("loss_at_equal_steps", r.get("final_loss"))


def ref_of(base: dict, r: dict) -> dict | None:
    """The allreduce record of ``r``'s workload, or None for allreduce itself."""
    ref = base.get(r["workload"])
    return None if ref is r else ref


def _with_ratio(v, ref, spec: str) -> str:
    if v is None:
        return ""
    return format(v, spec) + (f" ({v / ref:.3f})" if ref else "")


def _time_to_target(r: dict, ref: dict | None) -> str:
    if "time_to_target_s" not in r:
        return ""
    if r["time_to_target_s"] is None:
        return f"never in {r['steps_run']} steps"
    t = r["time_to_target_s"]
    ref_t = None if ref is None else ref.get("time_to_target_s")
    return f"{t:.1f}" + (f" ({t / ref_t:.2f})" if ref_t else "")


def _mb(v) -> str:
    return "" if v is None else f"{v / 1e6:.3f}"


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def link_burst(cfg: dict) -> str:
    """The tbf bucket a run used; files from before ``--burst`` existed used the rate's
    default, which ``benchmarks.network.netns`` still computes the same way."""
    if cfg.get("burst"):
        return cfg["burst"]
    return default_burst(cfg["bandwidth"]) if cfg["bandwidth"] else "none"


def section(payload: dict, json_path: str) -> str:
    cfg, env = payload["config"], payload["config"]["env"]
    lines = [
        f"**{cfg['bandwidth'] or 'unshaped'} link"
        + (f", delay {cfg['delay']}" if cfg["delay"] else "")
        + f"** (tbf burst {link_burst(cfg)}) — {env['cpus']}-core {env['machine']} CPU, "
        f"torch {env['torch']}, {_ranks(cfg)}, gloo; steps {cfg['steps']} ({cfg['warmup_steps']} "
        f"untimed). Command: `{cfg['command']}` → `{json_path}`",
        "",
        "| workload | arm | status | wire MB/step | payload MB/step | wire/payload "
        "| step time (s) median / mean / wall | loss at equal steps (× allreduce) "
        "| time to target s (× allreduce) | error ratio: gradient | error ratio: layer sum |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["workload"]: r for r in payload["results"]
            if r["arm"] == "allreduce" and r["status"] == "ok"}
    for r in payload["results"]:
        if r["status"] == "ok":
            cells = [
                _mb(r["wire_bytes_per_step"]), _mb(r["ledger_bytes_per_step"]),
                _fmt(r["wire_over_ledger"], ".2f"),
                " / ".join(_fmt(r.get(k), ".3f") for k in
                           ("step_time_s", "mean_step_time_s", "wall_step_time_s")),
                _with_ratio(loss_of(r), loss_of(ref_of(base, r)), ".3f"),
                _time_to_target(r, ref_of(base, r)),
                *(_fmt((r.get("error_ratios") or {}).get(m), ".3f")
                  for m in ("gradient", "layer_sum")),
            ]
            lines.append(f"| {r['workload']} | {r['arm']} | ok | " + " | ".join(cells) + " |")
        else:
            err = r["error"].replace("|", "/")[:160]
            lines.append(f"| {r['workload']} | {r['arm']} | **error** | | | | | {err} | | | |")
    if cfg.get("ranks_per_host", 1) > 1:
        lines += ["", "Between each host's own ranks, over its loopback (unshaped, not in the "
                  "wire column), MB/step: " + ", ".join(
                      f"{r['workload']}/{r['arm']} {_mb(r.get('loopback_bytes_per_step'))}"
                      for r in payload["results"] if r["status"] == "ok")]
    mem = [r for r in payload["results"] if r["status"] == "ok" and r.get("param_bytes")]
    if mem:
        lines += ["", "Memory per rank (the largest rank), MB of parameters / optimizer state / "
                  "compression state: " + ", ".join(
                      f"{r['workload']}/{r['arm']} " + " / ".join(
                          _mb(r.get(k)) for k in MEMORY_KEYS) for r in mem)]
    in_table = ("_over_allreduce_loss", "_over_allreduce_time_to_target")
    figs = {w: ", ".join(f"{k} = {v:.3f}" for k, v in f.items()
                         if v is not None and not k.endswith(in_table))
            for w, f in payload["figures"].items()}
    figs = [f"{w}: {text}" for w, text in figs.items() if text]
    if figs:
        lines += ["", "Ratios (same run): " + "; ".join(figs)]
    seeds = cfg.get("seeds") or []
    spread = {w: ", ".join(f"{k} = {v['mean']:.3f} ± {v['ci95']:.3f}" for k, v in f.items()
                           if v["mean"] is not None)
              for w, f in payload.get("over_seeds", {}).items()}
    spread = [f"{w}: {text}" for w, text in spread.items() if text]
    if spread:
        lines += ["", f"Over seeds {seeds} (mean ± 95% interval, Student t; the table and the "
                  f"ratios above are seed {seeds[0]}'s): " + "; ".join(spread)]
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


def _ranks(cfg: dict) -> str:
    per = cfg.get("ranks_per_host", 1)
    if per == 1:
        return "2 ranks (one per network namespace)"
    return (f"{2 * per} ranks ({per} per network namespace; payload: host a's ranks together; "
            "ours reduces in three stages unless the arm says flat)")


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


def frontier_table(payload: dict, json_path: str) -> str:
    """L-GreCo against the uniform setting at each budget of a sweep: each side's wire bytes
    per step and loss at equal steps, and which way the adaptive point lies."""
    lines = [f"From `{json_path}`:", "",
             "| workload | family | budget | uniform: wire MB/step, loss at equal steps "
             "| L-GreCo: wire MB/step, loss | L-GreCo's point |", "|---|---|---|---|---|---|"]
    for (w, family), sides in sorted(frontier_points(payload).items()):
        adaptive = {p[3]: p for p in sides["adaptive"]}
        for u in sorted(sides["uniform"]):
            a = adaptive.get(u[3])
            if a is None:
                continue
            nb, loss = a[0] / u[0] - 1, a[1] / u[1] - 1
            verdict = ("the same" if abs(nb) < 0.01 and abs(loss) < 0.01 else
                       f"{abs(nb):.0%} {'fewer' if nb < 0 else 'more'} bytes, "
                       f"{abs(loss):.1%} {'lower' if loss < 0 else 'higher'} loss")
            lines.append(f"| {w} | {family} | {u[3]} | {u[0] / 1e6:.3f}, {u[1]:.3f} "
                         f"| {a[0] / 1e6:.3f}, {a[1]:.3f} | {verdict} |")
    return "\n".join(lines) + "\n"


def update_readme(readme: str, json_paths: list[str]) -> None:
    """Replace the text between the netbench markers with tables from the JSON files, and
    the frontier block (where README has one) with the budget sweeps among them."""
    blocks, sweeps = [], []
    for path in json_paths:
        with open(path) as f:
            payload = json.load(f)
        blocks.append(section(payload, os.path.relpath(path)))
        if frontier_points(payload):
            sweeps.append(frontier_table(payload, os.path.relpath(path)))
    replace_block(readme, START, END, "\n\n".join(blocks) + "\n")
    if sweeps and FRONTIER_START in Path(readme).read_text():
        replace_block(readme, FRONTIER_START, FRONTIER_END, "\n".join(sweeps))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", required=True)
    p.add_argument("json", nargs="+")
    args = p.parse_args()
    update_readme(args.readme, args.json)


if __name__ == "__main__":
    main()
