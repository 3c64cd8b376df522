"""benchmarks.integrations: README's table from records (a real run is `make bench`; the same
launch scripts run under torchrun and horovodrun in tests/hooks and tests/launch)."""

from __future__ import annotations

from benchmarks.integrations import missing, table


def _rec(framework, comm, nbytes, loss):
    return {"framework": framework, "comm": comm, "bytes_per_step": nbytes, "final_loss": loss,
            "step_ms": 1.0, "same_losses_as_ddp": True}


def test_table_rows_ratios_and_skips():
    payload = {"config": {"width": 32, "steps": 4, "rank": 4}, "results": [
        _rec("ddp", "none", 1000.0, 0.5), _rec("ddp", "topk", 40.0, 0.6),
        {"framework": "horovod", "comm": "none", "skipped": "not here"}]}
    text = table(payload)
    assert "| ddp | none | 1,000 | own all-reduce | 0.5000 | 1.0 | yes |" in text
    assert "| ddp | topk | 40 | 25.0x fewer | 0.6000 | 1.0 | yes |" in text
    assert "| horovod | none | skipped: not here |" in text
    assert missing("ddp") is None
