"""Reading datasets and writing compressed ones atomically.

Inputs: a Hugging Face ``datasets`` directory (``save_to_disk``), a parquet file, a csv file or
an npz archive (equal-length arrays become columns).

Output layout: the output directory *is* a ``save_to_disk`` dataset of the kept rows, so
``datasets.load_from_disk(out)`` reads it directly; beside the dataset's own files it holds
``indices.npy`` (int64, the kept rows' indices in the input, ascending) and ``manifest.json``
(what made it). ``load_from_disk`` reads only ``state.json``, ``dataset_info.json`` and the
arrow files it names, so the two extra files do not disturb it (checked with datasets 5.2).
Outputs of earlier versions kept the rows in ``out/data/``; :func:`load` and
:func:`read_output` still read those.

Writing: the output is built in a temporary sibling directory and renamed into place, so a
failure at any point leaves no partial output, and an existing output is replaced only with
``force`` (the old one is removed only after the new one is in place). Missing parent
directories are created at that moment (and removed again if the write fails); the output
gets the modes a plain ``mkdir``/``open`` would give under the current umask (0755 / 0644
under the usual 022), not the 0700 of a private temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from distcomp.data.progress import bar

MANIFEST = "manifest.json"
INDICES = "indices.npy"
OLD_DATA = "data"  # where outputs of earlier versions kept the rows


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
            if (p / MANIFEST).exists() and (p / OLD_DATA).is_dir():
                p = p / OLD_DATA  # an output of an earlier version of this tool
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


def fingerprint(path: str | Path, progress: bool = False) -> str:
    """SHA-256 over the input's files (relative names and bytes), to tie a manifest to it.

    The manifest of an output used as input is left out (it is rewritten when the output is
    evaluated; the rows and indices are what later outputs depend on). ``progress``: a bar in
    bytes read (hashing runs at roughly disk speed, ~1 GB/s from page cache).
    """
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    if p.is_dir() and (p / MANIFEST).is_file() and (p / INDICES).is_file():
        files = [f for f in files if f != p / MANIFEST]
    h = hashlib.sha256()
    with bar(sum(f.stat().st_size for f in files), "hash input", progress, unit="B",
             scale=True) as b:
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
                    b.update(len(block))
    return h.hexdigest()


def check_output(out: str | Path, force: bool, source: str | Path | None = None) -> Path:
    """Refuse, before any work is done, an output that exists (without ``force``), that would
    replace the input ``source`` (even with ``force``: that would lose the input), or whose
    missing parents cannot be created (an ancestor is a file, or not writable)."""
    out = Path(out)
    if source is not None:
        src, dst = Path(source).resolve(), out.resolve()
        if dst == src or dst in src.parents:
            raise DataError(f"output {out} would replace the input {source}; choose another "
                            "--output")
    if out.exists() and not force:
        raise DataError(f"output {out} exists; pass --force to replace it")
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DataError(f"cannot create output {out}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DataError(f"cannot create output {out}: {ancestor} is not writable")
    return out


def write_output(out: str | Path, ds, indices: np.ndarray, manifest: dict,
                 force: bool = False) -> Path:
    """Kept rows (``ds.select(indices)``, saved as the directory itself), ``indices.npy`` and
    ``manifest.json`` into ``out``, all or nothing. Saving shows datasets' own progress bar
    when datasets' bars are enabled (the CLI enables them exactly when it shows its own)."""
    out = check_output(out, force)
    created = _make_parents(out.absolute().parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            indices = np.asarray(indices, dtype=np.int64)
            ds.select(indices).save_to_disk(str(tmp))
            np.save(tmp / INDICES, indices)
            (tmp / MANIFEST).write_text(_dumps(manifest))
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide it from the team
            old = None
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.rename(out, old)
            os.rename(tmp, out)
            if old is not None:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except BaseException:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return out


def _make_parents(parent: Path) -> list[Path]:
    """Create ``parent`` and its missing ancestors (umask modes); return the ones this call
    created, outermost first, so a failed write can remove them again."""
    missing = []
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
            created.append(d)
        except FileExistsError:  # made meanwhile by someone else: not ours to remove
            pass
    return created


def read_output(path: str | Path) -> tuple[np.ndarray, dict]:
    """(indices, manifest) of a ``distcomp-data`` output directory (this layout or the old
    one with rows in ``data/``); DataError if it is not one."""
    p = Path(path)
    if not (p / MANIFEST).is_file() or not (p / INDICES).is_file():
        raise DataError(f"{p} is not a distcomp-data output (no {MANIFEST} and {INDICES})")
    try:
        manifest = json.loads((p / MANIFEST).read_text())
        indices = np.load(p / INDICES, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {p}: {type(err).__name__}: {_first_line(err)}") from err
    if indices.ndim != 1 or indices.dtype.kind not in "iu" or not isinstance(manifest, dict):
        raise DataError(f"{p / INDICES} must hold one integer row index per kept row")
    return indices.astype(np.int64), manifest


def update_manifest(path: str | Path, manifest: dict) -> None:
    """Replace ``path/manifest.json`` atomically (a temporary file in the same directory,
    flushed to disk, then renamed over it): a reader sees the old manifest or the new one,
    never half of one. The file keeps its mode."""
    target = Path(path) / MANIFEST
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(_dumps(manifest))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _dumps(manifest: dict) -> str:
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (os.umask can
    only be read by setting it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""
