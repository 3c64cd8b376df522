"""The soak harness itself: runs counted as ok, hang (killed at the wall-clock limit) or crash,
the records it writes, and the lossy-versus-loopback comparison."""

from __future__ import annotations

import json

import pytest

from benchmarks.reliability import soak


def test_short_soak_records_every_arm(tmp_path):
    out = tmp_path / "s.json"
    assert soak.main(["--runs", "2", "--arms", "co2,gnnpipe", "--networks", "loopback",
                      "--steps", "6", "--json", str(out)]) == 0
    records = json.loads(out.read_text())["results"]
    assert [r["arm"] for r in records] == ["co2", "gnnpipe"]
    for r in records:
        assert (r["network"], r["runs"], r["ok"], r["hangs"], r["crashes"]) == \
            ("loopback", 2, 2, 0, 0), r
        assert r["max_seconds"] > 0 and r["loss_std"] >= 0  # seeds 0 and 1


def test_a_run_past_its_limit_is_killed_and_counted_as_a_hang(tmp_path):
    out = tmp_path / "s.json"
    assert soak.main(["--runs", "1", "--arms", "allreduce", "--networks", "loopback",
                      "--run-timeout", "0.3", "--json", str(out)]) == 1
    (r,) = json.loads(out.read_text())["results"]
    assert (r["hangs"], r["ok"]) == (1, 0) and r["max_seconds"] < 5


def test_lossy_runs_are_compared_with_the_loopback_spread():
    clean = {"arm": "a", "network": "loopback", "ok": 10, "loss_mean": 1.0, "loss_std": 0.1}
    near = {"arm": "a", "network": "lossy", "ok": 10, "loss_mean": 1.05}
    far = {"arm": "a", "network": "lossy", "ok": 10, "loss_mean": 1.5}
    soak.compare([clean, near, far])
    assert near["loss_matches_loopback"] and not far["loss_matches_loopback"]


def test_unknown_arm_is_refused():
    with pytest.raises(SystemExit):
        soak.parse_args(["--json", "x", "--arms", "allreduce,ring"])
