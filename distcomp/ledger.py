"""One place where bytes are counted: the payload bytes this rank hands to collectives.

Unit: bytes of the tensors this rank contributes (all-reduce input, all-gather input), per step,
per tensor key and per collective kind, beside the dense baseline: the bytes a plain all-reduce
of the same gradients would have handed over (element size x elements, per tensor and step),
so the ledger states its own compression ratio. What a link actually carries also depends on the
collective's algorithm (a ring all-reduce moves about 2 (W-1)/W times its input per rank; an
all-gather W-1 times) and on headers; the network benchmark compares this ledger with interface
counters. Per-step history is bounded (``history`` most recent steps); totals are exact forever.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict

CONTROL_KEY = "<control>"


class ByteLedger:
    """Bytes sent, per step / per key / per collective, and the dense baseline. Written by one
    thread at a time.

    Fields: total, per_key, per_collective, per_step (sent bytes); dense_total, dense_per_key
    (the baseline); steps (distinct steps that recorded anything)."""

    def __init__(self, history: int = 10_000):
        self.history = history
        self.total = 0
        self.per_key: dict[str, int] = defaultdict(int)
        self.per_collective: dict[str, int] = defaultdict(int)
        self.per_step: OrderedDict[int, int] = OrderedDict()
        self.dense_total = 0
        self.dense_per_key: dict[str, int] = defaultdict(int)
        self.steps = 0
        self._last_step: int | None = None

    def _see(self, step: int) -> None:
        if step != self._last_step:
            self._last_step = step
            self.steps += 1

    def record_dense(self, step: int, key: str, nbytes: int) -> None:
        """What an uncompressed all-reduce of ``key``'s gradient would have handed over."""
        self._see(step)
        self.dense_total += nbytes
        self.dense_per_key[key] += nbytes

    def record(self, step: int, key: str, nbytes: int, collective: str) -> None:
        self._see(step)
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

    @property
    def ratio(self) -> float | None:
        """Dense baseline / bytes sent (10.0: ten times fewer bytes); None before any."""
        return self.dense_total / self.total if self.total and self.dense_total else None

    def summary(self, per_key: bool = False) -> dict:
        """Totals in bytes, per step and the ratio; with ``per_key`` the same per tensor (the
        ``<control>`` key holds flags and statistics, which have no dense counterpart)."""
        n = max(self.steps, 1)
        out = {"steps": self.steps, "dense_bytes": self.dense_total, "sent_bytes": self.total,
               "dense_bytes_per_step": self.dense_total / n, "sent_bytes_per_step": self.total / n,
               "ratio": self.ratio}
        if per_key:
            out["per_key"] = {
                k: {"dense_bytes": self.dense_per_key.get(k, 0),
                    "sent_bytes": self.per_key.get(k, 0),
                    "ratio": (self.dense_per_key[k] / self.per_key[k]
                              if self.per_key.get(k) and self.dense_per_key.get(k) else None)}
                for k in sorted(set(self.per_key) | set(self.dense_per_key))}
        return out

    def __repr__(self) -> str:
        ratio = f"{self.ratio:.1f}x" if self.ratio else "n/a"
        n = max(self.steps, 1)
        return (f"ByteLedger(steps={self.steps}, sent={_human(self.total)} "
                f"({_human(self.total / n)}/step), dense={_human(self.dense_total)}, "
                f"ratio={ratio})")

    def state_dict(self) -> dict:
        return {
            "total": self.total,
            "per_key": dict(self.per_key),
            "per_collective": dict(self.per_collective),
            "per_step": list(self.per_step.items()),
            "dense_total": self.dense_total,
            "dense_per_key": dict(self.dense_per_key),
            "steps": self.steps,
            "last_step": self._last_step,
        }

    def load_state_dict(self, state: dict) -> None:
        """Also reads ledgers saved before the dense baseline existed (it restarts at 0)."""
        self.total = int(state["total"])
        self.per_key = defaultdict(int, state["per_key"])
        self.per_collective = defaultdict(int, state["per_collective"])
        self.per_step = OrderedDict((int(k), int(v)) for k, v in state["per_step"])
        self.dense_total = int(state.get("dense_total", 0))
        self.dense_per_key = defaultdict(int, state.get("dense_per_key", {}))
        self.steps = int(state.get("steps", len(self.per_step)))
        self._last_step = state.get("last_step", next(reversed(self.per_step), None))


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(nbytes) < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.2f} TB"
