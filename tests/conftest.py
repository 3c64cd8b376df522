"""Tests run on two pytest-xdist workers, a whole file per worker (``make test``:
``-n 2 --dist loadfile``), so the tests sharing one machine-wide resource run one after
another on one worker: the local SLURM cluster of ``tests/slurm/`` (one controller, one node,
one munged) and the network namespaces of ``tests/benchmarks/test_netbench.py`` (a run removes
stale namespaces of ours, which would include another worker's live ones). Those two files are
long and mostly wait (on slurmctld, on shaped links), so they are scheduled first: the other
worker fills that time with the rest instead of one worker finishing them alone at the end.
(``--dist loadgroup`` would do this per test, but with pytest 9.2 and pytest-xdist 3.8 its
``xdist_group`` marks were not honoured here: the SLURM tests ran on both workers.)"""

from __future__ import annotations

import pytest

FIRST = ("tests/slurm/", "tests/benchmarks/test_netbench.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(FIRST))  # stable otherwise
