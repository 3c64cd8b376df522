"""benchmarks.integrations: a tiny real run writes valid records, marks a framework it cannot
run as skipped with the reason, and regenerates README's table from the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.integrations import table

REPO = Path(__file__).resolve().parents[2]


def test_tiny_run_writes_records_and_the_readme_table(tmp_path):
    out = tmp_path / "integrations.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.integrations", "--json", str(out), "--frameworks",
         "ddp", "--comms", "topk", "--steps", "4", "--width", "32"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "integrations: ddp: topk" in proc.stdout
    payload = json.loads(out.read_text())
    none, topk = payload["results"]
    assert (none["comm"], topk["comm"]) == ("none", "topk")
    assert none["steps"] == topk["steps"] == 4 and none["same_losses_as_ddp"]
    assert topk["bytes_per_step"] < none["bytes_per_step"]
    payload["results"].append({"framework": "horovod", "comm": "none", "skipped": "not here"})
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- integrations:start -->\nold\n<!-- integrations:end -->\nb\n")
    subprocess.run([sys.executable, "-m", "benchmarks.integrations", "--json", str(out),
                    "--readme", str(readme)], cwd=REPO, check=True, timeout=60)
    text = readme.read_text()
    assert "old" not in text and "| ddp | topk |" in text and text.endswith("end -->\nb\n")
    assert "| horovod | none | skipped: not here |" in table(payload)
