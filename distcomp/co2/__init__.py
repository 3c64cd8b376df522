"""CO2: local updating whose outer average overlaps the next local steps (the optimizer, its
configuration, and the outer state shared across a node's ranks)."""

from distcomp.co2.config import CO2Config
from distcomp.co2.optimizer import CO2

__all__ = ["CO2", "CO2Config"]
