"""The compression hook in three stages on 4 real gloo ranks, 2 nodes x 2 ranks: the same
training as the flat hook where the method is linear, half the slow-link bytes per node,
bit-identical resume, and the same clear error on every rank for a topology they disagree on."""

from __future__ import annotations

import os

import pytest
import torch

from distcomp.hooks import CompressionState, LGreCoState, compression_hook
from tests.hooks.test_ddp import ADAPTIVE, RAW, _ddp
from tests.models import ConvNet, convnet_steps
from tests.multiproc import outcome, run_ranks
from tests.resume import resume_matches


def _train(rank, method, setting, steps=6, **topology):
    torch.manual_seed(0)
    model = _ddp(ConvNet())
    state = CompressionState(model, method, **setting, **topology)
    model.register_comm_hook(state, compression_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    convnet_steps(model, opt, rank, 0, steps)
    stats = state.compression_stats()
    hier = state.hier is not None
    state.close()
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}, stats, hier


def _flat_and_hierarchical(rank, world):
    out = {}
    for method, setting in {"powersgd": {"rank": 2, **RAW, "warmup_steps": 2},
                            "topk": {"density": 0.05, **RAW}}.items():
        flat, flat_stats, flat_on = _train(rank, method, setting)
        hier, hier_stats, hier_on = _train(rank, method, setting, ranks_per_node=2)
        out[method] = {"flat": flat, "hier": hier, "on": (flat_on, hier_on),
                       "flat_sent": flat_stats["sent_bytes"], "hier_sent": hier_stats["sent_bytes"],
                       "fast": hier_stats["fast_link"]["sent_bytes"]}
    return out


def test_three_stages_train_like_flat_and_halve_the_slow_link_bytes_per_node():
    res = run_ranks(_flat_and_hierarchical, world=4, timeout_s=240)
    for method in ("powersgd", "topk"):
        assert all(r[method]["on"] == (False, True) for r in res)
        # every rank ends with the same parameters, bit for bit
        for r in res[1:]:
            for k, v in res[0][method]["hier"].items():
                assert torch.equal(v, r[method]["hier"][k]), (method, k)
        # a node's two ranks share the slow stage: together they send what one flat rank sends
        for node in (0, 1):
            pair = res[2 * node][method]["hier_sent"] + res[2 * node + 1][method]["hier_sent"]
            assert 0.9 < pair / res[2 * node][method]["flat_sent"] < 1.1, (method, pair)
        assert res[0][method]["fast"] > 0
    # PowerSGD is linear given P, so averaging node means first changes nothing but rounding;
    # top-k of a node mean is not the mean of top-ks, so it trains differently (not compared)
    for k, v in res[0]["powersgd"]["flat"].items():
        torch.testing.assert_close(res[0]["powersgd"]["hier"][k], v, rtol=1e-4, atol=1e-5)


def _resume(rank, world):
    out = {}
    for method, setting in ADAPTIVE.items():
        def make(m=method, s=setting):
            torch.manual_seed(0)
            model = _ddp(ConvNet())
            kind = LGreCoState if m == "topk" else CompressionState
            extra = {"lgreco": {"warmup_steps": 3, "window": 2, "period": 3}} if m == "topk" \
                else {}
            state = kind(model, m, ranks_per_node=2, **s, **extra)
            model.register_comm_hook(state, compression_hook)
            return model, state, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        same, state, state2 = resume_matches(
            make, lambda model, opt, start, n: convnet_steps(model, opt, rank, start, n), split=5,
            more=5)
        out[method] = (same, state.hier is not None, len(state.reducer.residuals),
                       state.state_dict()["topology"])
    return out


def test_resume_is_bit_identical_with_sharded_state(nodes):
    res = run_ranks(_resume, world=4, timeout_s=240, hosts=nodes)
    for rank, r in enumerate(res):
        for method, (same, on, residuals, topo) in r.items():
            assert same and on, (rank, method)
            assert residuals > 0  # ConvNet's layers are dealt to both local ranks
            assert topo == {"nodes": 2, "ranks_per_node": 2, "rank": rank}


def _disagree(rank, world, case):
    model = _ddp(ConvNet())
    if case == "ranks_per_node":  # rank 3 was told another shape
        kw = {"ranks_per_node": 4 if rank == 3 else 2}
    elif case == "placement":  # torchrun's variables, ranks dealt round-robin over the nodes
        os.environ.update(LOCAL_WORLD_SIZE="2", LOCAL_RANK=str(rank // 2))
        kw = {}
    else:
        kw = {"ranks_per_node": 4, "hierarchical": True}  # one node: nothing to layer
    return outcome(lambda: CompressionState(model, "powersgd", **kw))["error"]


@pytest.mark.parametrize("case,message", [
    ("ranks_per_node", "ranks disagree on ranks per node: rank 0=2, rank 1=2, rank 2=2, "
                       "rank 3=4"),
    ("placement", "ranks are not numbered node by node (2 per node): rank 1 is local rank 0, "
                  "not 1, rank 2 is local rank 1, not 0"),
    ("hierarchical", "hierarchical=True needs several nodes of several ranks; this world is "
                     "1 node(s) x 4 rank(s)"),
])
def test_ranks_that_disagree_on_the_topology_get_the_same_error(case, message):
    errors = run_ranks(_disagree, world=4, case=case)
    assert len(set(errors)) == 1 and message in errors[0], errors


def test_bad_topology_options_fail_before_any_collective():
    model = ConvNet()
    for kw, match in (({"ranks_per_node": 0}, "ranks_per_node must be an integer >= 1"),
                      ({"hierarchical": "yes"}, "hierarchical must be True, False or None"),
                      ({"hierarchical": True, "process_group": object()},
                       "cannot run on a process_group")):
        with pytest.raises(ValueError, match=match):
            CompressionState(model, "powersgd", **kw)

