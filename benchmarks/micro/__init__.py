"""One process, no network: compressors, the planner, the GPU."""
