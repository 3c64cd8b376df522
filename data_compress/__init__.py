"""Dataset compression (quantization and pruning) and its offline CLI: issue #6."""
