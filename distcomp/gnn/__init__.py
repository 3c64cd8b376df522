"""Deep GNNs across ranks: graphs and their partitions, layers, GNNPipe's layer pipeline, graph
parallelism and the halo exchange it needs."""
