"""Loss at equal steps and time to a target loss, from one run's loss curve and clock: the
two figures every performance comparison reports (network, accuracy and CO2 benchmarks)."""

from __future__ import annotations


def smooth_for(steps: int) -> int:
    """k, the steps in the smoothed loss: a tenth of the run, at least 5."""
    return max(5, steps // 10)


def smoothed(curve: list[float], k: int) -> list[float]:
    """Trailing mean over k steps (over the steps so far for the first k - 1)."""
    out, total = [], 0.0
    for i, x in enumerate(curve):
        total += x - (curve[i - k] if i >= k else 0.0)
        out.append(total / min(i + 1, k))
    return out


def accuracy(curve: list[float], clock: list[float], steps: int, target: float | None) -> dict:
    """Loss at equal steps (smoothed loss at step ``steps``) and time to ``target``: the clock
    at the first step whose smoothed loss is <= target (None, with the reason, if none is).
    Without a target (no allreduce arm, or allreduce itself) the target is this arm's own
    loss at equal steps."""
    k = smooth_for(steps)
    smooth = smoothed(curve, k)
    at_equal = smooth[min(steps, len(smooth)) - 1]
    goal = at_equal if target is None else target
    hit = next((i for i, x in enumerate(smooth) if i >= k - 1 and x <= goal), None)
    why = None
    if hit is None:
        why = (f"smoothed loss {smooth[-1]:.4g} after {len(curve)} steps "
               f"({len(curve) / steps:.2g}x allreduce's) is above the target {goal:.4g}")
    return {
        "loss_at_equal_steps": at_equal, "equal_steps": steps, "smooth_steps": k,
        "target_loss": goal, "steps_run": len(curve),
        "time_to_target_s": None if hit is None else clock[hit],
        "steps_to_target": None if hit is None else hit + 1, "time_to_target_why": why,
    }
