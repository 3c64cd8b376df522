"""The GNN benchmark runs every mode end to end (real torchrun ranks) and writes its records."""

from __future__ import annotations

import json

import pytest


def test_gnnpipe_records_every_mode(tmp_path):
    from benchmarks.gnn import gnnpipe

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


@pytest.mark.parametrize("epoch", [1, 3])
def test_a_killed_stage_ends_the_other_with_a_clear_error(tmp_path, epoch):
    """SIGKILL the second pipeline stage mid-training (after a random moment of epoch
    ``epoch``): the first stage exits non-zero within its collective timeout + 10 s, saying a
    peer was lost, and leaves no process behind."""
    import os
    import subprocess
    import sys
    import time

    from tests.multiproc import free_port, kill_one_check_survivor

    port, timeout_s = free_port(), 15
    procs = [subprocess.Popen(
        [sys.executable, "-m", "benchmarks.gnn.worker", "--mode", "pipeline", "--layers",
         "4", "--nodes", "2000", "--epochs", "100000", "--timeout", str(timeout_s), "--out",
         str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(r), "WORLD_SIZE": "2",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in range(2)]
    beat, deadline = tmp_path / "pipeline-4-rank0.progress", time.monotonic() + 120

    def running() -> None:
        while not (beat.exists() and beat.read_text() and int(beat.read_text()) >= epoch):
            assert procs[0].poll() is None and time.monotonic() < deadline, \
                procs[0].stderr.read()[-2000:]
            time.sleep(0.02)

    kill_one_check_survivor(procs, running, timeout_s, lambda err: err.splitlines()[-1],
                            jitter_s=0.3)  # somewhere in the epoch's chunks
