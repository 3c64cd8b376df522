"""Progress bars for the slow steps of ``distcomp-data``, shown only where someone can see them.

A bar on a terminal tells a user that a 10-minute GraphCut is alive; the same bar in a log file
or a CI capture is a wall of carriage returns. So the default follows stderr: bars when it is a
terminal, silence when it is a pipe or a file. ``--progress`` forces them on (a terminal the
check cannot see, e.g. under some job launchers), ``--no-progress`` off.

Library functions take ``progress: bool`` (default False, so benchmarks and tests stay quiet)
and draw through :func:`bar` / :func:`track`, which import tqdm only when a bar is shown.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any


def wanted(flag: bool | None, stream: IO | None = None) -> bool:
    """Whether to draw bars: ``flag`` when the user chose (True/False), else whether
    ``stream`` (default: the current ``sys.stderr``) is a terminal. A stream that cannot say
    (closed, or a stand-in without ``isatty``) counts as not a terminal."""
    if flag is not None:
        return bool(flag)
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _Silent:
    """The part of tqdm's interface the package uses, doing nothing (no tqdm import)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def bar(total: int | None, desc: str, enabled: bool, *, unit: str = "it",
        scale: bool = False) -> Any:
    """A tqdm bar on stderr for ``total`` units (``scale``: 1.2M instead of 1200000, for
    bytes and rows), or a silent stand-in when not ``enabled``. Use as a context manager and
    call ``update(n)``."""
    if not enabled:
        return _Silent()
    from tqdm import tqdm

    cols, rows = _size(sys.stderr)
    sized = cols > 0 and rows > 0
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, file=sys.stderr,
                dynamic_ncols=sized, ncols=None if sized else cols or 80,
                nrows=None if sized else rows or 24)


def _size(stream: IO) -> tuple[int, int]:
    """(columns, lines) of the terminal behind ``stream``; (0, 0) if unknown. A terminal can
    report 0 x 0 (a pseudo-terminal nobody sized, some CI consoles), where tqdm prints empty
    lines (it hides bars below the last of 0 rows): the bar then gets 80 x 24."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return 0, 0
    return size.columns, size.lines


def track(items: Iterable, desc: str, enabled: bool, *, total: int | None = None,
          unit: str = "it") -> Iterator:
    """``items`` unchanged, with a bar advancing one step per item when ``enabled``."""
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, True, unit=unit) as b:
        for item in items:
            yield item
            b.update(1)
