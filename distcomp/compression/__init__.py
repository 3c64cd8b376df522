"""Compressed gradient averaging: the compressors (one module each under
:mod:`distcomp.compression.methods`, found by the registry in
:mod:`distcomp.compression.compressor`), the reducer that runs them with error feedback, the
Accordion-style schedule, L-GreCo's per-layer planner, and the topology-aware three-stage
reduction."""
