"""The dataset-compression benchmarks run end to end and write the records README reads."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("faiss", reason="needs faiss-cpu (the data extra)")


def test_data_quality_records(tmp_path):
    from benchmarks import data_quality

    out = tmp_path / "q.json"
    assert data_quality.main(["--datasets", "digits", "--methods", "random,dq,el2n", "--seeds",
                              "2", "--steps", "60", "--probe-epochs", "2", "--json",
                              str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert len(results) == 3 * 3  # methods x ratios
    keys = {"dataset", "method", "ratio", "acc_mean", "acc_std", "diff_vs_random", "wins",
            "seeds"}
    for r in results:
        assert keys <= set(r) and r["seeds"] == 2 and 0 <= r["acc_mean"] <= 1
        if r["method"] == "random":
            assert r["diff_vs_random"] == 0 and r["wins"] == 0


def test_data_scale_records(tmp_path):
    from benchmarks import data_scale

    out = tmp_path / "s.json"
    assert data_scale.main(["--sizes", "3000,20000", "--dim", "16", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["n"] for r in results] == [3000, 20000]
    for r in results:
        assert r["method"] == "exact"  # classes of ~2,000: below the k-NN switch
        assert r["seconds"] > 0 and r["peak_rss_bytes"] > 10 * 2**20
        assert r["kept"] == pytest.approx(r["n"] / 10, abs=10)


def test_data_quality_does_not_depend_on_the_number_of_processes(tmp_path):
    from benchmarks import data_quality

    runs = []
    for jobs in (1, 2):
        out = tmp_path / f"q{jobs}.json"
        assert data_quality.main(["--datasets", "mnist1d", "--methods", "random,kcenter",
                                  "--seeds", "2", "--steps", "20", "--probe-epochs", "1",
                                  "--jobs", str(jobs), "--json", str(out)]) == 0
        payload = json.loads(out.read_text())
        assert payload["config"]["models"] == {"mnist1d": "SignalCNN"}
        runs.append(payload["results"])
    assert runs[0] == runs[1]
