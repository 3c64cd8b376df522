"""distcomp-data end to end on small real datasets: round trips, and every bad input refused
with one line, exit status 2 and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets", reason="needs Hugging Face datasets (the data extra)")
pytest.importorskip("faiss", reason="needs faiss-cpu (the data extra)")
from sklearn.datasets import load_digits  # noqa: E402

from distcomp.data.cli import main  # noqa: E402
from distcomp.data.quantize import class_targets  # noqa: E402


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    d = load_digits()
    path = tmp_path_factory.mktemp("in") / "digits"
    features = datasets.Features({
        "x": datasets.Sequence(datasets.Value("float32"), length=64),
        "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
    })
    datasets.Dataset.from_dict({"x": d.data.astype(np.float32), "label": d.target},
                               features=features).save_to_disk(str(path))
    return path


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_quantize_round_trip(digits, tmp_path):
    out = tmp_path / "dq"
    assert run("quantize", "--input", digits, "--output", out, "--ratio", 0.3,
               "--epochs", 3) == 0
    keep = np.load(out / "indices.npy")
    manifest = json.loads((out / "manifest.json").read_text())
    original = datasets.load_from_disk(str(digits)).with_format("numpy")
    labels = original["label"]
    kept = datasets.load_from_disk(str(out)).with_format("numpy")
    assert np.all(np.diff(keep) > 0) and len(kept) == len(keep) == manifest["rows_kept"]
    np.testing.assert_array_equal(kept["x"], original["x"][keep])  # the rows, in order
    want = class_targets(labels, 0.3)
    assert {int(c): v["kept"] for c, v in manifest["counts_per_class"].items()} == want
    assert manifest["method"] == "auto" and manifest["seed"] == 0
    assert len(manifest["input_fingerprint"]) == 64
    # same seed, same subset; inspect reads the output back
    again = tmp_path / "dq2"
    assert run("quantize", "--input", digits, "--output", again, "--ratio", 0.3,
               "--epochs", 3) == 0
    assert np.array_equal(np.load(again / "indices.npy"), keep)
    assert run("inspect", "--input", out) == 0
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("method", ["random", "el2n", "grand", "forgetting", "moderate",
                                    "kcenter", "ccs"])
def test_prune_methods_keep_exact_class_counts(digits, tmp_path, method):
    out = tmp_path / method
    assert run("prune", "--input", digits, "--output", out, "--ratio", 0.2, "--method",
               method, "--epochs", 3) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    labels = datasets.load_from_disk(str(digits)).with_format("numpy")["label"]
    assert {int(c): v["kept"] for c, v in manifest["counts_per_class"].items()} == \
        class_targets(labels, 0.2)


def test_quantize_with_kmeans_bins(digits, tmp_path):
    out = tmp_path / "km"
    assert run("quantize", "--input", digits, "--output", out, "--ratio", 0.2, "--binning",
               "kmeans", "--epochs", 3) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    labels = datasets.load_from_disk(str(digits)).with_format("numpy")["label"]
    assert manifest["parameters"]["binning"] == "kmeans"
    assert {int(c): v["kept"] for c, v in manifest["counts_per_class"].items()} == \
        class_targets(labels, 0.2)


def test_embed_then_quantize_and_dedup_on_the_embedding(digits, tmp_path):
    emb = tmp_path / "emb"
    assert run("embed", "--input", digits, "--output", emb, "--epochs", 2) == 0
    ds = datasets.load_from_disk(str(emb))
    assert "embedding" in ds.column_names and len(ds) == 1797
    assert run("quantize", "--input", emb, "--output", tmp_path / "q", "--ratio", 0.1,
               "--features", "embedding", "--method", "knn") == 0
    assert run("dedup", "--input", emb, "--output", tmp_path / "d", "--features",
               "embedding", "--threshold", 0.999) == 0
    assert 0 < json.loads((tmp_path / "d" / "manifest.json").read_text())["rows_kept"] <= 1797
    again = tmp_path / "again"  # embedding an embedded set: a clear error, nothing computed
    assert run("embed", "--input", emb, "--output", again) == 2
    assert not again.exists()


def test_npz_csv_and_parquet_inputs(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 5)).astype(np.float32), rng.integers(0, 4, 200)
    np.savez(tmp_path / "d.npz", x=x, label=y)
    assert run("prune", "--input", tmp_path / "d.npz", "--output", tmp_path / "o1",
               "--ratio", 0.5, "--method", "random") == 0
    table = datasets.Dataset.from_dict({"f": x[:, 0], "label": y})
    table.to_csv(str(tmp_path / "d.csv"), index=False)
    table.to_parquet(str(tmp_path / "d.parquet"))
    for name in ("d.csv", "d.parquet"):
        assert run("prune", "--input", tmp_path / name, "--output", tmp_path / f"o-{name}",
                   "--ratio", 0.5, "--method", "random") == 0
        assert len(np.load(tmp_path / f"o-{name}" / "indices.npy")) == sum(
            class_targets(y, 0.5).values())


def bad(capsys, tmp_path, *argv) -> str:
    capsys.readouterr()  # drop what building the inputs printed
    before = sorted(os.listdir(tmp_path))
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distcomp-data: error:") and "\n" not in err, err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no temporary left
    return err


def test_bad_inputs_are_refused_cleanly(digits, tmp_path, capsys):
    out = tmp_path / "out"
    q = ["quantize", "--input", digits, "--output", out]
    assert "no column 'pixels'" in bad(capsys, tmp_path, *q, "--ratio", 0.3, "--column",
                                       "pixels")
    assert "no column 'emb'" in bad(capsys, tmp_path, *q, "--ratio", 0.3, "--features", "emb")
    for ratio in (0, 1.5, -1):
        assert "ratio" in bad(capsys, tmp_path, *q, "--ratio", ratio)
    assert "--bins" in bad(capsys, tmp_path, *q, "--ratio", 0.3, "--bins", 0)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    assert "cannot read" in bad(capsys, tmp_path, "prune", "--input",
                                tmp_path / "broken.parquet", "--output", out, "--ratio",
                                0.5, "--method", "random")
    assert "does not exist" in bad(capsys, tmp_path, *q[:1], "--input", tmp_path / "nope",
                                   "--output", out, "--ratio", 0.5)
    # a declared class with no rows
    empty = tmp_path / "empty"
    datasets.Dataset.from_dict(
        {"x": [[0.0, 1.0], [1.0, 0.0]], "label": [0, 0]},
        features=datasets.Features({"x": datasets.Sequence(datasets.Value("float32")),
                                    "label": datasets.ClassLabel(names=["a", "b"])}),
    ).save_to_disk(str(empty))
    assert "['b']" in bad(capsys, tmp_path, "prune", "--input", empty, "--output", out,
                          "--ratio", 0.5, "--method", "random")


def test_existing_output_needs_force(digits, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["prune", "--input", digits, "--output", out, "--ratio", 0.1, "--method", "random"]
    assert run(*args) == 0
    first = np.load(out / "indices.npy")
    assert "--force" in bad(capsys, tmp_path, *args[:-2], "--method", "random", "--seed", 1)
    assert np.array_equal(np.load(out / "indices.npy"), first)  # untouched
    assert run(*args, "--seed", 1, "--force") == 0
    assert not np.array_equal(np.load(out / "indices.npy"), first)
    assert leftovers(tmp_path) == []


def test_console_script_is_installed(digits, tmp_path):
    script = Path(sys.executable).with_name("distcomp-data")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not parquet at all")
    proc = subprocess.run([str(script), "prune", "--input", str(tmp_path / "broken.parquet"),
                           "--output", str(tmp_path / "o"), "--ratio", "0.5", "--method",
                           "random"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr  # one line
    assert proc.stderr.startswith("distcomp-data: error: cannot read")
    proc = subprocess.run([str(script), "inspect", "--input", str(digits)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == 1797
    proc = subprocess.run([str(script), "prune", "--input", str(digits)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
