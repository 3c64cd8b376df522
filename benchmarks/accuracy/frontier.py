"""L-GreCo's frontier over seeds, from a ``benchmarks.accuracy.defaults`` budget sweep.

A sweep runs each family at a few budgets, uniform (``powersgd@4``) and adaptive
(``lgreco powersgd@4``), on the same seeds. One run cannot rank points a few percent apart (the
same seed moves that much between runs on the network), so each adaptive point is judged
against the uniform one at its budget *paired by seed*: the per-seed ratio of the two losses,
its mean and 95% interval. The adaptive point dominates where it sends no more bytes at a loss
whose interval lies below the uniform one's; where the interval straddles it, three seeds have
not resolved the comparison and the verdict says so.
"""

from __future__ import annotations

import statistics

from benchmarks.common import ci95
from benchmarks.network.report import save_figure


def sweep_side(arm: str) -> tuple[str, str] | None:
    """(method, "uniform" or "L-GreCo") of a budget-sweep arm of ``benchmarks.accuracy.defaults``
    (``powersgd@4``, ``lgreco powersgd@4``); None for any other arm."""
    from benchmarks.accuracy.defaults import arm_spec
    from benchmarks.arms import Arm

    text, options = arm_spec(arm)
    parsed = Arm.parse(text)
    if options or parsed.kind != "ours" or parsed.fixed or parsed.flat or parsed.measure:
        return None
    return parsed.method, "L-GreCo" if parsed.adaptive else "uniform"


def frontier_rows(runs: list[dict]) -> list[dict]:
    """One row per (workload, family, budget) that has both sides: each side's bytes per step
    and mean loss over allreduce, and the paired per-seed ratio L-GreCo / uniform."""
    base = {(r["workload"], r["seed"]): r["loss"] for r in runs if r["arm"] == "allreduce"}
    sides: dict = {}
    for r in runs:
        budget = r["arm"].partition("@")[2]
        found = sweep_side(r["arm"]) if budget else None
        if found:
            key = (r["workload"], found[0], float(budget))
            sides.setdefault(key, {}).setdefault(found[1], {})[r["seed"]] = r
    rows = []
    for (w, family, budget), by_side in sorted(sides.items()):
        if len(by_side) < 2:
            continue
        uni, ada = by_side["uniform"], by_side["L-GreCo"]
        seeds = sorted(set(uni) & set(ada))
        paired = [ada[s]["loss"] / uni[s]["loss"] for s in seeds]
        row = {"workload": w, "family": family, "budget": budget, "seeds": seeds,
               "paired": paired, "paired_mean": statistics.fmean(paired),
               "paired_ci95": ci95(paired)}
        for side, recs in (("uniform", uni), ("lgreco", ada)):
            ratios = [recs[s]["loss"] / base[(w, s)] for s in seeds]
            row[side] = {"bytes_per_step": statistics.fmean(recs[s]["bytes_per_step"]
                                                            for s in seeds),
                         "loss_over_allreduce": statistics.fmean(ratios),
                         "ci95": ci95(ratios)}
        rows.append(row)
    return rows


def verdict(row: dict) -> str:
    """Which way L-GreCo's point lies from the uniform one, in words: it dominates only with
    no more bytes and a loss whose interval lies below; a loss interval that straddles the
    uniform's leaves the comparison open, whatever the bytes."""
    nb = row["lgreco"]["bytes_per_step"] / row["uniform"]["bytes_per_step"] - 1
    mean = row["paired_mean"]
    lo, hi = mean - row["paired_ci95"], mean + row["paired_ci95"]
    bytes_ = f"{abs(nb):.0%} {'fewer' if nb < 0 else 'more'} bytes"
    if hi < 1 and nb <= 0.01:
        return f"{bytes_}, lower loss: dominates"
    if lo > 1:
        return f"{bytes_}, higher loss: does not dominate"
    return f"{bytes_}, loss {mean - 1:+.1%} within the interval: not resolved"


def frontier_table(rows: list[dict]) -> str:
    lines = ["| workload | family | budget | uniform: MB/step, loss × allreduce "
             "| L-GreCo: MB/step, loss × allreduce | L-GreCo / uniform loss (paired; ± 95%) "
             "| L-GreCo's point |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        u, a = r["uniform"], r["lgreco"]
        budget = f"{r['budget']:g}"
        lines.append(
            f"| {r['workload']} | {r['family']} | {budget} "
            f"| {u['bytes_per_step'] / 1e6:.3f}, {u['loss_over_allreduce']:.3f} "
            f"| {a['bytes_per_step'] / 1e6:.3f}, {a['loss_over_allreduce']:.3f} "
            f"| **{r['paired_mean']:.3f}** (± {r['paired_ci95']:.3f}; "
            f"{', '.join(f'{x:.3f}' for x in r['paired'])}) | {verdict(r)} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    """Per workload and family: loss × allreduce (mean ± 95% over seeds) against payload MB
    per step, uniform and L-GreCo each joined into a line; lower-left is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r["workload"], r["family"]) for r in rows))
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        mine = sorted((r for r in rows if (r["workload"], r["family"]) == key),
                      key=lambda r: r["budget"])
        for side, label, marker in (("uniform", "uniform", "s-"), ("lgreco", "L-GreCo", "o-")):
            ax.errorbar([r[side]["bytes_per_step"] / 1e6 for r in mine],
                        [r[side]["loss_over_allreduce"] for r in mine],
                        yerr=[r[side]["ci95"] for r in mine], fmt=marker, capsize=3,
                        label=label)
        for r in mine:
            ax.annotate(f"{r['budget']:g}", (r["uniform"]["bytes_per_step"] / 1e6,
                                             r["uniform"]["loss_over_allreduce"]), fontsize=7)
        ax.set_xlabel("payload MB per step")
        ax.set_ylabel("loss at equal steps × allreduce")
        ax.set_title(f"{key[0]}: {key[1]} (seeds {mine[0]['seeds']})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
