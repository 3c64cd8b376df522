"""``mpirun -n 2 distcomp-data ...``: real Open MPI ranks, results equal to the local path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets", reason="needs Hugging Face datasets (the data extra)")
pytest.importorskip("mpi4py", reason="needs mpi4py (the mpi extra, built against Open MPI)")
if shutil.which("mpirun") is None:
    pytest.skip("needs mpirun (Debian: openmpi-bin)", allow_module_level=True)

from distcomp.data import scores  # noqa: E402
from distcomp.data.dynamics import train_probe  # noqa: E402

SCRIPT = Path(sys.executable).with_name("distcomp-data")
ENCODER = '''
import torch
def encoder():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh())
'''


def mpirun(*argv, env_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = ["-x", "OMP_NUM_THREADS"]
    if env_path is not None:
        env["PYTHONPATH"] = f"{env_path}:{env.get('PYTHONPATH', '')}"
        extra += ["-x", "PYTHONPATH"]
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", *extra, str(SCRIPT),
           *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 301)
    x = (rng.normal(size=(301, 6)) + y[:, None]).astype(np.float32)
    path = tmp_path_factory.mktemp("mpi") / "t.npz"
    np.savez(path, x=x, label=y)
    return path, x, y


def test_prune_averages_one_probe_run_per_rank(table, tmp_path):
    path, x, y = table
    out = tmp_path / "p"
    proc = mpirun("prune", "--input", path, "--output", out, "--ratio", 0.3, "--method", "el2n",
                  "--epochs", 5)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mpi_ranks"] == 2
    runs = [train_probe(x, y, epochs=5, score_epoch=1, seed=s) for s in (0, 1)]
    want = scores.top(np.mean([scores.el2n(r.probs, y) for r in runs], axis=0), y, 0.3)
    np.testing.assert_array_equal(np.load(out / "indices.npy"), want)


def test_embed_shards_rows_and_gathers_them_in_order(table, tmp_path):
    path, x, _ = table
    (tmp_path / "enc_mod.py").write_text(ENCODER)
    out = tmp_path / "e"
    proc = mpirun("embed", "--input", path, "--output", out, "--model", "enc_mod:encoder",
                  env_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("enc_mod", tmp_path / "enc_mod.py")
    enc_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(enc_mod)
    with torch.no_grad():
        want = enc_mod.encoder()(torch.from_numpy(x)).numpy()
    got = np.stack(datasets.load_from_disk(str(out)).with_format("numpy")["embedding"])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_bad_input_fails_on_every_rank_without_hanging(table, tmp_path):
    path, _, _ = table
    proc = mpirun("prune", "--input", path, "--output", tmp_path / "o", "--ratio", 2,
                  "--method", "el2n")
    assert proc.returncode != 0 and "ratio must be in (0, 1]" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_quantize_with_a_model_shards_the_embedding_and_matches_one_process(table, tmp_path):
    """Every command whose features come from --model embeds in shards (rank 0 alone would
    wait forever in the gather for ranks that had returned)."""
    path, _, _ = table
    (tmp_path / "enc_mod.py").write_text(ENCODER)
    args = ["quantize", "--input", path, "--ratio", 0.3, "--model", "enc_mod:encoder"]
    proc = mpirun(*args, "--output", tmp_path / "m", env_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"}
    local = subprocess.run([str(SCRIPT), *map(str, args), "--output", str(tmp_path / "l")],
                           capture_output=True, text=True, timeout=300, env=env)
    assert local.returncode == 0, local.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "m" / "indices.npy"),
                                  np.load(tmp_path / "l" / "indices.npy"))
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["mpi_ranks"] == 2
