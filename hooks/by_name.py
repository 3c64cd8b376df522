"""Compression picked by name, set up from the optimizer: the one call a DDP script needs.

    state = distcomp.hooks.attach(ddp_model, "topk", optimizer=opt)   # or "lgreco-topk", ...
    ...
    state.close()

A name is a registered method (:func:`distcomp.method_names`) or ``"lgreco-"`` + a method for
L-GreCo's per-layer settings. What a method needs from the optimizer it reads itself
(:meth:`~distcomp.compression.compressor.Compressor.options_from_optimizer`): top-k's momentum
correction takes the momentum of ``SGD(momentum=m)``; Adam gets none. Options passed explicitly
win over what is read.
"""

import torch
from torch import nn

from distcomp.compression.compressor import method_class, method_names
from distcomp.hooks.ddp import CompressionState, compression_hook

ADAPTIVE = "lgreco-"


def comm_names() -> list[str]:
    """Every name :func:`attach` takes: each method, then each with L-GreCo."""
    return [*method_names(), *(ADAPTIVE + m for m in method_names())]


def method_options(name: str, optimizer=None, **options) -> "tuple[str, dict]":
    """(method, options) for ``name``: the options with what the method reads from
    ``optimizer`` added beneath them and, for an ``lgreco-`` name, ``lgreco={}`` (the planner's
    defaults) unless ``lgreco`` is given. ValueError listing the names for an unknown one.
    For integrations that build their own state (DeepSpeed, Horovod, Lightning)."""
    method = name.removeprefix(ADAPTIVE)
    try:
        cls = method_class(method)
    except ValueError:
        raise ValueError(f"unknown compression {name!r}; choose from {comm_names()}") from None
    read = cls.options_from_optimizer(unwrap(optimizer)) if optimizer is not None else {}
    if name.startswith(ADAPTIVE):
        options = {"lgreco": {}, **options}
    return method, {**read, **options}


def unwrap(optimizer):
    """The torch optimizer inside a framework's wrapper (accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``, torch's ``ZeroRedundancyOptimizer``)."""
    for attr in ("optimizer", "_optimizer", "optim"):
        inner = getattr(optimizer, attr, None)
        if isinstance(inner, torch.optim.Optimizer):
            return unwrap(inner)
    return optimizer


def attach(model: nn.Module, name: str = "powersgd", optimizer=None,
           **options) -> CompressionState:
    """Build the :class:`~distcomp.hooks.ddp.CompressionState` for ``name`` on the DDP
    ``model`` and register :func:`~distcomp.hooks.ddp.compression_hook` on it; returns the
    state (``close()`` it before ``destroy_process_group()``). ``options``: the state's
    keywords (``rank=4``, ``warmup_steps=20``, ``lgreco={...}``, ``ranks_per_node=4``, ...)."""
    method, options = method_options(name, optimizer, **options)
    state = CompressionState(model, method, **options)
    try:
        model.register_comm_hook(state, compression_hook)
    except BaseException:
        state.close()
        raise
    return state
