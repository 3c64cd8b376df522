"""Which ranks share a node, from each launcher's environment (pure: no process group)."""

from __future__ import annotations

import pytest

from distcomp.compression.topology import Topology, declared, resolve


@pytest.mark.parametrize("env,expected", [
    ({"LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "1", "GROUP_RANK": "0"}, (4, 1, "torchrun")),
    ({"SLURM_PROCID": "5", "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_LOCALID": "1"},
     (4, 1, "slurm")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS_PER_NODE": "8"}, (8, None, "slurm")),
    ({"SLURM_PROCID": "0", "SLURM_TASKS_PER_NODE": "4(x2),3"}, (None, None, "slurm")),
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}, (2, 0, "mpi")),
    ({}, (None, None, "none")),
])
def test_each_launcher_says_how_many_ranks_share_a_node(env, expected):
    assert declared(env) == expected


def test_numbering_is_node_by_node_and_an_explicit_count_wins():
    topo, local = resolve(5, 8, env={"LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (topo.nodes, topo.node, topo.local_rank, local, topo.layered) == (2, 1, 1, 1, True)
    assert topo.node_ranks(1) == [4, 5, 6, 7] and topo.peer_ranks(1) == [1, 5]
    topo, local = resolve(5, 8, ranks_per_node=2, env={"LOCAL_WORLD_SIZE": "4"})
    assert (topo.nodes, topo.local_rank, local) == (4, 1, None)
    flat, _ = resolve(1, 2, env={})  # no launcher says: one rank per node, nothing to layer
    assert (flat.nodes, flat.layered) == (2, False)
    assert not Topology(0, 4, 4).layered  # one node


def test_a_world_that_is_not_whole_nodes_is_refused():
    with pytest.raises(ValueError, match="not a whole number of nodes of 4"):
        resolve(0, 6, ranks_per_node=4)
    with pytest.raises(ValueError, match="ranks_per_node must be an integer >= 1"):
        Topology(0, 4, 0)
