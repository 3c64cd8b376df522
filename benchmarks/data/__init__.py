"""Dataset compression: quality of the kept subsets, scale, and the report."""
