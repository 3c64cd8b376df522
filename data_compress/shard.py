"""Sharding ``distcomp-data`` over MPI ranks (``mpirun -n K distcomp-data embed|prune ...``).

Under ``mpirun`` with more than one rank (mpi4py installed: the ``mpi`` extra), ``embed`` splits
the rows into K contiguous shards, each rank embeds its own and rank 0 gathers them in order;
``prune`` with a training-dynamics score runs K independent probe trainings (seed, seed + 1,
...), one per rank, and rank 0 averages their scores, as EL2N and GraNd are meant to be averaged
over runs, in the wall time of one. Only rank 0 reads the arguments' outputs and writes; the
other ranks return 0 after their share. Without MPI (or with one rank) everything is local.
"""

from __future__ import annotations

import os

import numpy as np

_MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


class Shards:
    """rank / size of the MPI world (0 / 1 when not launched by mpirun)."""

    def __init__(self) -> None:
        self.comm = None
        self.rank, self.size = 0, 1
        if any(int(os.environ.get(v, "1")) > 1 for v in _MPI_SIZE_VARS):
            try:
                from mpi4py import MPI
            except ImportError as err:
                raise RuntimeError("launched under mpirun but mpi4py is not installed: "
                                   "pip install 'distcomp[mpi]'") from err
            self.comm = MPI.COMM_WORLD
            self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    @property
    def root(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's contiguous share of n rows (sizes differ by at most one)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def gather(self, local: np.ndarray) -> np.ndarray | None:
        """Concatenate every rank's array in rank order on rank 0 (None elsewhere)."""
        if self.comm is None:
            return local
        parts = self.comm.gather(local, root=0)
        return np.concatenate(parts) if self.root else None

    def mean(self, local: np.ndarray) -> np.ndarray | None:
        """Elementwise mean of every rank's array, on rank 0 (None elsewhere)."""
        if self.comm is None:
            return local
        parts = self.comm.gather(local, root=0)
        return np.mean(parts, axis=0) if self.root else None
