"""Compressed cross-node averaging for FSDP2 on 4 real gloo ranks, 2 nodes x 2: the dense path
equals native HSDP bit for bit, PowerSGD and top-k match a reference computed by hand from the
ranks' raw gradients, replicas stay identical, gradient accumulation and unused parameters
work, torch.distributed.checkpoint resumes bit for bit, and bad settings fail on every rank
before any collective."""

from __future__ import annotations

import tempfile

import pytest
import torch
import torch.distributed as dist
from torch import nn

from distcomp.compression.methods.powersgd import PowerSGD, as_matrix, orthogonalize
from distcomp.compression.sharded import layout, managed_parameters
from distcomp.hooks.fsdp import FSDPCompression
from tests.multiproc import outcome, run_ranks

RAW = {"warmup_steps": 0, "accordion": False}


class Net(nn.Module):
    """Residual MLP blocks and an odd-sized head (5 rows: shards of 3 and 2 rows, padding);
    ``spare`` is used only when asked (an unused parameter on the other steps)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)) for _ in range(2)])
        self.spare = nn.Linear(32, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x, use_spare=False):
        for b in self.blocks:
            x = x + b(x)
        if use_spare:
            x = x + self.spare(x)
        return self.head(x)


def _mesh(hsdp=False):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("node", "shard"))
    return mesh if hsdp else mesh["shard"]


def _build(hsdp=False, seed=0, **fsdp_kw):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model, mesh = Net(), _mesh(hsdp)
    for b in model.blocks:
        fully_shard(b, mesh=mesh, **fsdp_kw)
    fully_shard(model, mesh=mesh, **fsdp_kw)
    model.set_reduce_scatter_unused_params(True)  # ranks use ``spare`` on different steps
    return model


def _batch(rank, step, n=16):
    gen = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(n, 32, generator=gen), torch.randint(0, 5, (n,), generator=gen)


def _train(model, opt, rank, start, steps, spare_every=0):
    losses = []
    for step in range(start, start + steps):
        x, y = _batch(rank, step)
        use = bool(spare_every) and step % spare_every == 0 and rank == 0
        loss = nn.functional.cross_entropy(model(x, use_spare=use), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _full(model):
    return {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}


def _run(me, hsdp=False, method=None, steps=4, **options):
    model = _build(hsdp)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = None if method is None else FSDPCompression(model, method, optimizer=opt, **options)
    losses = _train(model, opt, me, 0, steps, spare_every=3)
    stats = None if state is None else {**state.compression_stats(), "plan": state.plan(),
                                        "momentum": state.reducer.compressor.momentum}
    if state is not None:
        state.close()
    return {"params": _full(model), "losses": losses, "stats": stats}


def _node_means_of_raw_grads(rank):
    """Every rank's full gradient of step 0 from an unsharded copy, all-gathered, averaged per
    node: what FSDP2's reduce-scatter leaves before the cross-node step."""
    torch.manual_seed(0)
    plain = Net()
    x, y = _batch(rank, 0)
    nn.functional.cross_entropy(plain(x), y).backward()
    out = {}
    for n, p in plain.named_parameters():
        if p.grad is None:
            continue
        rows = [torch.empty_like(p.grad) for _ in range(4)]
        dist.all_gather(rows, p.grad)
        out[n] = [(rows[0] + rows[1]) / 2, (rows[2] + rows[3]) / 2]
    return out


def _one_step_grads(me, method, **options):
    model = _build()
    state = FSDPCompression(model, method, min_compression_rate=0, **RAW, **options)
    x, y = _batch(me, 0)
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.to_local().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    state.close()
    return grads


def _layout_check(rank):
    """Our reading of FSDP2's order and padding against FSDP2's own (private) records."""
    from torch.distributed.fsdp import FSDPModule

    model = _build()
    names = {p: n for n, p in model.named_parameters()}
    for m in [m for m in model.modules() if isinstance(m, FSDPModule)]:
        ours = [names[p] for _, p in managed_parameters(m, lambda c: isinstance(c, FSDPModule))]
        group = m._get_fsdp_state()._fsdp_param_group
        theirs = [names[fp.sharded_param] for fp in group.fsdp_params]
        assert ours == theirs, (ours, theirs)
        slots = layout([(n, model.get_parameter(n).shape) for n in ours], 2, rank % 2)
        for s, fp in zip(slots, group.fsdp_params):
            assert s.shape == fp.sharded_size, (s, fp.sharded_size)
            assert s.padded == fp.padded_sharded_param_size.numel(), s
    return True


def _equivalence(rank, world):
    torch.manual_seed(0)
    return {
        "layout": _layout_check(rank),
        "native": _run(rank, hsdp=True),
        "dense": _run(rank, method="powersgd", warmup_steps=10**6),
        "powersgd": _run(rank, method="powersgd", rank=2, **RAW),
        "topk": _run(rank, method="lgreco-topk", density=0.1, lgreco={"warmup_steps": 3,
                                                                      "window": 2}, **RAW),
        "raw": _node_means_of_raw_grads(rank),
        "psgd_step": _one_step_grads(rank, "powersgd", rank=2),
        "topk_step": _one_step_grads(rank, "topk", density=0.1),
    }


def _powersgd_reference(node_means, local_rank, key, r=2):
    """One power iteration on the whole weight, the node's shards joined: P = orth(sum_n M_n
    Q0), Q = sum_n M_n^T P, average P Q^T / nodes; this shard's rows of it."""
    ms = [as_matrix(m) for m in node_means]
    q0 = PowerSGD(rank=r).initial_q(node_means[0].shape, r, 0, key)
    p = orthogonalize(sum(m @ q0 for m in ms))
    q = sum(m.t() @ p for m in ms)
    per = -(-ms[0].shape[0] // 2)
    return ((p @ q.t()) / 2)[local_rank * per : (local_rank + 1) * per]


def test_dense_path_equals_native_hsdp_and_compressed_match_hand_references():
    res = run_ranks(_equivalence, world=4, timeout_s=120)
    assert all(r["layout"] for r in res)
    for r in res:  # compression off: FSDP2's own HSDP reduction, bit for bit
        assert r["dense"]["losses"] == r["native"]["losses"]
        for k, v in r["native"]["params"].items():
            assert torch.equal(r["dense"]["params"][k], v), k
    for method in ("powersgd", "topk"):  # every replica holds the same model
        for r in res[1:]:
            for k, v in res[0][method]["params"].items():
                assert torch.equal(r[method]["params"][k], v), (method, k)
        stats = res[0][method]["stats"]
        assert stats["sent_bytes"] < 0.6 * stats["dense_bytes"], (method, stats)
        assert stats["fast_link"]["sent_bytes"] > 0 and stats["state_bytes"] > 0
        assert stats["fast_link"]["ratio"] == 1.0  # FSDP2's reduce-scatter stays dense
        # it trains: the last losses are near the dense run's
        assert abs(res[0][method]["losses"][-1] - res[0]["native"]["losses"][-1]) < 0.15
    # top-k read SGD's momentum for its correction; L-GreCo planned the shards it compresses
    assert res[0]["topk"]["stats"]["momentum"] == 0.9
    assert res[0]["topk"]["stats"]["plan"] and not res[0]["powersgd"]["stats"]["plan"]
    for rank, r in enumerate(res):
        local = rank % 2
        for key, means in r["raw"].items():
            per = -(-means[0].shape[0] // 2)
            shards = [m[local * per : (local + 1) * per] for m in means]
            mean = (shards[0] + shards[1]) / 2
            if means[0].dim() == 1:  # biases travel dense: the exact mean over nodes
                for step in ("psgd_step", "topk_step"):
                    torch.testing.assert_close(r[step][key], mean, rtol=1e-5, atol=1e-7)
                continue
            # PowerSGD rank 2 on the whole weight, this shard's rows
            got = r["psgd_step"][key]
            want = _powersgd_reference(means, local, key).view_as(got)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
            # top-k: each node's largest 10% of its shard, then the mean over nodes
            sparse = []
            for s in shards:
                k = max(1, round(0.1 * s.numel()))
                flat = torch.zeros(s.numel())
                idx = s.reshape(-1).abs().topk(k).indices
                flat[idx] = s.reshape(-1)[idx]
                sparse.append(flat.view_as(s))
            got = r["topk_step"][key]
            torch.testing.assert_close(got, (sparse[0] + sparse[1]) / 2, rtol=1e-5, atol=1e-7)


def _accumulate(rank, micro):
    """Three steps of 16 samples per rank, in ``micro`` backward passes each (the first ones
    under ``set_requires_gradient_sync(False)``); sum-reduced losses make the gradients equal."""
    model = _build()
    state = FSDPCompression(model, "powersgd", rank=2, **RAW)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(3):
        x, y = _batch(rank, step)
        for i, (xs, ys) in enumerate(zip(x.chunk(micro), y.chunk(micro))):
            model.set_requires_gradient_sync(i == micro - 1)
            (nn.functional.cross_entropy(model(xs), ys, reduction="sum") / 16).backward()
        opt.step()
        opt.zero_grad()
    steps = state.step
    state.close()
    return _full(model), steps


def _mixed_precision(rank, method, **options):
    """bf16 parameters, fp32 reduction, activation checkpointing of every block."""
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from torch.utils.checkpoint import checkpoint

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    model = _build(hsdp=method is None, mp_policy=policy)
    for b in model.blocks:
        b.forward = (lambda inner: lambda x: checkpoint(inner, x, use_reentrant=False))(
            b.forward)
    state = None if method is None else FSDPCompression(model, method, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = _train(model, opt, rank, 0, 3)
    if state is not None:
        state.close()
    return {"params": _full(model), "losses": losses}


def _resume(rank, path, split=2, more=2):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def make():
        model = _build()
        state = FSDPCompression(model, "powersgd", rank=2, **RAW)
        return model, state, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    model, state, opt = make()
    _train(model, opt, rank, 0, split)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd, "compression": state}, checkpoint_id=path)
    expected = _train(model, opt, rank, split, more), _full(model), state.step
    state.close()
    model, state, opt = make()
    msd, osd = get_state_dict(model, opt)
    loaded = {"model": msd, "optim": osd, "compression": state}
    dcp.load(loaded, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    got = _train(model, opt, rank, split, more), _full(model), state.step
    state.close()
    return expected, got


def _differs(rank):
    return outcome(lambda: FSDPCompression(_build(), "powersgd", rank=2 + (rank == 3)))


def _two_d(rank):
    return outcome(lambda: FSDPCompression(_build(hsdp=True), "powersgd"))


def _replicas_start_alike(rank):
    """Each rank initialised from its own seed: node 0's shards reach the other node."""
    model = _build(seed=rank)
    FSDPCompression(model, "powersgd").close()
    return _full(model)


def _layout_changed(rank):
    """A parameter frozen after FSDPCompression was built: FSDP2 then reduces fewer elements
    than the slots it was given; a clear error on every rank, not averaged wrong rows."""
    model = _build()
    state = FSDPCompression(model, "powersgd", **RAW)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    _train(model, opt, rank, 0, 1)
    model.blocks[0][0].weight.requires_grad_(False)
    out = outcome(lambda: _train(model, opt, rank, 1, 1))
    state.close()
    return out


def _features(rank, world, path):
    return {"start": _replicas_start_alike(rank),
            "one": _accumulate(rank, 1), "two": _accumulate(rank, 2),
            "mp_native": _mixed_precision(rank, None),
            "mp_dense": _mixed_precision(rank, "powersgd", warmup_steps=10**6),
            "mp_psgd": _mixed_precision(rank, "qsgd", bits=4, **RAW),
            "resume": _resume(rank, path), "differs": _differs(rank), "two_d": _two_d(rank),
            "layout": _layout_changed(rank)}


def test_accumulation_mixed_precision_checkpointing_resume_and_bad_settings():
    with tempfile.TemporaryDirectory() as path:
        res = run_ranks(_features, world=4, timeout_s=150, path=path)
    for r in res[1:]:  # every rank's shard is node 0's after set-up: one model everywhere
        for k, v in res[0]["start"].items():
            assert torch.equal(r["start"][k], v), k
    for r in res:
        (one, steps1), (two, steps2) = r["one"], r["two"]
        assert steps1 == steps2 == 3  # accumulation passes reduce nothing and do not count
        for k, v in one.items():
            torch.testing.assert_close(two[k], v, rtol=1e-4, atol=1e-6)
        assert r["mp_dense"]["losses"] == r["mp_native"]["losses"]
        for k, v in r["mp_native"]["params"].items():
            assert torch.equal(r["mp_dense"]["params"][k], v), k
        (losses, params, step), (losses2, params2, step2) = r["resume"]
        assert losses == losses2 and step == step2 == 4
        assert all(torch.equal(params[k], params2[k]) for k in params)
        assert "ranks were configured differently" in r["differs"]["error"]
        assert "rank: rank 0=2, rank 1=2, rank 2=2, rank 3=3" in r["differs"]["error"]
        assert "mesh['shard']" in r["two_d"]["error"]
        assert "laid out unlike FSDP2's order" in (r["layout"]["error"] or ""), r["layout"]
    for r in res[1:]:
        for k, v in res[0]["mp_psgd"]["params"].items():
            assert torch.equal(r["mp_psgd"]["params"][k], v), k


def test_bad_settings_fail_before_any_process_group():
    with pytest.raises(ValueError, match="unknown compression 'nope'"):
        FSDPCompression(nn.Linear(2, 2), "nope")
    with pytest.raises(ValueError, match="unknown compression 'lgreco-nope'"):
        FSDPCompression(nn.Linear(2, 2), "lgreco-nope")
    with pytest.raises(ValueError, match="rank"):
        FSDPCompression(nn.Linear(2, 2), "powersgd", rank=0)
    with pytest.raises(ValueError, match="ranks_per_node"):
        FSDPCompression(nn.Linear(2, 2), "powersgd", ranks_per_node=0)
    with pytest.raises(ValueError, match="all_gather must be one of dense, int8"):
        FSDPCompression(nn.Linear(2, 2), "fp8", all_gather="int4")
    with pytest.raises(RuntimeError, match="torch.distributed initialized"):
        FSDPCompression(nn.Linear(2, 2), "powersgd")


def _silent_peer(rank, world):
    import time

    model = _build()
    state = FSDPCompression(model, "powersgd", rank=2, timeout_s=3.0, **RAW)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    _train(model, opt, rank, 0, 1)
    assert state.step == 1
    if rank == 2:  # alive, but never joins the next step's collectives
        time.sleep(8)
        return {"error": None}
    return outcome(lambda: _train(model, opt, rank, 1, 1))


def test_a_silent_peer_becomes_an_error_on_every_rank_not_a_hang():
    res = run_ranks(_silent_peer, world=4, timeout_s=60, pg_timeout_s=5.0)
    for rank in (0, 1):  # the compressed cross-node step waits at most timeout_s
        assert "timed out" in res[rank]["error"] and res[rank]["seconds"] < 7, res[rank]
    # its node's other rank waits in FSDP2's own reduce-scatter, which gloo ends when the
    # silent rank leaves (or at the process group's timeout): an error too, never a hang
    assert res[3]["error"] and res[3]["seconds"] < 15, res[3]


def _build_flat(seed=0):
    """The same model sharded over all 4 ranks (one-level FSDP2, no replicas)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model, mesh = Net(), init_device_mesh("cpu", (4,))
    for b in model.blocks:
        fully_shard(b, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.set_reduce_scatter_unused_params(True)
    return model


def _flat_run(me, method=None, steps=4, **options):
    model = _build_flat()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = None if method is None else FSDPCompression(model, method, ranks_per_node=2,
                                                        **options)
    x, y = _batch(me, 0)
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.to_local().clone() for n, p in model.named_parameters()}
    opt.step()
    opt.zero_grad()
    losses = _train(model, opt, me, 1, steps - 1, spare_every=3)
    out = {"params": _full(model), "losses": losses, "grads": grads}
    seen = []  # the head's weight as the forward uses it (all-gathered)
    hook = model.head.register_forward_pre_hook(lambda m, _: seen.append(m.weight.detach().clone()))
    with torch.no_grad():
        model(x)
    hook.remove()
    out["seen"] = seen[0]
    if state is not None:
        out["stats"], out["blob"] = state.compression_stats(), state.state_dict()
        state.close()
        again = FSDPCompression(_build_flat(), method, ranks_per_node=2, **options)
        again.load_state_dict(out["blob"])  # the residuals come back, on every rank
        out["reloaded"] = again.state_dict() == out["blob"]
        again.close()
    return out


def _flat(me, world):
    refused = {name: outcome(lambda n=name, o=o: FSDPCompression(_build_flat(), n,
                                                                 ranks_per_node=2, **o))
               for name, o in (("powersgd", {}), ("lgreco-qsgd", {}), ("fp8", {"accordion": True}),
                               ("topk", {"momentum": 0.9}))}
    return {"native": _flat_run(me), "exact": _flat_run(me, "fp8", warmup_steps=10**6),
            "fp8": _flat_run(me, "fp8", warmup_steps=0),
            "qsgd": _flat_run(me, "qsgd", bits=4, warmup_steps=0, residual="float8"),
            "int8": _flat_run(me, "fp8", warmup_steps=0, all_gather="int8"),
            "refused": refused}


def test_flat_fsdp_compresses_its_reduce_scatter_across_nodes_only():
    """One-level FSDP2 over 2 nodes x 2: the warm-up's two exact hops equal FSDP2's own
    reduce-scatter, fp8 and 4-bit QSGD send about a quarter and an eighth of its cross-node
    bytes and train like it, state round-trips, and what cannot run per chunk is refused."""
    res = run_ranks(_flat, world=4, timeout_s=150)
    for r in res:
        native = r["native"]
        for k, v in native["grads"].items():
            torch.testing.assert_close(r["exact"]["grads"][k], v, rtol=1e-5, atol=1e-6)
            if v.norm() > 0:  # compressed, and close: fp8's rounding (before any feedback)
                err = float((r["fp8"]["grads"][k] - v).norm() / v.norm())
                assert err < 0.1 and (err > 1e-3 or v.dim() == 1), (k, err)
        assert r["exact"]["stats"]["ratio"] == 1.0
        for method, most in (("fp8", 0.27), ("qsgd", 0.15)):
            stats = r[method]["stats"]
            assert 0 < stats["sent_bytes"] < most * stats["dense_bytes"], (method, stats)
            assert stats["fast_link"]["sent_bytes"] > 0 and r[method]["reloaded"]
            assert abs(r[method]["losses"][-1] - native["losses"][-1]) < 0.1, method
        # an 8-bit residual: about a quarter of fp32's memory
        assert r["qsgd"]["stats"]["state_bytes"] < 0.3 * r["fp8"]["stats"]["state_bytes"]
        # the forward uses the master weights (dense all-gather) or their 8-bit rounding,
        # the same on every rank, within half a block scale, at about a quarter of the bytes
        assert torch.equal(native["seen"], native["params"]["head.weight"])
        seen, master = r["int8"]["seen"], r["int8"]["params"]["head.weight"]
        assert torch.equal(seen, res[0]["int8"]["seen"]) and not torch.equal(seen, master)
        assert (seen - master).abs().max() <= master.abs().max() / 254 + 1e-7
        gather = r["int8"]["stats"]["all_gather"]
        assert 0.25 < gather["ratio"] < 0.27 and gather["sent_bytes"] > 0, gather
        assert abs(r["int8"]["losses"][-1] - r["fp8"]["losses"][-1]) < 0.02
        errors = {k: v["error"] for k, v in r["refused"].items()}
        assert "cannot compress a reduce-scatter" in errors["powersgd"], errors
        assert "L-GreCo" in errors["lgreco-qsgd"] and "Accordion" in errors["fp8"], errors
        assert "momentum correction" in errors["topk"], errors
