"""Two hosts in network namespaces over a shaped link: netbench (every method by time to
accuracy), its ranks, launcher and report, the namespaces, the link-cost probe."""
