"""Import every method module that exists, so that :func:`create_method` knows them all."""

from __future__ import annotations

import importlib

from eofm.methods.base import list_methods

#: Method modules, in the order they are imported; missing ones are skipped.
METHOD_MODULES = (
    "eofm.methods.simclr",
    "eofm.methods.mocov3",
    "eofm.methods.dino",
    "eofm.methods.mae",
    "eofm.methods.simmim",
    "eofm.methods.gfm",
    "eofm.methods.softcon",
    "eofm.methods.dense",
)


def import_all() -> list[str]:
    """Import the method modules (a module that is absent is skipped; an import error
    inside one that exists is raised) and return the registered method names."""
    for name in METHOD_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
    return list_methods()
