"""Class labels of a table as integers, and the per-class counts a manifest records.

Every selection is per class, so labels are read once, checked (one integer or string per
row, no negative or empty labels, no declared class without rows) and turned into indices
0..C-1 where they are strings.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from distcomp.data.storage import DataError, column


def read_labels(ds, name: str) -> tuple[np.ndarray, list[str] | None]:
    """One integer class per row, and the class names of string labels ("cat", "dog": each
    becomes its index in :func:`class_names`; None for integer labels)."""
    names = class_names(ds, name)
    if names is not None:
        return np.searchsorted(names, column(ds, name, numeric=False)), names
    values = column(ds, name)
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise DataError(f"label column {name!r} must hold one integer or string per row")
    if values.min() < 0:
        raise DataError(f"label column {name!r} holds negative labels")
    declared = getattr(ds.features[name], "names", None)  # a ClassLabel declares its classes
    if declared:
        empty = sorted(set(range(len(declared))) - set(np.unique(values).tolist()))
        if empty:
            raise DataError(f"classes {[declared[c] for c in empty]} of {name!r} have no rows")
    return values, None


def class_names(ds, name: str) -> list[str] | None:
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


def counts(labels: np.ndarray, keep: np.ndarray, names: list[str] | None = None) -> dict:
    """Rows in and kept per class, keyed by the class index (or the label for string
    labels)."""
    before, after = Counter(labels.tolist()), Counter(labels[keep].tolist())
    key = (lambda c: names[c]) if names is not None else str
    return {key(c): {"in": before[c], "kept": after.get(c, 0)} for c in sorted(before)}
