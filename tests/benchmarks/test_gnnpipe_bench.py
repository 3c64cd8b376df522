"""The GNN benchmark runs every mode end to end (real torchrun ranks) and writes its records."""

from __future__ import annotations

import json

import pytest


def test_gnnpipe_records_every_mode(tmp_path):
    from benchmarks import gnnpipe

    out = tmp_path / "g.json"
    assert gnnpipe.main(["--layers", "4", "--epochs", "3", "--nodes", "400", "--chunks", "2",
                         "--bandwidth", "none", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    results = {r["mode"]: r for r in payload["results"]}
    assert set(results) == {"single", "graph_parallel", "pipeline", "hybrid"}
    keys = {"mode", "layers", "ranks", "status", "bytes_per_epoch", "epoch_time_s", "test_acc"}
    for mode, r in results.items():
        assert r["status"] == "ok", r.get("error")
        assert keys <= set(r) and r["ranks"] == gnnpipe.RANKS[mode] and r["layers"] == 4
        assert 0 <= r["test_acc"] <= 1 and r["epoch_time_s"] > 0
    assert results["single"]["bytes_per_epoch"] == 0
    # exact modes: graph parallel trains exactly what one process trains
    assert results["graph_parallel"]["losses"] == pytest.approx(results["single"]["losses"],
                                                                abs=1e-4)
    # the pipeline sends every vertex's hidden row and gradient once per epoch (+ the loss)
    assert results["pipeline"]["bytes_by_key_per_epoch"]["activations"] == 400 * 64 * 4
    figures = payload["figures"]
    assert figures["layers"] == 4
    assert figures["graph_parallel_over_pipeline_bytes"] == pytest.approx(
        results["graph_parallel"]["bytes_per_epoch"] / results["pipeline"]["bytes_per_epoch"])
