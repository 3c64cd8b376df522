"""benchmarks.defaults at its quick size: real 2-rank runs, paired ratios, README table."""

from __future__ import annotations

import json

import pytest

from benchmarks import defaults


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
    """``NAME@SETTING``: the arm NAME with its family's knob at SETTING, for frontiers measured
    over seeds; nonsense is refused before any process starts."""
    assert defaults.arm_spec("lgreco topk@0.003") == ("lgreco_topk", {"density": 0.003})
    assert defaults.arm_spec("powersgd no accordion@2") == ("powersgd",
                                                            {"accordion": False, "rank": 2})
    assert defaults.arm_spec("lgreco qsgd@4.0") == ("lgreco_qsgd", {"bits": 4})
    for bad in ("allreduce@4", "torch fp16 (noise floor)@2", "powersgd@x", "powersgd@2.5",
                "topk@2", "nope@2"):
        with pytest.raises(SystemExit):
            defaults.parse_args(["--arms", bad])
    out = tmp_path / "d.json"
    assert defaults.main(["--quick", "--workloads", "cnn", "--seeds", "0",
                          "--arms", "powersgd@2,powersgd@16", "--json", str(out)]) == 0
    rows = {r["arm"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["powersgd@2"]["bytes_per_step"] < rows["powersgd@16"]["bytes_per_step"]
