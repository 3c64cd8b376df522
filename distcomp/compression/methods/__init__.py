"""One module per compression method, each defining one
:class:`~distcomp.compression.compressor.Compressor` subclass. Importing this package imports
every module in it, which registers every method: a new method is a new module here and
nothing else."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
