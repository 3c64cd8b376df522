"""The ratios netbench reports, from its records: every arm against plain DDP and the anchors
(torch's hooks) of the same run, L-GreCo against its method, three stages against the flat
reduction, CO2's overlap, FSDP2 arms against their dense twins and DDP's memory; and, over
seeds, each ratio's mean with its 95% interval."""

from __future__ import annotations

from benchmarks.arms import Arm
from benchmarks.common import ci95
from benchmarks.sharded import MEMORY_KEYS


def figures(results: list[dict]) -> dict:
    """The ratios the project reports, from records of one run (None where an arm is missing)."""
    by = {(r["workload"], r["arm"]): r for r in results if r["status"] == "ok"}

    def ratio(workload, a, b, key):
        ra, rb = by.get((workload, a)), by.get((workload, b))
        ok = ra and rb and ra.get(key) is not None and rb.get(key)
        return ra[key] / rb[key] if ok else None

    wire, time_ = "wire_bytes_per_step", "step_time_s"
    arms = {a: Arm.parse(a) for a in dict.fromkeys(r["arm"] for r in results)}
    other_tau = [a for a, arm in arms.items() if arm.kind == "co2" and arm.setting is not None]
    compressed = [a for a, arm in arms.items() if arm.setting is None and
                  arm.kind not in ("local", "local_node", "allreduce")] + other_tau
    ours = [a for a, arm in arms.items() if arm.kind == "ours" and arm.setting is None]
    plain = [a for a in ours if not (arms[a].adaptive or arms[a].fixed or arms[a].flat)]
    adaptive = [(a, twin(arms[a], arms[a].method)) for a in ours if arms[a].adaptive]
    sharded = [(a, twin(arm, "")) for a, arm in arms.items() if arm.sharding and
               arm.kind == "ours" and arm.setting is None]
    local_pairs = [*LOCAL_PAIRS, *((a, "local") for a in other_tau),
                   *((a, "local_node") for a in ("co2_bf16", *other_tau))]
    return {
        w: {
            # time to accuracy: every arm against plain DDP, in the same run
            **{f"{a}_over_allreduce_loss": ratio(w, a, "allreduce", "loss_at_equal_steps")
               for a in compressed},
            **{f"{a}_over_allreduce_time_to_target":
               ratio(w, a, "allreduce", "time_to_target_s") for a in compressed},
            # ours beside the anchors: torch's own hooks, and plain DDP's bytes and steps
            **{f"{a}_over_torch_powersgd_loss":
               ratio(w, a, "torch_powersgd", "loss_at_equal_steps") for a in ours},
            **{f"{a}_over_{b}_{k}": ratio(w, a, b, key) for a in ours
               for b, k, key in (("allreduce", "wire", wire), ("allreduce", "time", time_),
                                 ("torch_fp16", "time", time_),
                                 ("torch_powersgd", "time", time_))},
            **{f"{lg}_over_{base}_wire": ratio(w, lg, base, wire) for lg, base in adaptive},
            **{f"{lg}_over_{base}_time": ratio(w, lg, base, time_) for lg, base in adaptive},
            # local-updating arms: mean step time (boundary steps included), and wall-clock
            # per step (ranks drift apart between rounds, so a per-step max over ranks
            # counts each rank's jitter; the job's elapsed time does not), overlap ratio
            **{f"{a}_over_{b}_{kind}_time": ratio(w, a, b, f"{kind}_step_time_s")
               for a, b in local_pairs for kind in ("mean", "wall")},
            "co2_overlap": overlap(by.get((w, "co2")), by.get((w, "diloco")),
                                   by.get((w, "local"))),
            # several ranks per host: three stages (the default) against the flat reduction
            **{f"{a}_over_{a}_flat_{k}": ratio(w, a, f"{a}_flat", key)
               for a in plain if f"{a}_flat" in arms
               for k, key in (("wire", wire), ("payload", "ledger_bytes_per_step"),
                              ("time", time_), ("loss", "loss_at_equal_steps"))},
            "co2_bf16_over_co2_bf16_flat_outer_state":
                ratio(w, "co2_bf16", "co2_bf16_flat", "outer_state_bytes"),
            # FSDP2: each compressed arm against its dense twin (fsdp, hsdp); memory per rank
            **{f"{a}_over_{b}_{k}": ratio(w, a, b, key) for a, b in sharded
               for k, key in (("wire", wire), ("time", time_), ("loss", "loss_at_equal_steps"),
                              ("time_to_target", "time_to_target_s"))},
            **{f"{a}_over_allreduce_{k}": ratio(w, a, "allreduce", k)
               for a, arm in arms.items() if arm.sharding for k in MEMORY_KEYS[:2]},
        }
        for w in sorted({r["workload"] for r in results})
    }


def over_seeds(per_seed: list[dict]) -> dict:
    """Each figure's mean over seeds with its 95% interval (Student t) and the per-seed values;
    a figure missing in any seed (an arm that never reached the target) keeps its values and
    gets no mean."""
    out: dict = {}
    for w in per_seed[0]:
        for k in per_seed[0][w]:
            values = [f.get(w, {}).get(k) for f in per_seed]
            if all(v is None for v in values):
                continue
            done = None not in values
            out.setdefault(w, {})[k] = {
                "mean": sum(values) / len(values) if done else None,
                "ci95": ci95(values) if done else None, "per_seed": values}
    return out


def twin(arm: Arm, base: str) -> str:
    """The arm ``arm`` is compared with: ``base`` (a method: the same method without L-GreCo)
    under the same sharding (``hsdp_`` + base), or the dense sharded arm for ``base`` ""."""
    if arm.sharding is None:
        return base
    prefix = arm.name.partition("_")[0]
    return f"{prefix}_{base}" if base else prefix


LOCAL_PAIRS = (("co2", "local"), ("co2_bf16", "local"), ("co2_qsgd", "local"),
               ("co2", "diloco"), ("co2", "allreduce"), ("diloco", "local"))


def overlap(co2: dict | None, blocking: dict | None, local: dict | None) -> float | None:
    """(T_blocking - T_co2) / T_comm with T_comm = T_blocking - T_local (mean step times):
    1 when CO2 hides all of the communication the blocking schedule waits for, 0 when none."""
    if not (co2 and blocking and local):
        return None
    t_comm = blocking["mean_step_time_s"] - local["mean_step_time_s"]
    if t_comm <= 0:
        return None
    return (blocking["mean_step_time_s"] - co2["mean_step_time_s"]) / t_comm
