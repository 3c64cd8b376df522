"""Tests run on two pytest-xdist workers (``make test``). Tests sharing one machine-wide
resource run on one worker, one after another: the local SLURM cluster (one controller, one
node) and the network namespaces of ``benchmarks.netns`` (a run removes stale namespaces of
ours, which would include another worker's live ones)."""

from __future__ import annotations

import pytest

SHARED = {"tests/slurm/": "slurm", "tests/benchmarks/test_netbench.py": "netns"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = item.nodeid.split("::")[0]
        for prefix, group in SHARED.items():
            if path.startswith(prefix):
                item.add_marker(pytest.mark.xdist_group(group))
