"""benchmarks.micro.gpu: the arithmetic on the CPU (every path but the CUDA timer), the skip
here."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.micro import gpu
from distcomp.compression.compressor import method_names


def test_break_even_link_speed_is_where_codec_time_equals_wire_time_saved():
    out = gpu.links(dense=4_000_000, payload=400_000, codec_s=0.001)
    # 3.6 MB saved in 1 ms: the saving beats the codec up to 3.6e9 B/s = 28.8 Gbit/s
    assert out["pays_below_gbit"] == pytest.approx(28.8)
    assert out["10gbit"]["compressed_s"] < out["10gbit"]["dense_s"]
    assert out["100gbit"]["compressed_s"] > out["100gbit"]["dense_s"]
    assert gpu.links(100, 100, 0.001)["pays_below_gbit"] is None  # nothing saved


def test_every_setting_measures_on_a_small_gradient_on_the_cpu():
    rows = gpu.measure(128 * 4096, repeats=1, device="cpu")
    assert {r["method"] for r in rows} == set(method_names())
    for r in rows:
        assert r["payload_bytes"] < r["dense_bytes"] == 4 * 128 * 4096 and r["codec_s"] > 0
        assert 0 <= r["rel_error"] < 1.5
        assert all(r[f"{g}gbit"]["dense_s"] > 0 for g in gpu.LINKS_GBIT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_writes_why(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--elements", "8192", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["status"] == "skipped" and "no CUDA device" in payload["reason"]
    assert "gpu: skipped" in capsys.readouterr().out
