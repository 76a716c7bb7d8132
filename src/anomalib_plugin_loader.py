"""Load ``anomalib.models`` entry points right after anomalib imports ``anomalib.models``.

anomalib 2.7 finds models by scanning the already-imported direct subclasses of
``AnomalibModule`` (``get_model``, ``list_models`` and the jsonargparse CLI alike), and it has
no plugin entry point. Every one of those routes imports ``anomalib.models`` first, so a plugin
becomes visible everywhere if its module is imported the moment ``anomalib.models`` finishes
importing. That is what this module arranges.

It is generic: it imports the module of every entry point in the group ``anomalib.models``,
from any installed distribution, so it is the pattern anomalib itself could adopt. It uses the
standard library only and does nothing at interpreter start beyond putting a finder on
``sys.meta_path``; programs that never import anomalib never import torch because of it.

It is started by ``anomalib_featureridge.pth`` (or ``anomalib_featureridge.start`` on Python
3.15 and later, PEP 829). Set ``ANOMALIB_PLUGINS_DISABLE=1`` to switch it off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

WATCHED_MODULE = "anomalib.models"
ENTRY_POINT_GROUP = "anomalib.models"


def load_plugins(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Import the module of every entry point in ``group``; return the module names imported.

    A plugin that fails to import must not break anomalib itself, so its error becomes a warning.
    """
    from importlib.metadata import entry_points

    loaded: list[str] = []
    for entry_point in entry_points(group=group):
        try:
            importlib.import_module(entry_point.module)
        except Exception as error:
            warnings.warn(
                f"anomalib plugin {entry_point.name!r} ({entry_point.value}) failed to import: {error!r}",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            loaded.append(entry_point.module)
    return loaded


class _LoadPluginsAfterExec(importlib.abc.Loader):
    """Wrap the real loader of ``anomalib.models`` so the plugins load once it has executed."""

    def __init__(self, wrapped: importlib.abc.Loader) -> None:
        self._wrapped = wrapped

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._wrapped.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._wrapped.exec_module(module)
        load_plugins()

    def __getattr__(self, name: str) -> object:
        return getattr(self._wrapped, name)


class PluginFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that only ever intercepts ``anomalib.models``."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != WATCHED_MODULE:
            return None
        # Ask the finders behind this one, so anomalib installed in any way (editable too) is found.
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _LoadPluginsAfterExec(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder on ``sys.meta_path`` (idempotent); load at once if anomalib is already imported."""
    if os.environ.get("ANOMALIB_PLUGINS_DISABLE"):
        return
    if WATCHED_MODULE in sys.modules:
        load_plugins()
        return
    if not any(isinstance(finder, PluginFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, PluginFinder())
