"""netbench's accuracy figures on made-up curves: loss at equal steps, time to target, and the
reason recorded when an arm never gets there (no root or network needed)."""

from __future__ import annotations

import pytest

from benchmarks.metrics import accuracy, smooth_for, smoothed
from benchmarks.network.report import frontier_points, section


def test_smoothed_is_a_trailing_mean():
    assert smoothed([4.0, 2.0, 6.0, 0.0], 2) == [4.0, 3.0, 4.0, 3.0]
    assert smooth_for(600) == 60 and smooth_for(16) == 5


def test_time_to_target_is_the_first_smoothed_crossing():
    curve = [3.0 - 0.01 * i for i in range(200)]  # k = 10 for 100 equal steps
    clock = [0.5 * (i + 1) for i in range(200)]
    rec = accuracy(curve, clock, steps=100, target=1.5)
    assert rec["loss_at_equal_steps"] == pytest.approx(sum(curve[90:100]) / 10)
    # smoothed loss at step i (0-based) is 3 - 0.01 (i - 4.5): <= 1.5 from i = 155 on
    assert rec["steps_to_target"] == 156 and rec["time_to_target_s"] == clock[155]
    assert rec["time_to_target_why"] is None and rec["steps_run"] == 200


def test_an_arm_that_never_gets_there_says_why():
    rec = accuracy([2.0] * 40, [float(i) for i in range(40)], steps=20, target=1.0)
    assert rec["time_to_target_s"] is None and rec["steps_to_target"] is None
    assert "after 40 steps (2x allreduce's)" in rec["time_to_target_why"]


def test_without_a_target_an_arm_is_timed_to_its_own_final_loss():
    curve = [1.0, 0.5, 0.9, 0.8, 0.7, 0.6]
    rec = accuracy(curve, list(range(6)), steps=6, target=None)
    assert rec["target_loss"] == rec["loss_at_equal_steps"] == pytest.approx(0.7)
    assert rec["steps_to_target"] == 6  # the first full window (0.78) is above it


def _rec(arm, wire, loss, tta):
    return {"workload": "resnet", "arm": arm, "status": "ok", "wire_bytes_per_step": wire,
            "ledger_bytes_per_step": wire / 2, "wire_over_ledger": 2.0, "step_time_s": 0.1,
            "loss_at_equal_steps": loss, "time_to_target_s": tta, "steps_run": 100,
            "target_loss": 0.5}


def test_report_table_and_frontier_points():
    results = [_rec("allreduce", 10e6, 0.5, 100.0), _rec("powersgd@4", 1e5, 0.52, 30.0),
               _rec("lgreco_powersgd@4", 7e4, 0.51, None), _rec("topk@0.01", 2e5, 0.6, 40.0)]
    results[2]["steps_run"] = 200
    payload = {"config": {"bandwidth": "100mbit", "burst": "32kbit", "delay": None,
                          "steps": {"resnet": 100}, "warmup_steps": 3, "workloads": ["resnet"],
                          "command": "python -m benchmarks.network.netbench",
                          "env": {"cpus": 2, "machine": "x86_64", "torch": "2"}},
               "results": results, "figures": {}, "curves": {}}
    text = section(payload, "x.json")
    assert "| resnet | powersgd@4 | ok |" in text and "0.520 (1.040)" in text
    assert "30.0 (0.30)" in text and "never in 200 steps" in text
    points = frontier_points(payload)
    assert points[("resnet", "powersgd")]["uniform"] == [(1e5, 0.52, 30.0, "4")]
    assert points[("resnet", "powersgd")]["adaptive"] == [(7e4, 0.51, None, "4")]
    assert points[("resnet", "topk")]["adaptive"] == []


def test_old_result_files_still_render():
    """README renders committed files from before time-to-accuracy (final_loss only)."""
    old = {"workload": "lm", "arm": "co2", "status": "ok", "wire_bytes_per_step": 1e6,
           "ledger_bytes_per_step": 5e5, "wire_over_ledger": 2.0, "step_time_s": 0.5,
           "final_loss": 2.5}
    payload = {"config": {"bandwidth": "100mbit", "burst": "1mbit", "delay": None,
                          "steps": {"lm": 60}, "warmup_steps": 3, "workloads": ["lm"],
                          "command": "x", "env": {"cpus": 16, "machine": "x86_64",
                                                  "torch": "2"}},
               "results": [old], "figures": {}, "curves": {}}
    assert "| lm | co2 | ok |" in section(payload, "old.json") and "2.500" in section(
        payload, "old.json")
