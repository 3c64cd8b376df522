"""Input columns (one vector column, several columns, or every numeric column) and
``--features``: auto gives each method the source the validation split chose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets", reason="needs Hugging Face datasets (the data extra)")
pytest.importorskip("faiss", reason="needs faiss-cpu (the data extra)")

from distcomp.data import scores, sources  # noqa: E402
from distcomp.data.cli import main  # noqa: E402
from distcomp.data.dynamics import standardise  # noqa: E402
from distcomp.data.storage import DataError  # noqa: E402

NAMES = [f"f{i}" for i in range(30)]


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> tuple[dict[str, Path], np.ndarray, np.ndarray]:
    """The same f0..f29,label table as csv and parquet (180 rows, 3 classes)."""
    rng = np.random.default_rng(1)
    y = np.arange(180) % 3
    x = rng.normal(size=(180, 30)) + 2.0 * y[:, None] * (np.arange(30) < 5)
    table = datasets.Dataset.from_dict({**{n: x[:, i] for i, n in enumerate(NAMES)},
                                        "label": y})
    d = tmp_path_factory.mktemp("wide")
    table.to_csv(str(d / "t.csv"), index=False)
    table.to_parquet(str(d / "t.parquet"))
    return {"csv": d / "t.csv", "parquet": d / "t.parquet"}, x, y


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_every_numeric_column_but_the_label_is_an_input(wide, tmp_path, fmt):
    paths, x, y = wide
    out = tmp_path / "kc"
    assert main(["prune", "--input", paths[fmt], "--output", out, "--ratio", 0.2,
                 "--method", "kcenter"]) == 0
    m = manifest(out)
    assert m["input_columns"] == NAMES and m["features_requested"] == "auto"
    assert m["features"].startswith("input columns")  # auto: k-center on the inputs
    want = scores.k_center(standardise(x), y, 0.2, seed=0)
    np.testing.assert_array_equal(np.load(out / "indices.npy"), want)
    out = tmp_path / "dq"
    assert main(["quantize", "--input", paths[fmt], "--output", out, "--ratio", 0.2,
                 "--epochs", 2]) == 0
    assert manifest(out)["features"].startswith("hidden layer of the probe MLP on ['f0'")


def test_columns_picks_and_orders_the_inputs(wide, tmp_path):
    paths, x, y = wide
    out = tmp_path / "three"
    assert main(["prune", "--input", paths["parquet"], "--output", out, "--ratio", 0.2,
                 "--method", "kcenter", "--columns", "f2, f0,f1"]) == 0
    assert manifest(out)["input_columns"] == ["f2", "f0", "f1"]
    want = scores.k_center(standardise(x[:, [2, 0, 1]]), y, 0.2, seed=0)
    np.testing.assert_array_equal(np.load(out / "indices.npy"), want)


def test_column_and_columns_exclude_each_other(wide, tmp_path, capsys):
    paths, _, _ = wide
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "--input", paths["csv"], "--output", tmp_path / "o", "--ratio", 0.5,
              "--method", "kcenter", "--column", "f0", "--columns", "f1,f2"])
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_input_column_discovery():
    def ds(**cols):
        return datasets.Dataset.from_dict({**cols, "label": [0, 1]})

    vec, num = [[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0]
    assert sources.input_columns(ds(emb=vec, a=num)) == ["emb"]  # the one vector column
    assert sources.input_columns(ds(x=vec, embedding=vec)) == ["x"]  # embed's output
    with pytest.raises(DataError, match="several vector columns"):
        sources.input_columns(ds(a=vec, b=vec))
    assert sources.input_columns(ds(a=num, s=["u", "v"], b=[1, 2], __index_level_0__=[0, 1])
                                 ) == ["a", "b"]  # numbers only; pandas' index left out
    with pytest.raises(DataError, match="no numeric input columns"):
        sources.input_columns(ds(s=["u", "v"]))
    with pytest.raises(DataError, match="label column"):
        sources.input_columns(ds(a=num), columns="a,label")
    with pytest.raises(DataError, match="more than once"):
        sources.input_columns(ds(a=num), columns="a,a")
    with pytest.raises(DataError, match="no column 'z'"):
        sources.input_columns(ds(a=num), columns="a,z")
    assert sources.input_matrix(ds(a=num, v=vec), ["v", "a"]).tolist() == [[1, 2, 1], [3, 4, 2]]


def test_auto_features_per_method_and_explicit_choices():
    r = sources.resolve
    assert r("auto", "prune", "kcenter", None) == "input"
    assert r("auto", "quantize", "kmeans", None) == "input"
    assert r("auto", "quantize", "graphcut", None) == "probe"
    assert r("auto", "prune", "moderate", None) == "probe"
    assert r("auto", "dedup", None, None) == "input"
    assert r("auto", "embed", None, None) == "probe"
    assert r("auto", "prune", "kcenter", "m:f") == "model"
    assert r("probe", "prune", "kcenter", None) == "probe"
    assert r("emb", "prune", "kcenter", None) == "column:emb"
    assert r("column:input", "prune", "kcenter", None) == "column:input"
    with pytest.raises(DataError, match="--model gives the features"):
        r("input", "prune", "kcenter", "m:f")


def test_explicit_feature_sources_still_work(wide, tmp_path):
    paths, x, y = wide
    base = ["prune", "--input", paths["parquet"], "--ratio", 0.2, "--method", "kcenter",
            "--epochs", 2]
    assert main([*base, "--output", tmp_path / "p", "--features", "probe"]) == 0
    assert manifest(tmp_path / "p")["features"].startswith("hidden layer of the probe")
    table = tmp_path / "emb"
    datasets.Dataset.from_dict({"x": x.astype(np.float32), "emb": x[:, :4].astype(np.float32),
                                "label": y}).save_to_disk(str(table))
    assert main(["prune", "--input", table, "--ratio", 0.2, "--method", "kcenter",
                 "--output", tmp_path / "c", "--features", "emb"]) == 0  # a column, as is
    assert manifest(tmp_path / "c")["features"] == "column 'emb'"
    np.testing.assert_array_equal(np.load(tmp_path / "c" / "indices.npy"), scores.k_center(
        x[:, :4].astype(np.float32), y, 0.2, seed=0))
    assert main([*base, "--output", tmp_path / "i", "--features", "input"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "i" / "indices.npy"),
                                  scores.k_center(standardise(x), y, 0.2, seed=0))
