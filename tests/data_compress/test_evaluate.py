"""``distcomp-data evaluate`` and ``--evaluate``: a stratified held-out split, random subsets
with the same rows per class, paired seeds, a Student-t interval, and the result in the
subset's manifest; bad input refused in one line without touching the subset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets", reason="needs Hugging Face datasets (the data extra)")
pytest.importorskip("faiss", reason="needs faiss-cpu (the data extra)")
pytest.importorskip("scipy", reason="needs scipy (the data extra)")

from distcomp.data.cli import main  # noqa: E402
from distcomp.data.evaluate import (  # noqa: E402
    evaluate_subset,
    matched_random,
    t_interval,
    validation_split,
)

FAST = ["--seeds", "2", "--eval-steps", "30"]


def xor_blobs(per_blob: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two classes, each two far-apart blobs (XOR layout), and a subset that keeps only one
    blob per class: a model trained on it must get the other two blobs wrong."""
    rng = np.random.default_rng(seed)
    centres = [((0, 0), 0), ((10, 10), 0), ((0, 10), 1), ((10, 0), 1)]
    x = np.concatenate([rng.normal(c, 1.0, size=(per_blob, 2)) for c, _ in centres])
    y = np.repeat([lab for _, lab in centres], per_blob)
    blob = np.repeat(np.arange(4), per_blob)
    return x.astype(np.float32), y, np.flatnonzero((blob == 0) | (blob == 2))


@pytest.fixture()
def made(tmp_path) -> tuple[Path, Path]:
    """An input and a k-center subset of it."""
    x, y, _ = xor_blobs(60)
    path = tmp_path / "in.npz"
    np.savez(path, x=x, label=y)
    out = tmp_path / "kc"
    assert main(["prune", "--input", path, "--output", out, "--ratio", 0.3, "--method",
                 "kcenter"]) == 0
    return path, out


def test_validation_split_is_stratified_seeded_and_leaves_every_class_a_training_row():
    labels = np.array([0] * 50 + [1] * 21 + [2] * 2 + [3])
    held = validation_split(labels, 0.2, seed=3)
    assert [int(held[labels == c].sum()) for c in range(4)] == [10, 4, 0, 0]
    assert np.array_equal(held, validation_split(labels, 0.2, seed=3))
    assert not np.array_equal(held, validation_split(labels, 0.2, seed=4))
    assert validation_split(labels, 0.99, seed=0)[labels == 2].sum() == 1  # n_c - 1 at most


def test_random_baseline_matches_rows_per_class_from_the_training_pool():
    labels = np.arange(100) % 4
    pool = np.arange(20, 100)
    like = np.array([0, 1, 2, 5, 6, 9])
    got = matched_random(labels, pool, like, np.random.default_rng(0))
    assert np.all(np.diff(got) > 0) and set(got) <= set(pool)
    assert np.bincount(labels[got], minlength=4).tolist() == \
        np.bincount(labels[like], minlength=4).tolist()


def test_t_interval_is_the_student_t_95_percent_interval():
    d = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    lo, hi = t_interval(d)
    half = 2.7764451051977987 * d.std(ddof=1) / np.sqrt(5)  # t(0.975, 4 df)
    assert lo == pytest.approx(3 - half) and hi == pytest.approx(3 + half)


def test_a_subset_missing_half_of_each_class_is_found_worse_than_random():
    x, y, keep = xor_blobs()
    r = evaluate_subset(x, y, keep, seeds=3, val_fraction=0.2, steps=60)
    assert r["diff_points_ci95"][1] < 0 and r["wins"] == 0
    assert r["acc_subset_mean"] < 0.8 < 0.95 < r["acc_random_mean"]
    assert r["subset_train_rows"] + (np.isin(keep, np.flatnonzero(
        validation_split(y, 0.2, 0)))).sum() == len(keep)  # subset rows in val: not trained on
    assert r == {**evaluate_subset(x, y, keep, seeds=3, val_fraction=0.2, steps=60),
                 "seconds": r["seconds"]}  # deterministic


def test_evaluate_command_prints_and_records_the_comparison(made, capsys):
    path, out = made
    rows = (out / "indices.npy").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", "--input", path, "--subset", out, *FAST]) == 0
    text = capsys.readouterr().out
    assert "subset - random:" in text and "95% CI [" in text and "paired t, 2 seeds" in text
    m = json.loads((out / "manifest.json").read_text())
    ev = m["evaluation"]
    assert ev["original"] == str(path.resolve()) and ev["seeds"] == 2 and ev["steps"] == 30
    assert ev["argv"][:2] == ["distcomp-data", "evaluate"] and ev["input_columns"] == ["x"]
    assert len(ev["acc_subset"]) == len(ev["acc_random"]) == 2
    assert ev["diff_points"] == pytest.approx(
        100 * (np.mean(ev["acc_subset"]) - np.mean(ev["acc_random"])))
    assert m["rows_kept"] == len(np.load(out / "indices.npy"))  # the rest is untouched
    assert (out / "indices.npy").read_bytes() == rows
    assert datasets.load_from_disk(str(out)).num_rows == m["rows_kept"]


@pytest.mark.parametrize("command", [
    ["quantize", "--ratio", "0.3", "--epochs", "2"],
    ["prune", "--ratio", "0.3", "--method", "random"],
    ["dedup", "--threshold", "0.999"],
])
def test_evaluate_flag_records_the_comparison_after_writing(tmp_path, command, capsys):
    x, y, _ = xor_blobs(40)
    np.savez(tmp_path / "in.npz", x=x, label=y)
    out = tmp_path / "out"
    assert main([*command, "--input", tmp_path / "in.npz", "--output", out, "--evaluate",
                 *FAST]) == 0
    assert "subset - random:" in capsys.readouterr().out
    ev = json.loads((out / "manifest.json").read_text())["evaluation"]
    assert ev["original"] == str((tmp_path / "in.npz").resolve()) and ev["seeds"] == 2


def refused(capsys, out: Path, argv: list) -> str:
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distcomp-data: error:") and "\n" not in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost
    return err


def test_evaluate_refuses_bad_input_in_one_line(made, tmp_path, capsys):
    path, out = made
    ev = ["evaluate", "--input", path, "--subset", out]
    assert "--seeds must be an integer >= 2" in refused(capsys, out, [*ev, "--seeds", 1])
    assert "--val-fraction" in refused(capsys, out, [*ev, "--val-fraction", 1.5])
    assert "not a distcomp-data output" in refused(capsys, out, [
        "evaluate", "--input", path, "--subset", tmp_path])
    x, y, _ = xor_blobs(61)
    np.savez(tmp_path / "other.npz", x=x, label=y)
    assert "was made from 240 rows" in refused(capsys, out, [
        "evaluate", "--input", tmp_path / "other.npz", "--subset", out])
    x, y, _ = xor_blobs(60, seed=1)  # as many rows, other values
    np.savez(tmp_path / "same_size.npz", x=x, label=y)
    other = ["evaluate", "--input", tmp_path / "same_size.npz", "--subset", out]
    assert "--no-fingerprint-check" in refused(capsys, out, other)
    assert main([*other, "--no-fingerprint-check", *FAST]) == 0  # the user's call
