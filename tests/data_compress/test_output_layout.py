"""The output directory is itself a ``save_to_disk`` dataset (manifest and indices beside
the data), made with its parents and the usual modes, atomically; old outputs (rows in
``data/``) are still read; the manifest says who made it, how and from what."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets", reason="needs Hugging Face datasets (the data extra)")
pytest.importorskip("faiss", reason="needs faiss-cpu (the data extra)")

from distcomp.data import storage  # noqa: E402
from distcomp.data.cli import main  # noqa: E402


@pytest.fixture()
def table(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 240)
    path = tmp_path / "t.npz"
    np.savez(path, x=(rng.normal(size=(240, 5)) + y[:, None]).astype(np.float32), label=y)
    return path


@pytest.fixture()
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def modes(root: Path) -> set[tuple[str, int]]:
    return {("d" if p.is_dir() else "f", stat.S_IMODE(p.stat().st_mode))
            for p in [root, *root.rglob("*")]}


def test_output_is_a_save_to_disk_folder_with_manifest_and_indices_beside(table, tmp_path,
                                                                           umask_022):
    out = tmp_path / "deep" / "er" / "kept"  # parents do not exist yet
    argv = ["prune", "--input", table, "--output", out, "--ratio", 0.25, "--method", "random"]
    assert main(argv) == 0
    kept = datasets.load_from_disk(str(out))  # the folder itself, extra files tolerated
    assert isinstance(kept, datasets.Dataset)
    keep = np.load(out / "indices.npy")
    with np.load(table) as z:
        np.testing.assert_array_equal(kept.with_format("numpy")["x"], z["x"][keep])
    assert {"manifest.json", "indices.npy", "state.json", "dataset_info.json"} <= \
        {p.name for p in out.iterdir()}
    assert not (out / "data").exists()
    assert modes(tmp_path / "deep") == {("d", 0o755), ("f", 0o644)}  # not mkdtemp's 0700
    manifest = json.loads((out / "manifest.json").read_text())
    from importlib.metadata import version

    assert manifest["version"] == version("distcomp")
    assert manifest["argv"] == ["distcomp-data", *map(str, argv)]
    assert manifest["input"] == str(table.resolve()) and Path(manifest["input"]).is_absolute()
    assert sorted(p.name for p in out.parent.iterdir()) == ["kept"]  # no temporaries left


def test_a_failed_write_leaves_no_output_and_no_new_parents(table, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)  # fails after the rows were saved
    with pytest.raises(OSError, match="disk full"):
        storage.write_output(tmp_path / "a" / "b" / "out", storage.load(table), np.arange(3),
                             {})
    assert sorted(os.listdir(tmp_path)) == ["t.npz"]


def test_output_refused_where_it_cannot_be_or_would_lose_the_input(table, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    base = ["prune", "--ratio", 0.5, "--method", "random"]
    assert main([*base, "--input", table, "--output", tmp_path / "file" / "out"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    ds_dir = tmp_path / "ds"
    storage.load(table).save_to_disk(str(ds_dir))
    for target in (ds_dir, tmp_path):  # the input itself, or a folder holding it
        assert main([*base, "--input", ds_dir, "--output", target, "--force"]) == 2
        err = capsys.readouterr().err
        assert "would replace the input" in err and err.count("\n") == 1
    assert datasets.load_from_disk(str(ds_dir)).num_rows == 240


def old_layout(table: Path, out: Path) -> np.ndarray:
    """An output as earlier versions wrote it: rows in out/data."""
    keep = np.arange(0, 240, 3)
    storage.load(table).select(keep).save_to_disk(str(out / "data"))
    np.save(out / "indices.npy", keep)
    (out / "manifest.json").write_text(json.dumps({
        "command": "prune", "rows_in": 240, "rows_kept": len(keep), "input": str(table),
        "input_fingerprint": storage.fingerprint(table)}))
    return keep


def test_old_outputs_are_still_read(table, tmp_path, capsys):
    out = tmp_path / "old"
    keep = old_layout(table, out)
    assert len(storage.load(out)) == len(keep)
    assert main(["inspect", "--input", out]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == len(keep) and "earlier distcomp-data layout" in info["layout"]
    # an old output as the input of a new command, and as a subset to evaluate
    assert main(["prune", "--input", out, "--output", tmp_path / "new", "--ratio", 0.5,
                 "--method", "random"]) == 0
    new = json.loads((tmp_path / "new" / "manifest.json").read_text())
    assert new["rows_in"] == len(keep)
    assert datasets.load_from_disk(str(tmp_path / "new")).num_rows == new["rows_kept"]
    assert main(["evaluate", "--input", table, "--subset", out, "--seeds", 2,
                 "--eval-steps", 20]) == 0
    assert "evaluation" in json.loads((out / "manifest.json").read_text())


def test_manifest_rewrite_is_atomic_and_keeps_the_mode(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    os.chmod(tmp_path / "manifest.json", 0o640)
    storage.update_manifest(tmp_path, {"a": 1})
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"a": 1}
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["manifest.json"]  # no temporary left


def test_fingerprint_of_an_output_ignores_its_manifest(table, tmp_path):
    out = tmp_path / "o"
    assert main(["prune", "--input", table, "--output", out, "--ratio", 0.5, "--method",
                 "random"]) == 0
    before = storage.fingerprint(out)
    storage.update_manifest(out, {"rewritten": True})
    assert storage.fingerprint(out) == before
    np.save(out / "indices.npy", np.arange(2))
    assert storage.fingerprint(out) != before
