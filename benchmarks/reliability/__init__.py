"""Soak runs of every arm, and every bad input meeting a clear error."""
