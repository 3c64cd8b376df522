"""Command-line flags for every registered method's options, so that a script's ``--rank``,
``--density`` or ``--qsgd-norm`` comes from the registry (launch scripts and benchmarks)."""

from __future__ import annotations

import argparse

from distcomp.compression.compressor import knob_field, knob_owners
from distcomp.knobs import scalar


def add_method_flags(parser: argparse.ArgumentParser) -> list[str]:
    """``--name`` for every option of every method (default None: the method's own); returns
    the option names, the ``dest`` of each flag. Boolean and tuple options get no flag."""
    names = []
    for name, owners in sorted(knob_owners().items()):
        kind, choices = scalar(knob_field(name)[0])
        if kind not in (int, float, str):
            continue
        methods = "/".join(o.name for o in owners)
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                            choices=choices, help=f"{methods} option (default: the method's)")
        names.append(name)
    return names
