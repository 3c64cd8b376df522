"""``distcomp-data``: shrink a training set offline, before a multi-node run.

    distcomp-data inspect  --input DS
    distcomp-data embed    --input DS --output OUT [--column x] [--model pkg.mod:factory]
    distcomp-data quantize --input DS --output OUT --ratio 0.3 [--features emb] [--bins 10]
                           [--binning graphcut|kmeans]
    distcomp-data prune    --input DS --output OUT --ratio 0.3 --method el2n
    distcomp-data dedup    --input DS --output OUT [--threshold 0.95]

DS is a ``datasets`` directory, .parquet, .csv or .npz. Features come from ``--features`` (an
embedding column), else from ``--model`` (a factory returning a torch module applied to
``--column``), else from a small MLP briefly trained on ``--column`` and the labels. Outputs
are written atomically (see :mod:`data_compress.storage`). Bad input prints one line and exits
with status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from data_compress import scores
from data_compress.quantize import BINNINGS, EXACT_LIMIT, check_bins, check_ratio, quantize
from data_compress.shard import Shards
from data_compress.storage import (
    DataError,
    check_output,
    column,
    fingerprint,
    load,
    write_output,
)

PRUNE = ("random", "el2n", "grand", "forgetting", "moderate", "kcenter", "ccs")
DYNAMIC = ("el2n", "grand", "forgetting")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distcomp-data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, output: bool = True):
        sp.add_argument("--input", required=True)
        sp.add_argument("--label-column", default="label")
        sp.add_argument("--column", default="x", help="raw input column for the default model")
        sp.add_argument("--features", default=None, help="existing embedding column")
        sp.add_argument("--model", default=None, help="module:factory returning a torch module")
        sp.add_argument("--epochs", type=int, default=10, help="epochs of the default model")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--progress", action="store_true", help="progress bars on stderr")
        if output:
            sp.add_argument("--output", required=True)
            sp.add_argument("--force", action="store_true", help="replace an existing output")

    common(sub.add_parser("inspect", help="rows, columns, class counts"), output=False)
    sp = sub.add_parser("embed", help="add an embedding column")
    common(sp)
    sp.add_argument("--embedding-column", default="embedding")
    sp = sub.add_parser("quantize", help="dataset quantization: GraphCut bins per class")
    common(sp)
    sp.add_argument("--ratio", type=float, required=True)
    sp.add_argument("--bins", type=int, default=None,
                    help="bins per class (default: 10 GraphCut bins, or for k-means one bin "
                         "per 3 kept samples)")
    sp.add_argument("--binning", choices=BINNINGS, default="graphcut",
                    help="graphcut: the paper's DQ; kmeans: compact k-means bins (a variant)")
    sp.add_argument("--method", choices=("auto", "exact", "knn"), default="auto",
                    help="GraphCut: exact gains, k-NN graph, or (auto) exact up to "
                         f"{EXACT_LIMIT:,} per class")
    sp.add_argument("--k", type=int, default=32, help="neighbours for the k-NN variant")
    sp = sub.add_parser("prune", help="keep samples by a pruning score")
    common(sp)
    sp.add_argument("--ratio", type=float, required=True)
    sp.add_argument("--method", choices=PRUNE, required=True)
    sp.add_argument("--ccs-score", choices=DYNAMIC, default="el2n",
                    help="score that coverage-centric selection stratifies")
    sp.add_argument("--global", dest="class_balanced", action="store_false",
                    help="one global budget instead of round(ratio * n_c) per class")
    sp = sub.add_parser("dedup", help="semantic deduplication (SemDeDup)")
    common(sp)
    sp.add_argument("--threshold", type=float, default=0.95, help="cosine above which to drop")
    sp.add_argument("--clusters", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet_datasets(args.progress)
    try:
        return run(args)
    except (DataError, ValueError) as err:
        print(f"distcomp-data: error: {err}", file=sys.stderr)
        return 2


def _quiet_datasets(progress: bool) -> None:
    """The library logs its own errors and progress bars; this tool reports in one line."""
    import datasets

    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    if not progress:
        datasets.disable_progress_bars()


def run(args) -> int:
    args.shards = shards = Shards()  # every rank validates alike, so all fail alike
    if hasattr(args, "ratio"):
        check_ratio(args.ratio)
    check_bins(getattr(args, "bins", None), "--bins")
    if getattr(args, "output", None):
        check_output(args.output, args.force)
    ds = load(args.input)
    if len(ds) == 0:
        raise DataError(f"{args.input} has no rows")
    if args.command == "inspect":
        return inspect(ds, args) if shards.root else 0
    sharded = (args.command == "embed" and args.model) or (
        args.command == "prune" and args.method in (*DYNAMIC, "ccs"))
    if not shards.root and not sharded:
        return 0  # nothing to share: rank 0 does it alone
    labels, names = _labels(ds, args.label_column) if args.command != "dedup" or \
        args.features is None else (None, None)
    start = time.perf_counter()
    params: dict = {}
    if args.command == "embed":
        emb = features(ds, args, labels)
        if emb is None:
            return 0  # a non-root rank delivered its shard
        out = ds.add_column(args.embedding_column, list(emb))
        keep = np.arange(len(ds))
        params = {"embedding_column": args.embedding_column}
    elif args.command == "quantize":
        keep = quantize(features(ds, args, labels), labels, args.ratio, n_bins=args.bins,
                        seed=args.seed, method=args.method, k=args.k, binning=args.binning)
        params = {"ratio": args.ratio, "bins": args.bins, "binning": args.binning,
                  "method": args.method, "k": args.k}
    elif args.command == "prune":
        keep = prune(ds, args, labels)
        if keep is None:
            return 0
        params = {"ratio": args.ratio, "method": args.method,
                  "class_balanced": args.class_balanced}
        if args.method == "ccs":
            params["ccs_score"] = args.ccs_score
    else:
        keep = scores.semantic_dedup(features(ds, args, labels), threshold=args.threshold,
                                     clusters=args.clusters, seed=args.seed)
        params = {"threshold": args.threshold, "clusters": args.clusters}
    if args.command != "embed":
        out = ds
    manifest = {
        "command": args.command, "method": getattr(args, "method", args.command),
        "parameters": params, "seed": args.seed, "features": _feature_source(args),
        "input": str(args.input), "input_fingerprint": fingerprint(args.input),
        "rows_in": len(ds), "rows_kept": int(len(keep)),
        "counts_per_class": None if labels is None else _counts(labels, keep, names),
        "mpi_ranks": shards.size,
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_output(args.output, out, keep, manifest, force=args.force)
    print(f"{args.command}: kept {len(keep)} of {len(ds)} rows -> {args.output}")
    return 0


def _labels(ds, name: str) -> tuple[np.ndarray, list[str] | None]:
    """One integer class per row, and the class names of string labels ("cat", "dog": each
    becomes its index in :func:`_class_names`; None for integer labels)."""
    names = _class_names(ds, name)
    if names is not None:
        return np.searchsorted(names, column(ds, name, numeric=False)), names
    labels = column(ds, name)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"label column {name!r} must hold one integer or string per row")
    if labels.min() < 0:
        raise DataError(f"label column {name!r} holds negative labels")
    declared = getattr(ds.features[name], "names", None)  # a ClassLabel declares its classes
    if declared:
        empty = sorted(set(range(len(declared))) - set(np.unique(labels).tolist()))
        if empty:
            raise DataError(f"classes {[declared[c] for c in empty]} of {name!r} have no rows")
    return labels, None


def _class_names(ds, name: str) -> list[str] | None:
    """The sorted distinct values of a string label column (a class is its index here; the
    manifest counts classes under these names); None for integer labels."""
    if name not in ds.column_names:
        raise DataError(f"no column {name!r}; columns are {ds.column_names}")
    if getattr(ds.features[name], "dtype", None) not in ("string", "large_string"):
        return None
    values = column(ds, name, numeric=False)
    if any(v is None or v == "" for v in values):
        raise DataError(f"label column {name!r} has empty labels")
    return sorted(set(values.tolist()))


def _counts(labels: np.ndarray, keep: np.ndarray, names: list[str] | None = None) -> dict:
    """Rows in and kept per class, keyed by the class index (or the label for string
    labels)."""
    before, after = Counter(labels.tolist()), Counter(labels[keep].tolist())
    key = (lambda c: names[c]) if names is not None else str
    return {key(c): {"in": before[c], "kept": after.get(c, 0)} for c in sorted(before)}


def _feature_source(args) -> str:
    return (f"column {args.features}" if args.features else
            f"model {args.model} on {args.column}" if args.model else
            f"default MLP on {args.column}, {args.epochs} epochs")


def features(ds, args, labels: np.ndarray | None) -> np.ndarray:
    if args.features:
        emb = column(ds, args.features)
        if emb.ndim != 2:
            raise DataError(f"feature column {args.features!r} must hold one vector per row")
        return emb.astype(np.float32)
    x = column(ds, args.column)
    if args.model:
        from data_compress.features import embed_with_model

        rows = args.shards.rows(len(x))
        mine = embed_with_model(_factory(args.model)(), x[rows], progress=args.progress)
        return args.shards.gather(mine)
    return _dynamics(x, labels, args).hidden


def _dynamics(x: np.ndarray, labels: np.ndarray | None, args, seed: int | None = None):
    from data_compress.dynamics import train_probe

    if labels is None:
        raise DataError("the default model trains on labels: pass --label-column or --features")
    return train_probe(x, labels, epochs=args.epochs, score_epoch=max(1, args.epochs // 5),
                       seed=args.seed if seed is None else seed, progress=args.progress)


def _factory(spec: str):
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise DataError(f"--model {spec!r}: {err}") from err


def prune(ds, args, labels: np.ndarray) -> np.ndarray | None:
    m, ratio, cb, seed = args.method, args.ratio, args.class_balanced, args.seed
    if m == "random":
        return scores.random(labels, ratio, seed=seed, class_balanced=cb)
    if m in ("moderate", "kcenter"):
        emb = features(ds, args, labels)
        if m == "kcenter":
            return scores.k_center(emb, labels, ratio, seed=seed, class_balanced=cb)
        return scores.top(scores.moderate(emb, labels), labels, ratio, class_balanced=cb)
    # one probe run per MPI rank (seed + rank); rank 0 averages the scores over the runs
    dyn = _dynamics(column(ds, args.column), labels, args, seed=seed + args.shards.rank)
    name = args.ccs_score if m == "ccs" else m
    s = {"el2n": lambda: scores.el2n(dyn.probs, labels),
         "grand": lambda: scores.grand(dyn.final_probs, labels, dyn.hidden),
         "forgetting": lambda: scores.forgetting(dyn.correct)}[name]()
    s = args.shards.mean(s)
    if s is None:
        return None
    if m == "ccs":
        return scores.coverage(s, labels, ratio, seed=seed, class_balanced=cb)
    return scores.top(s, labels, ratio, class_balanced=cb)


def inspect(ds, args) -> int:
    info = {"rows": len(ds), "columns": {k: str(v) for k, v in ds.features.items()}}
    if args.label_column in ds.column_names:
        labels, names = _labels(ds, args.label_column)
        info["counts_per_class"] = {k: v["in"] for k, v in _counts(
            labels, np.arange(0), names).items()}
    manifest = Path(args.input) / "manifest.json"
    if manifest.exists():
        info["manifest"] = json.loads(manifest.read_text())
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
