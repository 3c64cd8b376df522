"""One module per compression method."""
