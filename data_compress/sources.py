"""Where the numbers come from: the input columns, and what methods compare samples by.

**Input columns** (what the probe trains on and what ``--features input`` compares): the
columns ``--columns a,b,c`` (stacked side by side, each flattened), else ``--column NAME``,
else found in the table: its one numeric vector column (several: ``x`` if it is one of them,
else an error asking to choose), or, with no vector column, every numeric scalar column except
the label (a CSV or parquet of ``f0..f29,label`` gives 30 inputs).

**Feature sources** (``--features``), what DQ, moderate, k-center and SemDeDup compare
samples by:

- ``input``: the input columns, standardised per column (mean 0, std 1);
- ``probe``: the hidden layer (128 units) of the probe MLP trained briefly on the inputs and
  labels (:mod:`distcomp.data.dynamics`);
- a column name (or ``column:NAME`` for a column named like a mode): an existing embedding,
  used as stored;
- ``auto`` (default): ``--model``'s embedding when a model is given, else per method the
  source that did better on this project's validation split (``benchmarks/data/quality.py
  --split val``, README "How the feature source was chosen"): k-center and DQ over k-means
  bins on the inputs (k-center on the probe's layer lost to random at 10% on mnist1d, -1.6
  points; on the inputs it won, +9.1), DQ (GraphCut) and moderate on the probe's layer.
  SemDeDup's accuracy was not measured; it gets the inputs because the probe's layer pulls
  each class into a tight cluster where cosines above 0.95 are common between rows that are
  not duplicates at all: on digits at ``--threshold 0.95`` dedup on the probe's layer kept 67
  of 1,797 rows, on the inputs 1,734. ``embed`` gets the probe's layer (an embedding is what
  it is for).

The training-dynamics scores (EL2N, GraNd, forgetting, CCS) always come from the probe.
"""

from __future__ import annotations

import importlib

import numpy as np

from distcomp.data.storage import DataError, column

MODES = ("auto", "input", "probe")
# (command, method or binning) -> source under --features auto; see the module docstring
AUTO_FEATURES = {
    ("quantize", "graphcut"): "probe",
    ("quantize", "kmeans"): "input",
    ("prune", "moderate"): "probe",
    ("prune", "kcenter"): "input",
    ("dedup", None): "input",
    ("embed", None): "probe",
}
_NUMERIC = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
            "float16", "float32", "float64")


def numeric_kind(feature) -> str | None:
    """"scalar" for a numeric ``Value``, "vector" for a list/sequence/array of numbers (any
    nesting), None for anything else (strings, class labels, images, structs)."""
    dtype = getattr(feature, "dtype", None)
    if type(feature).__name__ == "Value":
        return "scalar" if dtype in _NUMERIC else None
    if type(feature).__name__.startswith("Array"):  # Array2D..Array5D
        return "vector" if dtype in _NUMERIC else None
    inner = getattr(feature, "feature", None)  # List, LargeList, Sequence
    while inner is not None and type(inner).__name__ != "Value":
        if isinstance(inner, (dict, list)):
            return None
        inner = getattr(inner, "feature", None)
    return "vector" if inner is not None and inner.dtype in _NUMERIC else None


def input_columns(ds, column_name: str | None = None, columns: str | list[str] | None = None,
                  label: str = "label") -> list[str]:
    """The input columns' names (see the module docstring for the order of choices);
    ``columns``: comma-separated names, or a list of them."""
    if columns is not None:
        if isinstance(columns, str):
            columns = columns.split(",")
        names = [c.strip() for c in columns if c.strip()]
        if not names:
            raise DataError("--columns is empty: name one or more columns, comma-separated")
        twice = sorted({c for c in names if names.count(c) > 1})
        if twice:
            raise DataError(f"--columns names {twice} more than once")
        missing = [c for c in names if c not in ds.column_names]
        if missing:
            raise DataError(f"no column {missing[0]!r}; columns are {ds.column_names}")
        if label in names:
            raise DataError(f"--columns includes the label column {label!r}")
        return names
    if column_name is not None:
        if column_name not in ds.column_names:
            raise DataError(f"no column {column_name!r}; columns are {ds.column_names}")
        return [column_name]
    kinds = {k: numeric_kind(f) for k, f in ds.features.items()
             if k != label and not k.startswith("__")}  # __index_level_0__: pandas' index
    vectors = [k for k, v in kinds.items() if v == "vector"]
    if len(vectors) == 1:
        return vectors
    if len(vectors) > 1:
        if "x" in vectors:
            return ["x"]
        raise DataError(f"several vector columns {vectors}: choose the inputs with --column "
                        "or --columns")
    scalars = [k for k, v in kinds.items() if v == "scalar"]
    if not scalars:
        raise DataError(f"no numeric input columns besides the label {label!r}; columns are "
                        f"{ds.column_names}")
    return scalars


def input_matrix(ds, names: list[str]) -> np.ndarray:
    """The input columns as one (n, d) array: each column flattened per row, side by side
    (a vector column of width w adds w columns)."""
    parts = [column(ds, c) for c in names]
    if len(parts) == 1 and parts[0].ndim >= 2:
        return parts[0]  # one vector column: the probe flattens it itself
    return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)


def resolve(requested: str, command: str, method: str | None, model: str | None) -> str:
    """The source ``--features requested`` means for this command: "input", "probe",
    "model" or "column:NAME"."""
    if requested == "auto":
        if model:
            return "model"
        return AUTO_FEATURES.get((command, method), "probe")
    if model:
        raise DataError(f"--model gives the features; drop --features {requested} (or "
                        "--model)")
    if requested in ("input", "probe"):
        return requested
    name = requested.removeprefix("column:")
    if not name:
        raise DataError("--features column: needs a column name")
    return f"column:{name}"


def describe(source: str, args) -> str:
    """One line for the manifest: what the features were."""
    cols = getattr(args, "input_columns", None)
    if source == "input":
        return f"input columns {cols}, standardised"
    if source == "probe":
        return f"hidden layer of the probe MLP on {cols}, {args.epochs} epochs"
    if source == "model":
        return f"model {args.model} on {cols}"
    return f"column {source.removeprefix('column:')!r}"


def features(ds, args, source: str, labels: np.ndarray | None) -> np.ndarray | None:
    """(n, d) float32 features from ``source`` (see :func:`resolve`). A model's embedding is
    computed in shards over MPI ranks: only rank 0 gets the result, the others None."""
    if source.startswith("column:"):
        name = source.removeprefix("column:")
        emb = column(ds, name)
        if emb.ndim != 2:
            raise DataError(f"feature column {name!r} must hold one vector per row")
        return emb.astype(np.float32)
    x = input_matrix(ds, args.input_columns)
    if source == "input":
        from distcomp.data.dynamics import standardise

        return standardise(x)
    if source == "model":
        from distcomp.data.features import embed_with_model

        rows = args.shards.rows(len(x))
        mine = embed_with_model(_factory(args.model)(), x[rows], progress=args.progress)
        return args.shards.gather(mine)
    return probe(ds, args, labels).hidden


def probe(ds, args, labels: np.ndarray | None, seed: int | None = None):
    """:class:`~distcomp.data.dynamics.Dynamics` of the probe MLP on the input columns,
    ``args.epochs`` epochs (EL2N's early epoch: a fifth of them)."""
    from distcomp.data.dynamics import train_probe

    if labels is None:
        raise DataError("the probe trains on labels: pass --label-column, or --features "
                        "input or an embedding column")
    x = input_matrix(ds, args.input_columns)
    return train_probe(x, labels, epochs=args.epochs, score_epoch=max(1, args.epochs // 5),
                       seed=args.seed if seed is None else seed, progress=args.progress)


def _factory(spec: str):
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise DataError(f"--model {spec!r}: {err}") from err
