"""One place where bytes are counted: the payload bytes this rank hands to collectives.

Unit: bytes of the tensors this rank contributes (all-reduce input, all-gather input), per step,
per tensor key and per collective kind. What a link actually carries also depends on the
collective's algorithm (a ring all-reduce moves about 2 (W-1)/W times its input per rank; an
all-gather W-1 times) and on headers; the network benchmark compares this ledger with interface
counters. Per-step history is bounded (``history`` most recent steps); totals are exact forever.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict

CONTROL_KEY = "<control>"


class ByteLedger:
    """Bytes sent, per step / per key / per collective. Written by one thread at a time."""

    def __init__(self, history: int = 10_000):
        self.history = history
        self.total = 0
        self.per_key: dict[str, int] = defaultdict(int)
        self.per_collective: dict[str, int] = defaultdict(int)
        self.per_step: OrderedDict[int, int] = OrderedDict()

    def record(self, step: int, key: str, nbytes: int, collective: str) -> None:
        self.total += nbytes
        self.per_key[key] += nbytes
        self.per_collective[collective] += nbytes
        self.per_step[step] = self.per_step.get(step, 0) + nbytes
        while len(self.per_step) > self.history:
            self.per_step.popitem(last=False)

    def step_bytes(self, step: int) -> int:
        return self.per_step.get(step, 0)

    def mean_bytes_per_step(self, last: int | None = None) -> float:
        """Mean over the recorded steps (or the ``last`` most recent ones); 0 if none."""
        values = list(self.per_step.values())
        if last is not None:
            values = values[-last:]
        return sum(values) / len(values) if values else 0.0

    def state_dict(self) -> dict:
        return {
            "total": self.total,
            "per_key": dict(self.per_key),
            "per_collective": dict(self.per_collective),
            "per_step": list(self.per_step.items()),
        }

    def load_state_dict(self, state: dict) -> None:
        self.total = int(state["total"])
        self.per_key = defaultdict(int, state["per_key"])
        self.per_collective = defaultdict(int, state["per_collective"])
        self.per_step = OrderedDict((int(k), int(v)) for k, v in state["per_step"])
