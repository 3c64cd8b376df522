"""Compressed gradient averaging: the compression methods (one module each in
:mod:`distcomp.compression.methods`, registered by :mod:`distcomp.compression.compressor`), the
reducer that runs them with error feedback, the Accordion-style schedule, L-GreCo's per-layer
planner, and the topology-aware three-stage reduction.

Importing this package fills the registry of methods."""

from distcomp.compression import methods  # noqa: F401
