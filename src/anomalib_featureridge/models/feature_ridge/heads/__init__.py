"""FeatureRidge's heads: what turns a batch's feature maps into patch scores, one file each, one registry.

A head is a :class:`~.base.Head`: the sums it fits from (mergeable, so updates and distributed fits are
exact), how it solves them, how it scores a batch of maps, and its size. The registry maps each head's
name to the module that defines it, imported on first use, so that the option declarations
(``options.py``) and ``--help`` know the names without importing torch. Adding a head is one file here,
one line in :data:`HEAD_MODULES`, and, if it reads options of its own, their declarations in ``options.py``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Head

# Each head's name and the module (in this package) whose ``HEAD`` it is.
HEAD_MODULES = {"paper": "paper", "gaussian": "gaussian", "local": "local", "two_scale": "two_scale"}
HEAD_NAMES = tuple(HEAD_MODULES)


def head_class(name: str) -> type[Head]:
    """The head registered as ``name``.

    Raises:
        ValueError: For a name that is not registered, listing the registered ones.
    """
    if name not in HEAD_MODULES:
        msg = f"head must be one of {HEAD_NAMES}, got {name!r}."
        raise ValueError(msg)
    return import_module(f".{HEAD_MODULES[name]}", __name__).HEAD
