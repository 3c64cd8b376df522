"""benchmarks.accuracy.co2_outer refuses bad sweeps before starting any rank (its quick run is in
tests/test_bench_commands.py)."""

from __future__ import annotations

import pytest

from benchmarks.accuracy import co2_outer


@pytest.mark.parametrize("argv,message", [
    (["--taus", "0"], "every tau must be >= 1"),
    (["--momenta", "1.0"], "outer momentum in [0, 1)"),
    (["--taus", "two"], "--taus takes whole numbers"),
    (["--workloads", "mnist"], "unknown workload"),
])
def test_bad_sweeps_are_refused_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        co2_outer.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err

