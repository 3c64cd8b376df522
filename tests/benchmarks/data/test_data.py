"""The dataset-compression benchmarks run end to end and write the records README reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss", reason="needs faiss-cpu (the data extra)")


def test_data_quality_records(tmp_path):
    from benchmarks.data import quality as data_quality

    out = tmp_path / "q.json"
    assert data_quality.main(["--datasets", "digits", "--methods", "random,dq,dq-kmeans,el2n",
                              "--seeds", "2", "--steps", "60", "--probe-epochs", "2", "--json",
                              str(out)]) == 0
    payload = json.loads(out.read_text())
    results = payload["results"]
    assert len(results) == 4 * 3  # methods x ratios
    config = payload["config"]
    assert config["data_sha256"]["digits"] == data_quality.fingerprint(
        data_quality.load("digits", "test"))
    assert config["data_sha256"]["digits"] != data_quality.fingerprint(
        data_quality.load("digits", "val"))
    packages = config["env"]["packages"]
    assert set(packages) == set(data_quality.PACKAGES) and packages["numpy"] == np.__version__
    keys = {"dataset", "method", "ratio", "acc_mean", "acc_std", "diff_vs_random", "wins",
            "seeds"}
    random = {r["ratio"]: np.array(r["accs"]) for r in results if r["method"] == "random"}
    for r in results:
        assert keys <= set(r) and r["seeds"] == 2 and 0 <= r["acc_mean"] <= 1
        if r["method"] == "random":
            assert r["diff_vs_random"] == 0 and r["wins"] == 0 and r["diff_ci95"] == 0
        accs = np.array(r["accs"])  # the per-seed figures the summaries come from
        assert r["acc_mean"] == pytest.approx(accs.mean())
        assert r["diff_ci95"] == pytest.approx(data_quality.ci95(accs - random[r["ratio"]]))


def test_ci95_is_the_paired_t_half_width():
    from benchmarks.common import ci95

    # diffs 1, 2, 3: sd 1, n 3, t(0.975, 2) = 4.3027
    assert ci95(np.array([1.0, 2.0, 3.0])) == pytest.approx(4.3027 / np.sqrt(3), rel=1e-4)
    assert ci95(np.array([0.5])) == 0.0


def test_data_scale_records(tmp_path):
    from benchmarks.data import scale as data_scale

    out = tmp_path / "s.json"
    assert data_scale.main(["--sizes", "3000,20000", "--dim", "16", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["n"] for r in results] == [3000, 20000]
    for r in results:
        assert r["method"] == "exact"  # classes of ~2,000: below the k-NN switch
        assert r["seconds"] > 0 and r["peak_rss_bytes"] > 10 * 2**20
        assert r["kept"] == pytest.approx(r["n"] / 10, abs=10)


def test_data_quality_does_not_depend_on_the_number_of_processes(tmp_path):
    from benchmarks.data import quality as data_quality

    runs = []
    for jobs in (1, 2):
        out = tmp_path / f"q{jobs}.json"
        assert data_quality.main(["--datasets", "mnist1d", "--methods", "random,kcenter",
                                  "--seeds", "1", "--steps", "20", "--probe-epochs", "1",
                                  "--jobs", str(jobs), "--json", str(out)]) == 0
        payload = json.loads(out.read_text())
        assert payload["config"]["models"] == {"mnist1d": "SignalCNN"}
        runs.append(payload["results"])
    assert runs[0] == runs[1]
    spacing = {(r["method"], r["ratio"]): r["spacing_mean"] for r in runs[0]}
    for ratio in data_quality.RATIOS:  # k-center keeps samples apart; random does not try
        assert spacing[("kcenter", ratio)] > spacing[("random", ratio)]


def test_spacing_is_the_mean_distance_to_the_nearest_kept_sample_of_the_same_class():
    from benchmarks.data.quality import spacing

    x = np.array([[0.0], [1.0], [3.0], [10.0], [50.0], [52.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    # class 0 keeps 0, 1, 3 (nearest: 1, 1, 2); class 1 keeps 50, 52 (2, 2); 10 is dropped
    assert spacing(x, y, np.array([0, 1, 2, 4, 5])) == pytest.approx(8 / 5)
    assert spacing(x, y, np.array([0, 3])) == 0.0  # no class keeps two samples


def test_validation_split_holds_out_a_fifth_of_the_training_set_and_never_the_test_set():
    from benchmarks.data import quality as data_quality

    fit, held = data_quality.holdout(1000)
    assert len(held) == 200 and set(fit).isdisjoint(held) and set(fit) | set(held) == set(
        range(1000))
    assert all((a == b).all() for a, b in zip(data_quality.holdout(1000), (fit, held)))
    xtr, _, xte, _ = data_quality.load("digits", "test")
    xfit, yfit, xval, yval = data_quality.load("digits", "val")
    assert (len(xfit), len(xval)) == (len(xtr) - int(0.2 * len(xtr)), int(0.2 * len(xtr)))
    assert len(xval) != len(xte) and len(yfit) == len(xfit) and len(yval) == len(xval)


def test_report_says_which_split_and_which_features():
    from benchmarks.data.report import quality

    cfg = {"seeds": 2, "ratios": [0.1], "command": "c", "seconds": 1.0,
           "models": {"digits": "MLP"}}
    rec = {"dataset": "digits", "ratio": 0.1, "acc_mean": 0.9, "acc_std": 0.01,
           "diff_vs_random": 0.02, "wins": 2, "seeds": 2}
    results = [{**rec, "method": "random", "diff_vs_random": 0.0, "wins": 0},
               {**rec, "method": "kcenter"}]
    val = quality({"config": {**cfg, "split": "val", "features": "input"},
                   "results": results}, "v.json")
    assert "validation split" in val[0] and "the standardised inputs" in val[0]
    test = quality({"config": {**cfg, "split": "test", "features": "auto",
                               "auto_features": {"kcenter": "input", "dq": "probe"}},
                    "results": results}, "t.json")
    assert "test set" in test[0] and "kcenter: the standardised inputs" in test[0]
    assert test[-1] == "| digits | kcenter | 90.0 ± 1.0 (+2.0, 2/2) |"
    with_ci = quality({"config": {**cfg, "features": "input"}, "results": [
        {**r, "diff_ci95": 0.015} for r in results]}, "t.json")
    assert "95% confidence" in with_ci[0] and "95% confidence" not in test[0]
    assert with_ci[-1] == "| digits | kcenter | 90.0 ± 1.0 (+2.0 ± 1.5, 2/2) |"
    assert not any("Spacing" in line for line in test)  # records without spacing: no table
    spaced = [{**r, "spacing_mean": 4.5 + (r["method"] == "kcenter"),
               "spacing_diff_vs_random": float(r["method"] == "kcenter")} for r in results]
    both = quality({"config": {**cfg, "features": "input"}, "results": spaced}, "t.json")
    assert both[len(test) - 1] == test[-1] and "Spacing" in both[len(test) + 1]
    assert both[-2:] == ["| digits | random | 4.50 |", "| digits | kcenter | 5.50 (+1.00) |"]
