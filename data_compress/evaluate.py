"""Does this subset train a better model than a random one of the same size? A quick check.

``distcomp-data evaluate --input ORIGINAL --subset OUT`` (or ``--evaluate`` on ``quantize``,
``prune`` and ``dedup``):

1. Hold out a validation split of the original: per class, round(``val_fraction`` * n_c) rows
   (at most n_c - 1), drawn with ``seed``; the same split for every seed below.
2. The subset's rows that fall in the validation split are dropped from its training rows
   (the selection saw them, but no model trains on them). What is left is the subset's
   training part, with k_c rows in class c.
3. For each of ``seeds`` seeds s: draw a random subset with the same k_c rows per class from
   the training split (outside validation), train the probe MLP (:mod:`distcomp.data.dynamics`)
   on the subset's training part and on the random one with the same seed (same
   initialisation and batch order), and score both on the validation split. As a reference,
   the probe also trains on all the training split's rows.
4. Report the mean difference subset - random in accuracy points with its 95% interval:
   Student t with ``seeds - 1`` degrees of freedom over the per-seed paired differences.

Same rows per class, so the comparison is about *which* rows a method keeps, not how many of
each class (``--global`` pruning and dedup may change the class mix: the random baseline copies
it). Every probe run trains the same number of optimiser steps (``steps`` batches of 256
rows), so a small subset is not also an undertrained one. It is a check with the probe MLP
on the input columns, not with your model: a method that helps a CNN can look neutral here,
and the other way round. The selection itself saw the validation rows (not their use in
training), so for a fully clean figure compress a training split and evaluate on your own
held-out data. Cost: 3 * ``seeds`` probe runs of ``steps`` steps, one CPU thread each:
digits (1,797 rows, 64 inputs) with the defaults took 23 s on a busy 2-core machine.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from distcomp.data.progress import track
from distcomp.data.storage import (
    INDICES,
    MANIFEST,
    DataError,
    fingerprint,
    load,
    read_output,
    update_manifest,
)

BATCH = 256  # rows per probe training step (train_probe's default)


def check_settings(seeds: int, val_fraction: float, steps: int) -> None:
    """Refuse settings that cannot give an interval, naming the flag."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise DataError(f"--seeds must be an integer >= 2 (an interval needs two), got {seeds!r}")
    if not (isinstance(val_fraction, float | int) and 0 < val_fraction < 1):
        raise DataError(f"--val-fraction must be in (0, 1), got {val_fraction!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DataError(f"--eval-steps must be a positive integer, got {steps!r}")


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(n,) bool, True for held-out rows: per class round(fraction * n_c) of them, at most
    n_c - 1 (every class keeps a training row), drawn uniformly with ``seed``."""
    labels = np.asarray(labels)
    held = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng([seed, 0x5A11])
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = min(int(np.floor(fraction * len(members) + 0.5)), len(members) - 1)
        held[rng.choice(members, take, replace=False)] = True
    return held


def matched_random(labels: np.ndarray, pool: np.ndarray, like: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Sorted rows drawn uniformly from ``pool`` with as many rows per class as ``like``."""
    out = []
    for c, k in zip(*np.unique(labels[like], return_counts=True)):
        members = pool[labels[pool] == c]
        out.append(rng.choice(members, k, replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def probe_accuracy(x: np.ndarray, labels: np.ndarray, train: np.ndarray, val: np.ndarray,
                   *, classes: int, steps: int, seed: int) -> float:
    """Validation accuracy (fraction) of the probe trained on rows ``train`` for ``steps``
    optimiser steps; validation rows scaled with the training rows' statistics."""
    import torch

    from distcomp.data.dynamics import fit_probe, predict, standardise

    with one_thread():
        model = fit_probe(x[train], labels[train], steps=steps, classes=classes,
                          batch_size=BATCH, seed=seed)
        probs, _ = predict(model, torch.from_numpy(standardise(x[val], like=x[train])))
    return float((probs.argmax(1) == labels[val]).mean())


@contextmanager
def one_thread():
    """torch on one CPU thread for the duration (restored after). The probe's matrices are
    small (batch 256 x 128 units): more threads add synchronisation, not speed, and on a
    machine shared with other jobs they wait on each other: a 200-step probe run on digits
    took 26 s with 2 threads and 3.7 s with 1 on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def t_interval(diffs: np.ndarray) -> tuple[float, float]:
    """95% interval of the mean of ``diffs`` (Student t, n - 1 degrees of freedom)."""
    from scipy.stats import t

    d = np.asarray(diffs, dtype=np.float64)
    half = float(t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return float(d.mean() - half), float(d.mean() + half)


def evaluate_subset(x: np.ndarray, labels: np.ndarray, keep: np.ndarray, *, seeds: int = 5,
                    val_fraction: float = 0.2, steps: int = 500, seed: int = 0,
                    progress: bool = False) -> dict:
    """The comparison of the module docstring for subset rows ``keep`` of (x (n, ...),
    labels (n,) ints in [0, C)); a JSON-ready dict (accuracies as fractions, differences in
    points)."""
    check_settings(seeds, val_fraction, steps)
    start = time.perf_counter()
    labels = np.asarray(labels)
    keep = np.asarray(keep, dtype=np.int64)
    held = validation_split(labels, val_fraction, seed)
    val, pool = np.flatnonzero(held), np.flatnonzero(~held)
    train = keep[~held[keep]]
    if len(val) == 0:
        raise DataError(f"--val-fraction {val_fraction} holds out no rows of {len(labels)}")
    if len(train) == 0:
        raise DataError(f"all {len(keep)} subset rows fall in the validation split: nothing "
                        "left to train on")
    classes = int(labels.max()) + 1
    acc = {"subset": [], "random": [], "all": []}
    for s in track(range(seeds), "evaluate (seeds)", progress):
        rng = np.random.default_rng([seed, s, 0xBA5E])
        runs = {"subset": train, "random": matched_random(labels, pool, train, rng),
                "all": pool}
        for name, rows in runs.items():
            acc[name].append(probe_accuracy(x, labels, rows, val, classes=classes,
                                            steps=steps, seed=seed + s))
    diffs = 100 * (np.array(acc["subset"]) - np.array(acc["random"]))
    lo, hi = t_interval(diffs)
    return {
        "val_fraction": val_fraction, "val_rows": len(val), "split_seed": seed,
        "subset_rows": len(keep), "subset_train_rows": len(train),
        "all_train_rows": len(pool), "seeds": seeds, "probe_seeds": [seed + s for s in
                                                                      range(seeds)],
        "steps": steps, "probe": "ProbeMLP (128 hidden units), AdamW lr 3e-3, batch 256",
        "baseline": "random rows from the training split, same rows per class as the subset",
        "acc_subset": acc["subset"], "acc_random": acc["random"], "acc_all": acc["all"],
        "acc_subset_mean": float(np.mean(acc["subset"])),
        "acc_random_mean": float(np.mean(acc["random"])),
        "acc_all_mean": float(np.mean(acc["all"])),
        "diff_points": float(diffs.mean()), "diff_points_ci95": [lo, hi],
        "wins": int((diffs > 0).sum()), "ties": int((diffs == 0).sum()),
        "seconds": round(time.perf_counter() - start, 3),
    }


def summary(result: dict, name: str) -> str:
    """What ``evaluate`` prints: a few lines for a person (the numbers are in the manifest)."""
    r = result
    lo, hi = r["diff_points_ci95"]
    verdict = ("better than random" if lo > 0 else "worse than random" if hi < 0 else
               "not distinguishable from random at this many seeds")
    return "\n".join([
        f"evaluate: {name} ({r['subset_rows']} rows) against random subsets with the same rows "
        "per class",
        f"  validation: {r['val_rows']} rows ({r['val_fraction']:.0%} per class, seed "
        f"{r['split_seed']}); subset rows left to train on: {r['subset_train_rows']}",
        f"  probe MLP, {r['steps']} steps, {r['seeds']} seeds; validation accuracy, mean:",
        f"    subset {r['acc_subset_mean']:.1%}   random {r['acc_random_mean']:.1%}   "
        f"all {r['all_train_rows']} training rows {r['acc_all_mean']:.1%}",
        f"  subset - random: {r['diff_points']:+.1f} points, 95% CI [{lo:+.1f}, {hi:+.1f}] "
        f"(paired t, {r['seeds']} seeds), ahead in {r['wins']}"
        + (f", level in {r['ties']}" if r["ties"] else "") + f" of {r['seeds']}",
        f"  -> {verdict}",
    ])


def evaluate_and_record(args, x: np.ndarray, labels: np.ndarray, keep: np.ndarray,
                        subset: str | Path, manifest: dict, original: str | Path) -> dict:
    """Evaluate ``keep`` (``args``: seeds, val_fraction, eval_steps, seed, progress), print the
    summary, then record it as the subset manifest's ``evaluation`` (an atomic rewrite; a
    failure to write is reported after the summary was printed, so nothing is lost)."""
    result = evaluate_subset(x, labels, keep, seeds=args.seeds, val_fraction=args.val_fraction,
                             steps=args.eval_steps, seed=args.seed, progress=args.progress)
    result.update(original=str(Path(original).resolve()), input_columns=args.input_columns,
                  **args.provenance)
    print(summary(result, str(subset)), flush=True)
    try:
        update_manifest(subset, {**manifest, "evaluation": result})
    except OSError as err:
        raise DataError(f"cannot record the evaluation in {Path(subset) / MANIFEST}: "
                        f"{err.strerror or err}") from err
    return result


def run_command(args) -> int:
    """``distcomp-data evaluate``: check that --subset was made from --input (row count,
    indices in range, SHA-256), then :func:`evaluate_and_record`."""
    from distcomp.data import sources
    from distcomp.data.labels import read_labels

    indices, manifest = read_output(args.subset)
    check_settings(args.seeds, args.val_fraction, args.eval_steps)
    ds = load(args.input)
    n = len(ds)
    if manifest.get("rows_in") not in (None, n):
        raise DataError(f"{args.subset} was made from {manifest['rows_in']} rows, "
                        f"{args.input} has {n}")
    if len(indices) == 0 or indices.min() < 0 or indices.max() >= n or \
            len(np.unique(indices)) != len(indices):
        raise DataError(f"{args.subset}/{INDICES} must hold distinct row indices in [0, {n})")
    recorded = manifest.get("input_fingerprint")
    if args.fingerprint_check and recorded and \
            fingerprint(args.input, progress=args.progress) != recorded:
        raise DataError(f"{args.input} is not the input {args.subset} was made from (SHA-256 "
                        "differs); if it holds the same rows in the same order, pass "
                        "--no-fingerprint-check")
    label_column = args.label_column or manifest.get("label_column") or "label"
    labels, _ = read_labels(ds, label_column)
    columns = args.columns
    if args.column is None and columns is None:
        recorded_cols = manifest.get("input_columns") or []
        if recorded_cols and set(recorded_cols) <= set(ds.column_names):
            columns = recorded_cols
    args.input_columns = sources.input_columns(ds, args.column, columns, label_column)
    x = sources.input_matrix(ds, args.input_columns)
    evaluate_and_record(args, x, labels, indices, args.subset, manifest, args.input)
    return 0
