"""Tests run on two pytest-xdist workers, a whole file per worker (``make test``:
``-n 2 --dist loadfile``), so the tests sharing one machine-wide resource run one after
another on one worker: the local SLURM cluster of ``tests/slurm/`` (one controller, one node,
one munged) and the network namespaces of ``tests/benchmarks/network/test_netbench.py`` (a run
removes stale namespaces of ours, which would include another worker's live ones). (``--dist
loadgroup`` would do this per test, but with pytest 9.2 and pytest-xdist 3.8 its
``xdist_group`` marks were not honoured here: the SLURM tests ran on both workers.)

Files go out longest first (their share of a CI run here, most of it waiting on subprocesses),
so that no long file is left running alone on one worker at the end."""

from __future__ import annotations

import pytest

LONGEST_FIRST = (
    "tests/slurm/", "tests/benchmarks/network/test_netbench.py",
    "tests/distcomp/co2/test_optimizer.py",
    "tests/launch/test_train.py", "tests/benchmarks/reliability/test_badinputs.py",
    "tests/hooks/test_deepspeed.py", "tests/benchmarks/gnn/test_gnnpipe.py",
    "tests/benchmarks/data/test_data.py", "tests/hooks/test_ddp.py",
    "tests/distcomp/gnn/test_pipeline.py", "tests/data_compress/test_mpi.py",
    "tests/hooks/test_multibucket.py", "tests/benchmarks/reliability/test_soak.py",
    "tests/data_compress/test_cli.py", "tests/test_docs_commands.py",
    "tests/launch/test_frameworks.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST)
                     if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: tests keep their order within a file


@pytest.fixture
def two_hosts():
    """Two network namespaces on one shaped veth (``benchmarks.network.netns.TwoHosts``, 100
    Mbit/s): pass it to ``run_ranks(hosts=...)`` to place half the ranks on each "node"."""
    import os
    import shutil

    from benchmarks.network.netns import TwoHosts

    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (ip netns, veth, tc)")
    if not (shutil.which("ip") and shutil.which("tc")):
        pytest.skip("needs iproute2's ip and tc (apt-get install iproute2)")
    with TwoHosts("100mbit", burst="1mbit") as net:
        yield net


@pytest.fixture(params=["loopback", "namespaces"])
def nodes(request):
    """Where a 4-rank test's two "nodes" live: None (all ranks on one loopback) or a
    :func:`two_hosts` pair of namespaces, for ``run_ranks(hosts=nodes)``."""
    return None if request.param == "loopback" else request.getfixturevalue("two_hosts")
