"""Reading datasets and writing compressed ones atomically.

Inputs: a Hugging Face ``datasets`` directory (``save_to_disk``), a parquet file, a csv file or
an npz archive (equal-length arrays become columns). Outputs are directories holding the kept
rows as a ``save_to_disk`` dataset (``data/``), ``indices.npy`` (kept rows, original order) and
``manifest.json``; they are built in a temporary sibling directory and renamed into place, so a
failure at any point leaves no partial output, and an existing output is replaced only with
``force`` (the old one is removed only after the new one is in place).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


class DataError(Exception):
    """Bad input or arguments: the CLI prints the message on one line and exits with 2."""


def load(path: str | Path):
    """A ``datasets.Dataset`` from any supported input (raises DataError on anything else)."""
    import datasets

    p = Path(path)
    if not p.exists():
        raise DataError(f"input {p} does not exist")
    try:
        if p.is_dir():
            if (p / "manifest.json").exists() and (p / "data").is_dir():
                p = p / "data"  # an output of this tool
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                raise DataError(f"{p} holds splits {sorted(ds)}: pass one split's directory")
            return ds
        suffix = p.suffix.lower()
        if suffix == ".parquet":
            return datasets.Dataset.from_parquet(str(p), keep_in_memory=True)
        if suffix == ".csv":
            return datasets.Dataset.from_csv(str(p), keep_in_memory=True)
        if suffix == ".npz":
            return _from_npz(p)
    except DataError:
        raise
    except Exception as err:  # corrupt or unreadable files arrive as many exception types
        raise DataError(f"cannot read {p}: {type(err).__name__}: {_first_line(err)}") from err
    raise DataError(f"unsupported input {p}: expected a datasets directory, .parquet, .csv "
                    "or .npz")


def _from_npz(p: Path):
    import datasets

    with np.load(p, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    lengths = {k: len(v) for k, v in arrays.items() if v.ndim >= 1}
    if not lengths or len(set(lengths.values())) != 1:
        raise DataError(f"{p}: npz arrays must share their first dimension, got {lengths}")
    return datasets.Dataset.from_dict({k: v for k, v in arrays.items() if k in lengths})


def column(ds, name: str, *, numeric: bool = True) -> np.ndarray:
    """A column as numpy ((n,) or (n, d)); DataError if missing or ragged."""
    if name not in ds.column_names:
        raise DataError(f"no column {name!r}; columns are {ds.column_names}")
    values = ds.with_format("numpy")[name]
    values = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if values.dtype == object:
        try:
            values = np.stack([np.asarray(v) for v in values])
        except ValueError as err:
            raise DataError(f"column {name!r} has rows of different lengths") from err
    if numeric and not np.issubdtype(values.dtype, np.number):
        raise DataError(f"column {name!r} is {values.dtype}, not numeric")
    if numeric and values.dtype.kind == "f" and not np.isfinite(values).all():
        raise DataError(f"column {name!r} holds NaN or infinite values")
    return values


def fingerprint(path: str | Path) -> str:
    """SHA-256 over the input's files (relative names and bytes), to tie a manifest to it."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def check_output(out: str | Path, force: bool) -> Path:
    """Refuse an existing output without ``force`` before any work is done."""
    out = Path(out)
    if out.exists() and not force:
        raise DataError(f"output {out} exists; pass --force to replace it")
    if not out.parent.exists():
        raise DataError(f"output directory {out.parent} does not exist")
    return out


def write_output(out: str | Path, ds, indices: np.ndarray, manifest: dict,
                 force: bool = False) -> Path:
    """Kept rows, ``indices.npy`` and ``manifest.json`` into ``out``, all or nothing."""
    out = check_output(out, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        indices = np.asarray(indices, dtype=np.int64)
        ds.select(indices).save_to_disk(str(tmp / "data"))
        np.save(tmp / "indices.npy", indices)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""
