"""benchmarks.defaults at its quick size: real 2-rank runs, paired ratios, README table."""

from __future__ import annotations

import json

from benchmarks import defaults


def test_quick_run_pairs_every_arm_with_allreduce_and_renders(tmp_path):
    out = tmp_path / "d.json"
    assert defaults.main(["--quick", "--workloads", "cnn", "--seeds", "0,1",
                          "--arms", "torch fp16 (noise floor),powersgd,topk no momentum correction",
                          "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    rows = {r["arm"]: r for r in payload["rows"]}
    assert list(rows) == ["allreduce", "torch fp16 (noise floor)", "powersgd",
                          "topk no momentum correction"]
    assert rows["allreduce"]["per_seed"] == [1.0, 1.0]
    for arm in ("powersgd", "topk no momentum correction"):
        r = rows[arm]
        assert r["seeds"] == [0, 1] and len(r["per_seed"]) == 2
        assert 0.5 < r["loss_over_allreduce"] < 2.0
        assert r["dense_over_sent"] > 1.0  # 4 of the 14 steps compress after the warm-up
    floor = rows["torch fp16 (noise floor)"]  # torch's own hook: no ledger of ours
    assert floor["bytes_per_step"] is None and 0.5 < floor["loss_over_allreduce"] < 2.0
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{defaults.START}\nold\n{defaults.END}\ny\n")
    assert defaults.main(["--json", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| cnn | powersgd | **" in text and "old" not in text
