"""benchmarks.accuracy.defaults at its quick size: real 2-rank runs, paired ratios, README table."""

from __future__ import annotations

import json

import pytest

from benchmarks.accuracy import defaults
from benchmarks.accuracy import frontier as defaults_frontier


def test_quick_run_pairs_every_arm_with_allreduce_and_renders(tmp_path):
    out = tmp_path / "d.json"
    assert defaults.main(["--quick", "--workloads", "cnn", "--seeds", "0,1",
                          "--arms", "torch fp16 (noise floor),powersgd,topk no momentum correction,"
                          "torch powersgd (rank 8 warm-up 10)", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    rows = {r["arm"]: r for r in payload["rows"]}
    assert list(rows) == ["allreduce", "torch fp16 (noise floor)", "powersgd",
                          "topk no momentum correction", "torch powersgd (rank 8 warm-up 10)"]
    assert rows["allreduce"]["per_seed"] == [1.0, 1.0]
    for arm in ("powersgd", "topk no momentum correction"):
        r = rows[arm]
        assert r["seeds"] == [0, 1] and len(r["per_seed"]) == 2
        assert 0.5 < r["loss_over_allreduce"] < 2.0
        assert r["dense_over_sent"] > 1.0  # 4 of the 14 steps compress after the warm-up
    for arm in ("torch fp16 (noise floor)", "torch powersgd (rank 8 warm-up 10)"):
        r = rows[arm]  # torch's own hooks: no ledger of ours
        assert r["bytes_per_step"] is None and 0.5 < r["loss_over_allreduce"] < 2.0
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- d:start -->\nold\n<!-- d:end -->\n"
                      "<!-- defaults:start -->\nkept\n<!-- defaults:end -->\n")
    assert defaults.main(["--json", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()  # the block named after the JSON's stem, no other
    assert "| cnn | powersgd | **" in text and "old" not in text and "kept" in text
    missing = tmp_path / "other.json"
    missing.write_text(out.read_text())
    with pytest.raises(SystemExit, match="other:start"):
        defaults.main(["--json", str(missing), "--readme", str(readme)])


def test_three_seeds_and_up_carry_a_95_percent_interval():
    row = {"workload": "resnet", "arm": "powersgd", "loss_over_allreduce": 1.05,
           "per_seed": [1.0, 1.05, 1.1], "bytes_per_step": None, "dense_over_sent": None}
    payload = {"config": {"steps": {"resnet": 600}, "seeds": [0, 1, 2], "command": "c"},
               "rows": [{**row, "ci95": 0.124}, {**row, "arm": "two", "per_seed": [1.0, 1.1],
                                                 "ci95": 0.635}]}
    lines = defaults.table(payload, "d.json").splitlines()
    assert "| resnet | powersgd | **1.050** (± 0.124; 1.000, 1.050, 1.100) |" in lines[-2]
    assert "| resnet | two | **1.050** (1.000, 1.100) |" in lines[-1]  # two seeds: no interval


def test_setting_arms_sweep_a_budget_over_seeds(tmp_path):
    """``NAME@SETTING``: the arm NAME with its method's knob at SETTING, for frontiers measured
    over seeds; nonsense is refused before any process starts."""
    assert defaults.arm_spec("lgreco topk@0.003") == ("lgreco_topk@0.003", {})
    assert defaults.arm_spec("powersgd no accordion@2") == ("powersgd@2", {"accordion": False})
    assert defaults.arm_spec("powersgd rank 16@2") == ("powersgd@2", {})  # @ wins
    assert defaults.arm_spec("lgreco_qsgd@4.0") == ("lgreco_qsgd@4.0", {})
    for bad in ("allreduce@4", "torch fp16 (noise floor)@2", "powersgd@x", "powersgd@2.5",
                "topk@2", "nope@2"):
        with pytest.raises(SystemExit):
            defaults.parse_args(["--arms", bad])
    out = tmp_path / "d.json"
    assert defaults.main(["--quick", "--workloads", "cnn", "--seeds", "0",
                          "--arms", "powersgd@2,powersgd@16,lgreco powersgd@2",
                          "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    rows = {r["arm"]: r for r in payload["rows"]}
    assert rows["powersgd@2"]["bytes_per_step"] < rows["powersgd@16"]["bytes_per_step"]
    # the budget both sides ran is paired into a frontier row, plotted beside the JSON
    (row,) = defaults_frontier.frontier_rows(payload["runs"])
    assert (row["family"], row["budget"], row["seeds"]) == ("powersgd", 2.0, [0])
    assert (tmp_path / "d.png").stat().st_size > 0
    assert "| cnn | powersgd | 2 |" in defaults.table(payload, "d.json")


def _runs(losses: dict[str, list[float]], sent: dict[str, float]) -> list[dict]:
    return [{"workload": "resnet", "arm": arm, "seed": seed, "loss": loss,
             "bytes_per_step": sent.get(arm)}
            for arm, per_seed in losses.items() for seed, loss in enumerate(per_seed)]


def test_frontier_pairs_by_seed_and_calls_only_a_resolved_lead():
    """Seed-to-seed spread is larger than the gap between the sides, so L-GreCo is judged by
    its per-seed ratio to the uniform arm of the same budget and seed, and dominates only
    with no more bytes and a loss whose interval lies below the uniform one's."""
    base = {"allreduce": [1.0, 2.0, 3.0]}
    lower = defaults_frontier.frontier_rows(_runs(
        {**base, "topk@0.01": [1.2, 2.4, 3.6], "lgreco topk@0.01": [1.1, 2.2, 3.3]},
        {"topk@0.01": 100.0, "lgreco topk@0.01": 60.0}))
    (row,) = lower
    assert row["paired"] == pytest.approx([1.1 / 1.2] * 3) and row["paired_ci95"] < 1e-9
    assert row["uniform"]["loss_over_allreduce"] == pytest.approx(1.2)
    assert defaults_frontier.verdict(row) == "40% fewer bytes, lower loss: dominates"
    noisy = defaults_frontier.frontier_rows(_runs(
        {**base, "powersgd@4": [1.1, 2.2, 3.3], "lgreco powersgd@4": [1.2, 2.0, 3.4]},
        {"powersgd@4": 100.0, "lgreco powersgd@4": 90.0}))
    assert defaults_frontier.verdict(noisy[0]) == ("10% fewer bytes, loss +1.0% within the "
                                                   "interval: not resolved")
    worse = defaults_frontier.frontier_rows(_runs(
        {**base, "powersgd@4": [1.1, 2.2, 3.3], "lgreco powersgd@4": [1.2, 2.45, 3.6]},
        {"powersgd@4": 100.0, "lgreco powersgd@4": 90.0}))
    assert defaults_frontier.verdict(worse[0]).endswith("higher loss: does not dominate")
    alone = _runs({**base, "topk@0.01": [1.2, 2.4, 3.6]}, {"topk@0.01": 1.0})
    assert defaults_frontier.frontier_rows(alone) == []  # no adaptive side: no row
