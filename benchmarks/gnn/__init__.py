"""GNNPipe against graph parallelism: the benchmark, its ranks and its report."""
