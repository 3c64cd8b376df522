"""The bad-input catalogue of ``benchmarks.reliability.badinput_cases``, every case run for real in
fresh processes: refused with a clear error naming the knob or file (the CLI: one line, exit code
2), or, for the supported awkward inputs, trained correctly; never a hang or partial output."""

from __future__ import annotations

import time

import pytest

from benchmarks.reliability.badinput_cases import CASES
from benchmarks.reliability.badinput_types import Case
from benchmarks.reliability.badinputs import run_case

ISSUE_COMPONENTS = {"hooks", "lgreco", "co2", "model", "data-cli", "gnn", "checkpoint", "launch"}


def test_catalogue_has_thirty_distinct_cases_over_every_component():
    assert len({c.name for c in CASES}) == len(CASES) >= 30
    assert {c.component for c in CASES} == ISSUE_COMPONENTS
    assert {c.expect for c in CASES} == {"error", "works"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_is_handled_as_expected(case, tmp_path):
    record = run_case(case, tmp_path)
    assert record["ok"], record


def _sleep(ctx):
    time.sleep(600)


def _write_then_fail(ctx):
    (ctx.work / "half.bin").write_bytes(b"half")
    raise ValueError("bad knob")


def _one_rank_refuses(ctx):
    if ctx.rank == 1:
        raise ValueError("bad knob")


RUNNER_CHECKS = [
    Case("sleeps", "runner", "error", _sleep, "bad knob", group=False),
    Case("partial", "runner", "error", _write_then_fail, "bad knob", group=False),
    Case("one-rank", "runner", "error", _one_rank_refuses, "bad knob", ranks=2, group=False),
]


def test_the_runner_catches_hangs_partial_output_and_one_sided_errors(tmp_path):
    source = "tests.benchmarks.reliability.test_badinputs:RUNNER_CHECKS"
    start = time.monotonic()
    hang = run_case(RUNNER_CHECKS[0], tmp_path, timeout_s=3, source=source)
    assert hang["hung"] and not hang["ok"] and time.monotonic() - start < 15
    partial = run_case(RUNNER_CHECKS[1], tmp_path, source=source)
    assert partial["partial_output"] and partial["message"] == "bad knob"
    assert not partial["ok"]
    one = run_case(RUNNER_CHECKS[2], tmp_path, source=source)
    assert one["outcome"] == "error" and not one["ok"]
