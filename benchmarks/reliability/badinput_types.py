"""What a bad-input case is (see ``benchmarks.reliability.badinput_cases``) and what it sees
when it runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Ctx:
    rank: int
    world: int
    work: Path  # shared by the case's ranks; empty at setup


class ExitStatus(Exception):
    """A CLI run that exited non-zero: its status and what it wrote to stderr."""

    def __init__(self, code: int, stderr: str):
        super().__init__(stderr.strip())
        self.code = code


@dataclass(frozen=True)
class Case:
    name: str
    component: str
    expect: str  # "error" | "works"
    act: Callable[[Ctx], None]
    match: str = ""
    ranks: int = 1
    setup: Callable[[Ctx], None] | None = None
    group: bool = True  # the case needs an initialised default process group
