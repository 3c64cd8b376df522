"""Checkpoint round trip shared by the hook tests: does a resumed run repeat the original?"""

from __future__ import annotations

import copy
import io

import torch


def resume_matches(make, run, split: int, more: int):
    """Train ``split`` steps, checkpoint model, optimizer and hook state, train ``more`` steps;
    then build afresh with ``make()``, load the checkpoint and train the same ``more`` steps.

    make() -> (ddp_model, hook_state, optimizer); run(model, opt, start, n) trains steps
    [start, start + n). Returns (bit-identical parameters?, original state, resumed state).
    """
    model, state, opt = make()
    run(model, opt, 0, split)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "hook": state.state_dict()}, buf)
    run(model, opt, split, more)
    expected = copy.deepcopy(model.module.state_dict())
    model2, state2, opt2 = make()
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    state2.load_state_dict(ckpt["hook"])
    run(model2, opt2, split, more)
    got = model2.module.state_dict()
    return all(torch.equal(expected[k], got[k]) for k in expected), state, state2
