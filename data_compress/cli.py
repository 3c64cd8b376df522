"""``distcomp-data``: shrink a training set offline, before a multi-node run.

    distcomp-data inspect  --input DS
    distcomp-data embed    --input DS --output OUT [--model pkg.mod:factory]
    distcomp-data quantize --input DS --output OUT --ratio 0.3 [--binning graphcut|kmeans]
    distcomp-data prune    --input DS --output OUT --ratio 0.3 --method kcenter [--evaluate]
    distcomp-data dedup    --input DS --output OUT [--threshold 0.95]
    distcomp-data evaluate --input DS --subset OUT [--seeds 5] [--val-fraction 0.2]

DS is a ``datasets`` directory, .parquet, .csv or .npz. The inputs are ``--column`` or
``--columns``, else found in the table; ``--features`` (default ``auto``) says what the
methods compare samples by (see :mod:`distcomp.data.sources`). OUT is a ``save_to_disk``
directory of the kept rows with ``indices.npy`` and ``manifest.json`` beside the data, written
atomically (see :mod:`distcomp.data.storage`). ``evaluate`` compares a subset with random ones
of the same size (see :mod:`distcomp.data.evaluate`). Bad input prints one line and exits
with status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from distcomp.data import progress, scores, sources
from distcomp.data.labels import counts, read_labels
from distcomp.data.quantize import BINNINGS, EXACT_LIMIT, check_bins, check_ratio, quantize
from distcomp.data.shard import Shards
from distcomp.data.storage import (
    MANIFEST,
    OLD_DATA,
    DataError,
    check_output,
    fingerprint,
    load,
    write_output,
)

PRUNE = ("random", "el2n", "grand", "forgetting", "moderate", "kcenter", "ccs")
DYNAMIC = ("el2n", "grand", "forgetting")


def version() -> str:
    """The installed distribution's version (``pip install`` wrote it)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("distcomp")
    except PackageNotFoundError:
        return "unknown (distcomp is not installed)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after every optional flag's help, except where the help
    already explains its default (flags whose default is computed); "(required)" after a
    required flag's; a switch reads "(default: off)": not given, whatever it stores."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required:
            return text if "required" in text else f"{text} (required)"
        if ("default" in text or not action.option_strings
                or action.default in (None, argparse.SUPPRESS)):
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: off)"  # the switch is off unless given
        return f"{text} (default: %(default)s)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distcomp-data",
                                description=__doc__.splitlines()[0].replace("``", ""),
                                formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"distcomp-data {version()}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)

    sp = command("inspect", "rows, columns, class counts (and the manifest of an output)")
    _input(sp)
    sp.add_argument("--label-column", default="label", help="column of class labels")
    sp = command("embed", "add an embedding column (a --model's, else the probe's layer)")
    _common(sp)
    sp.add_argument("--embedding-column", default="embedding", help="name of the new column")
    sp = command("quantize", "dataset quantization: per class, bins, the same fraction of "
                             "each")
    _common(sp)
    _ratio(sp)
    sp.add_argument("--bins", type=int, default=None,
                    help="bins per class (default: 10 GraphCut bins, or for k-means one bin "
                         "per 3 kept samples)")
    sp.add_argument("--binning", choices=BINNINGS, default="graphcut",
                    help="graphcut: the paper's DQ; kmeans: compact k-means bins (a variant)")
    sp.add_argument("--method", choices=("auto", "exact", "knn"), default="auto",
                    help="GraphCut: exact gains, k-NN graph, or (auto) exact up to "
                         f"{EXACT_LIMIT:,} rows per class")
    sp.add_argument("--k", type=int, default=32, help="neighbours per row for the k-NN variant")
    _evaluation(sp)
    sp = command("prune", "keep samples by a pruning score")
    _common(sp)
    _ratio(sp)
    sp.add_argument("--method", choices=PRUNE, required=True, help="pruning score or selection")
    sp.add_argument("--ccs-score", choices=DYNAMIC, default="el2n",
                    help="score that coverage-centric selection (ccs) stratifies")
    sp.add_argument("--global", dest="class_balanced", action="store_false",
                    help="one global budget instead of round(ratio * n_c) per class")
    _evaluation(sp)
    sp = command("dedup", "semantic deduplication (SemDeDup)")
    _common(sp)
    sp.add_argument("--threshold", type=float, default=0.95,
                    help="cosine similarity above which a row is a duplicate")
    sp.add_argument("--clusters", type=int, default=None,
                    help="k-means clusters (default: min(rows / 50, sqrt(rows)), at least 1)")
    _evaluation(sp)
    sp = command("evaluate", "compare a subset with random subsets of the same size (probe "
                             "MLP on a held-out split)")
    _input(sp)
    sp.add_argument("--subset", required=True,
                    help="an output directory of distcomp-data made from --input")
    sp.add_argument("--label-column", default=None,
                    help="column of class labels (default: the subset manifest's, else label)")
    _inputs(sp, "(default: the columns recorded in the subset's manifest, else as for "
                "quantize)")
    _evaluation(sp, standalone=True)
    sp.add_argument("--seed", type=int, default=0,
                    help="seed of the validation split and of the first probe run")
    sp.add_argument("--no-fingerprint-check", dest="fingerprint_check", action="store_false",
                    help="evaluate even if --input's SHA-256 differs from the one the subset "
                         "recorded (same rows, same order, other bytes: e.g. csv -> parquet)")
    _progress(sp)
    return p


def _input(sp) -> None:
    sp.add_argument("--input", required=True,
                    help="a datasets directory (save_to_disk), .parquet, .csv or .npz")


def _inputs(sp, default: str) -> None:
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--column", default=None, help=f"input column {default}")
    g.add_argument("--columns", default=None, metavar="A,B,...",
                   help=f"several input columns, side by side {default}")


def _common(sp) -> None:
    _input(sp)
    sp.add_argument("--output", required=True,
                    help="output directory, created with its parents")
    sp.add_argument("--force", action="store_true", help="replace an existing output")
    sp.add_argument("--label-column", default="label", help="column of class labels")
    _inputs(sp, "(default: the table's one numeric vector column, else every numeric column "
                "but the label)")
    sp.add_argument("--features", default="auto", metavar="auto|input|probe|COLUMN",
                    help="what the methods compare rows by: the standardised inputs, the "
                         "probe MLP's hidden layer, an embedding column, or auto: a --model's "
                         "embedding, else inputs for kcenter, --binning kmeans and dedup, "
                         "the probe for graphcut quantize and moderate")
    sp.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                    help="features from this torch module applied to the inputs (default: "
                         "none, see --features)")
    sp.add_argument("--epochs", type=int, default=10,
                    help="training epochs of the probe MLP (features and scores)")
    sp.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    _progress(sp)


def _ratio(sp) -> None:
    sp.add_argument("--ratio", type=float, required=True,
                    help="fraction of rows to keep, in (0, 1]")


def _evaluation(sp, standalone: bool = False) -> None:
    if not standalone:
        sp.add_argument("--evaluate", action="store_true",
                        help="after writing, compare the output with random subsets "
                             "(as the evaluate command) and record it in the manifest")
    sp.add_argument("--seeds", type=int, default=5, help="probe runs per side of the "
                    "comparison (at least 2)")
    sp.add_argument("--val-fraction", type=float, default=0.2,
                    help="fraction of each class held out for validation")
    sp.add_argument("--eval-steps", type=int, default=500,
                    help="optimiser steps of each probe run (batches of 256)")


def _progress(sp) -> None:
    sp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bars on stderr (default: on when stderr is a terminal)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser().parse_args(argv)
    args.provenance = {"version": version(), "argv": ["distcomp-data", *argv]}
    try:
        args.shards = Shards()  # every rank validates alike, so all fail alike
    except RuntimeError as err:
        print(f"distcomp-data: error: {err}", file=sys.stderr)
        return 2
    flag = getattr(args, "progress", False)
    args.progress = progress.wanted(flag) if args.shards.root else bool(flag)
    _quiet_datasets(args.progress)
    try:
        return run(args)
    except (DataError, ValueError) as err:
        print(f"distcomp-data: error: {err}", file=sys.stderr)
        return 2


def _quiet_datasets(bars: bool) -> None:
    """The library logs its own errors; this tool reports in one line. Its progress bars
    (saving) follow ours."""
    import datasets

    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    if bars:
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()


def run(args) -> int:
    shards = args.shards
    if args.command == "evaluate":
        from distcomp.data.evaluate import run_command

        return run_command(args) if shards.root else 0
    _check(args)
    ds = load(args.input)
    if len(ds) == 0:
        raise DataError(f"{args.input} has no rows")
    if args.command == "inspect":
        return inspect(ds, args) if shards.root else 0
    uses_features = args.command != "prune" or args.method in ("moderate", "kcenter")
    method = getattr(args, "binning", None) or getattr(args, "method", None)
    source = sources.resolve(args.features, args.command, method, args.model) \
        if uses_features else None
    dynamic = args.command == "prune" and args.method in (*DYNAMIC, "ccs")
    evaluate = getattr(args, "evaluate", False)
    needs_inputs = (dynamic or evaluate or source in ("input", "probe", "model")
                    or args.column is not None or args.columns is not None)
    args.input_columns = sources.input_columns(
        ds, args.column, args.columns, args.label_column) if needs_inputs else None
    if not shards.root and source != "model" and not dynamic:
        return 0  # nothing to share: rank 0 does it alone
    needs_labels = args.command in ("quantize", "prune") or source == "probe" or evaluate
    labels, names = read_labels(ds, args.label_column) if needs_labels else (None, None)
    start = time.perf_counter()
    selected = select(ds, args, source, labels)
    if selected is None:
        return 0  # a non-root rank delivered its share (embedding rows or probe scores)
    out, keep, params = selected
    feature_text = sources.describe(source, args) if source else (
        f"probe MLP scores on {args.input_columns}, {args.epochs} epochs" if dynamic else None)
    manifest = {
        "command": args.command, "method": getattr(args, "method", args.command),
        "parameters": params, "seed": args.seed, "features": feature_text,
        "features_requested": args.features, "input_columns": args.input_columns,
        "label_column": args.label_column if labels is not None else None,
        "input": str(Path(args.input).resolve()),
        "input_fingerprint": fingerprint(args.input, progress=args.progress),
        "rows_in": len(ds), "rows_kept": int(len(keep)),
        "counts_per_class": None if labels is None else counts(labels, keep, names),
        "mpi_ranks": shards.size, "seconds": round(time.perf_counter() - start, 3),
        **args.provenance,
    }
    write_output(args.output, out, keep, manifest, force=args.force)
    print(f"{args.command}: kept {len(keep)} of {len(ds)} rows -> {args.output}", flush=True)
    if evaluate:
        from distcomp.data.evaluate import evaluate_and_record

        x = sources.input_matrix(ds, args.input_columns)
        evaluate_and_record(args, x, labels, keep, args.output, manifest, args.input)
    return 0


def _check(args) -> None:
    """Every argument that can be checked without the data, before anything is read."""
    if hasattr(args, "ratio"):
        check_ratio(args.ratio)
    check_bins(getattr(args, "bins", None), "--bins")
    if getattr(args, "epochs", 1) < 1:
        raise DataError(f"--epochs must be a positive integer, got {args.epochs}")
    if getattr(args, "evaluate", False):
        from distcomp.data.evaluate import check_settings

        check_settings(args.seeds, args.val_fraction, args.eval_steps)
    if getattr(args, "output", None):
        check_output(args.output, args.force, source=args.input)


def select(ds, args, source: str | None, labels: np.ndarray | None
           ) -> tuple[object, np.ndarray, dict] | None:
    """(dataset to write, kept row indices, the manifest's parameters) for the command; None
    on an MPI rank other than 0 once it delivered its share."""
    if source is None:  # prune by a score or at random
        keep = prune(ds, args, labels, None)
        return None if keep is None else (ds, keep, _prune_params(args))
    if args.command == "embed" and args.embedding_column in ds.column_names:
        raise DataError(f"the input already has a column {args.embedding_column!r}; name the "
                        "new one with --embedding-column NAME")
    emb = sources.features(ds, args, source, labels)
    if emb is None:
        return None
    if args.command == "embed":
        return (ds.add_column(args.embedding_column, list(emb)), np.arange(len(ds)),
                {"embedding_column": args.embedding_column})
    if args.command == "quantize":
        keep = quantize(emb, labels, args.ratio, n_bins=args.bins, seed=args.seed,
                        method=args.method, k=args.k, binning=args.binning,
                        progress=args.progress)
        return ds, keep, {"ratio": args.ratio, "bins": args.bins, "binning": args.binning,
                          "method": args.method, "k": args.k}
    if args.command == "prune":
        return ds, prune(ds, args, labels, emb), _prune_params(args)
    keep = scores.semantic_dedup(emb, threshold=args.threshold, clusters=args.clusters,
                                 seed=args.seed, progress=args.progress)
    return ds, keep, {"threshold": args.threshold, "clusters": args.clusters}


def _prune_params(args) -> dict:
    params = {"ratio": args.ratio, "method": args.method, "class_balanced": args.class_balanced}
    if args.method == "ccs":
        params["ccs_score"] = args.ccs_score
    return params


def prune(ds, args, labels: np.ndarray, emb: np.ndarray | None) -> np.ndarray | None:
    m, ratio, cb, seed = args.method, args.ratio, args.class_balanced, args.seed
    if m == "random":
        return scores.random(labels, ratio, seed=seed, class_balanced=cb)
    if m == "kcenter":
        return scores.k_center(emb, labels, ratio, seed=seed, class_balanced=cb,
                               progress=args.progress)
    if m == "moderate":
        return scores.top(scores.moderate(emb, labels), labels, ratio, class_balanced=cb)
    # one probe run per MPI rank (seed + rank); rank 0 averages the scores over the runs
    dyn = sources.probe(ds, args, labels, seed=seed + args.shards.rank)
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
        labels, names = read_labels(ds, args.label_column)
        info["counts_per_class"] = {k: v["in"] for k, v in counts(
            labels, np.arange(0), names).items()}
    manifest = Path(args.input) / MANIFEST
    if manifest.exists():
        info["manifest"] = json.loads(manifest.read_text())
        if (Path(args.input) / OLD_DATA).is_dir():
            info["layout"] = (f"earlier distcomp-data layout: rows in {OLD_DATA}/ (this "
                              "version writes them in the output directory itself)")
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
