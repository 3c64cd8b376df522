"""The set-up every integration shares, all before any collective: options parsed and
validated into configs (ignored ones logged), the parameters that will be averaged, and the
flat settings dict the ranks compare (:func:`~distcomp.comm.check_same`) so that a rank
configured differently fails at set-up instead of corrupting or hanging training."""

from __future__ import annotations

import logging
from dataclasses import asdict

import torch
from torch import nn

from distcomp.comm import model_fingerprint
from distcomp.compression.config import CompressionConfig, ignored_options
from distcomp.compression.lgreco import LGreCoConfig

log = logging.getLogger(__name__)


def parse_options(method: str, options: dict, lgreco: LGreCoConfig | dict | None = None
                  ) -> tuple[CompressionConfig, LGreCoConfig | None]:
    """Validate the user-facing knobs of every integration (a typo fails here, before any
    process group or collective); ``lgreco`` may be a dict of :class:`LGreCoConfig` fields."""
    config = CompressionConfig.from_dict({"method": method, **options})
    for why in ignored_options(method, options):
        log.warning("distcomp: %s", why)
    if isinstance(lgreco, dict):
        lgreco = LGreCoConfig.from_dict(lgreco)
    if lgreco is not None and not isinstance(lgreco, LGreCoConfig):
        raise ValueError(f"lgreco must be an LGreCoConfig, a dict or None, got {lgreco!r}")
    return config, lgreco


def trainable(module: nn.Module, *, sparse_ok: bool = False) -> list[tuple[str, torch.Tensor]]:
    """``(name, parameter)`` of every parameter that needs a gradient, in
    ``named_parameters()`` order; ValueError, naming the parameter, for what compressed averaging
    cannot take: complex parameters (the compressors work on real matrices; keep such a weight
    as ``torch.view_as_real``) and, unless ``sparse_ok``, sparse gradients (an
    ``nn.Embedding``/``EmbeddingBag`` with ``sparse=True``: every method needs the dense
    gradient)."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    for name, p in named:
        if p.is_complex():
            raise ValueError(f"parameter {name!r} is {p.dtype}: complex parameters are not "
                             "supported; keep it as a real tensor (torch.view_as_real)")
    if not sparse_ok:
        for prefix, m in module.named_modules():
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and \
                    m.weight.requires_grad:
                raise ValueError(f"parameter {prefix + '.weight'!r} gets sparse gradients "
                                 f"({type(m).__name__}(sparse=True)); compressed averaging "
                                 "needs dense ones: build it with sparse=False")
    return named


def settings_of(config: CompressionConfig, lgreco: LGreCoConfig | None,
                named: list[tuple[str, torch.Tensor]]) -> dict:
    """The flat dict :func:`~distcomp.comm.check_same` compares across ranks at set-up: every
    compression knob, every L-GreCo knob, and the trainable parameters' names and shapes."""
    out = dict(config.to_dict())
    if lgreco is not None:
        out.update({f"lgreco.{k}": v for k, v in asdict(lgreco).items()})
    out["parameters"] = model_fingerprint(named)
    return out
