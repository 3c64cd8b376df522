"""Bad-input cases of the ``distcomp-data`` CLI, run in-process through its ``main`` (part of
the catalogue in ``benchmarks.reliability.badinput_cases``)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable

import numpy as np

from benchmarks.reliability.badinput_types import Case, Ctx, ExitStatus


def _cli(*argv) -> Callable[[Ctx], None]:
    """Run ``distcomp-data argv`` in this process (``{in}``/``{out}`` name paths under the
    case's directory); a non-zero exit raises :class:`ExitStatus`."""
    def act(ctx: Ctx) -> None:
        from distcomp.data.cli import main

        args = [str(a).format(**{"in": ctx.work / "in", "out": ctx.work / "out"})
                for a in argv]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(args)
        if code:
            raise ExitStatus(code, err.getvalue())
    return act


def _table(n: int = 90, labels=None, x=None):
    import datasets

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32) if x is None else x
    labels = np.arange(n) % 3 if labels is None else labels
    return datasets.Dataset.from_dict({"x": list(x), "label": list(labels)})


def _hf(ctx: Ctx, **kw) -> None:
    import datasets

    datasets.disable_progress_bars()
    _table(**kw).save_to_disk(str(ctx.work / "in"))


def _truncated_arrow(ctx: Ctx) -> None:
    _hf(ctx)
    arrow = next((ctx.work / "in").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:200])


def _nan_features(ctx: Ctx) -> None:
    x = np.random.default_rng(0).normal(size=(90, 6)).astype(np.float32)
    x[7, 2] = np.nan
    np.savez(ctx.work / "in.npz", x=x, label=np.arange(90) % 3)


def _csv(text: str) -> Callable[[Ctx], None]:
    return lambda ctx: (ctx.work / "in.csv").write_text(text)


def _empty_class(ctx: Ctx) -> None:
    import datasets

    datasets.disable_progress_bars()
    feats = datasets.Features({"x": datasets.Sequence(datasets.Value("float32")),
                               "label": datasets.ClassLabel(names=["a", "b", "c"])})
    datasets.Dataset.from_dict({"x": [[0.0, 1.0]] * 6, "label": [0, 1] * 3},
                               features=feats).save_to_disk(str(ctx.work / "in"))


def _existing_output(ctx: Ctx) -> None:
    _hf(ctx)
    (ctx.work / "out").mkdir()
    (ctx.work / "out" / "indices.npy").write_bytes(b"an earlier result")


def _not_a_dataset(ctx: Ctx) -> None:
    (ctx.work / "in").mkdir()
    (ctx.work / "in" / "notes.txt").write_text("no dataset here")


def _string_labels(ctx: Ctx) -> None:
    rows = [f"{i % 7 / 7:.3f},{(i * 3) % 5 / 5:.3f},{['cat', 'dog', 'eel'][i % 3]}"
            for i in range(90)]
    (ctx.work / "in.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")


def _kept_per_class(ctx: Ctx) -> None:
    _cli("prune", "--input", "{in}.csv", "--output", "{out}", "--ratio", 0.5, "--method",
         "random", "--column", "a")(ctx)
    counts = json.loads((ctx.work / "out" / "manifest.json").read_text())["counts_per_class"]
    assert {k: v["kept"] for k, v in counts.items()} == {"cat": 15, "dog": 15, "eel": 15}, counts


PRUNE = ("--ratio", 0.5, "--method", "random")
DATA_CASES = [
    Case("truncated-arrow-file", "data-cli", "error",
         _cli("prune", "--input", "{in}", "--output", "{out}", *PRUNE), "cannot read",
         setup=_truncated_arrow, group=False),
    Case("nan-features", "data-cli", "error",
         _cli("quantize", "--input", "{in}.npz", "--output", "{out}", "--ratio", 0.5,
              "--features", "x"), "NaN", setup=_nan_features, group=False),
    Case("string-labels", "data-cli", "works", _kept_per_class, setup=_string_labels,
         group=False),
    Case("empty-class", "data-cli", "error",
         _cli("prune", "--input", "{in}", "--output", "{out}", *PRUNE), "['c']",
         setup=_empty_class, group=False),
    Case("ratio-zero", "data-cli", "error",
         _cli("prune", "--input", "{in}", "--output", "{out}", "--ratio", 0, "--method",
              "random"), "ratio", setup=_hf, group=False),
    Case("ratio-above-one", "data-cli", "error",
         _cli("quantize", "--input", "{in}", "--output", "{out}", "--ratio", 1.5), "ratio",
         setup=_hf, group=False),
    Case("output-exists", "data-cli", "error",
         _cli("prune", "--input", "{in}", "--output", "{out}", *PRUNE), "--force",
         setup=_existing_output, group=False),
    Case("unreadable-input", "data-cli", "error",
         _cli("prune", "--input", "{in}", "--output", "{out}", *PRUNE), "cannot read",
         setup=_not_a_dataset, group=False),
    Case("input-missing", "data-cli", "error",
         _cli("prune", "--input", "{in}", "--output", "{out}", *PRUNE), "does not exist",
         group=False),
    Case("missing-column", "data-cli", "error",
         _cli("quantize", "--input", "{in}", "--output", "{out}", "--ratio", 0.5,
              "--features", "emb"), "no column 'emb'", setup=_hf, group=False),
    Case("missing-label-column", "data-cli", "error",
         _cli("prune", "--input", "{in}", "--output", "{out}", *PRUNE, "--label-column",
              "y"), "no column 'y'", setup=_hf, group=False),
    Case("ragged-csv", "data-cli", "error",
         _cli("prune", "--input", "{in}.csv", "--output", "{out}", *PRUNE),
         "in.csv", setup=_csv("a,b,label\n1,2,0\n3,4\n5,6,1,9\n"), group=False),
    Case("unsupported-format", "data-cli", "error",
         _cli("prune", "--input", "{in}.csv.gz", "--output", "{out}", *PRUNE),
         "unsupported input", setup=lambda ctx: (ctx.work / "in.csv.gz").write_bytes(b"x"),
         group=False),
]
