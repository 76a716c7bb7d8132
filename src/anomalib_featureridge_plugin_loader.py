"""Load ``anomalib.models`` entry points right after anomalib imports ``anomalib.models``.

anomalib 2.7 has no plugin entry point. It finds models in three ways, and every one of them
imports ``anomalib.models`` first:

- by short name (``get_model("feature_ridge")``, ``list_models``, the CLI's ``--model NAME``):
  a scan of the already-imported direct subclasses of ``AnomalibModule``;
- by ``class_path`` without a dot (``get_model({"class_path": "FeatureRidge"})``, the benchmark
  pipeline's model grid): an attribute of the ``anomalib.models`` module;
- by a dotted ``class_path`` in ``get_model``: an import, allowed only from the modules listed in
  ``anomalib.models.ALLOWED_MODULES``.

So when ``anomalib.models`` has finished importing, this module loads every entry point of the
group ``anomalib.models`` (``name = "package.module:Class"``, from any installed distribution),
checks that it names a direct ``AnomalibModule`` subclass, makes it an attribute of
``anomalib.models`` (``from anomalib.models import FeatureRidge`` works too) and allows its
package for dotted class paths. A name that another model already uses is never overwritten and
is reported with the unambiguous dotted path. A plugin that fails to load is reported as a
warning and never breaks anomalib.

It uses the standard library only and does nothing at interpreter start beyond putting a finder
on ``sys.meta_path``, so programs that never import anomalib never import torch because of it.
It is started by ``anomalib_featureridge.pth`` (``anomalib_featureridge.start`` on Python 3.15
and later, PEP 829). Its name is specific to this distribution so that another package copying
the pattern cannot overwrite it; when several copies are installed, the first to run loads the
group and the others find it done. Set ``ANOMALIB_PLUGINS_DISABLE=1`` to switch it off.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint
from types import ModuleType

WATCHED_MODULE = "anomalib.models"
ENTRY_POINT_GROUP = "anomalib.models"
# Set on ``anomalib.models`` once its group is loaded, by this module or any copy of the pattern.
LOADED_MARKER = "__entry_point_plugins_loaded__"


def _warn(entry_point: EntryPoint, problem: str) -> None:
    warnings.warn(f"anomalib plugin {entry_point.name!r} ({entry_point.value}) {problem}", RuntimeWarning, stacklevel=3)


def _is_initialising(module_name: str) -> bool:
    """Whether ``module_name`` is part-way through its own import (the plugin imported anomalib first)."""
    spec = getattr(sys.modules.get(module_name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _allow_dotted_paths(models: ModuleType, entry_point: EntryPoint) -> None:
    """Let ``get_model`` import the plugin's package and its parents (``package.Class`` as well as the full path)."""
    allowed = getattr(models, "ALLOWED_MODULES", None)
    if isinstance(allowed, set):
        parts = entry_point.module.split(".")
        allowed.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))


def _register(models: ModuleType, entry_point: EntryPoint, model_class: object) -> bool:
    """Check the loaded object and make it reachable by every route; warn and skip what would mislead."""
    from anomalib.models.components import AnomalibModule

    if not (isinstance(model_class, type) and issubclass(model_class, AnomalibModule)):
        _warn(entry_point, f"does not name an AnomalibModule subclass (it names {model_class!r}); it is ignored.")
        return False
    name = model_class.__name__
    dotted = f"{entry_point.module}.{entry_point.attr}"
    if AnomalibModule not in model_class.__bases__:
        _warn(
            entry_point,
            f"names {name}, which does not derive from AnomalibModule directly: anomalib's name scan "
            f"(get_model({name!r}), --model {name}) cannot find it. Use the dotted path {dotted}.",
        )
    namesakes: list[object] = [
        other
        for other in AnomalibModule.__subclasses__()
        if other is not model_class and other.__name__.lower() == name.lower()
    ]
    existing = models.__dict__.get(name)
    if existing is None:
        setattr(models, name, model_class)
    elif existing is not model_class and existing not in namesakes:
        namesakes.append(existing)
    if namesakes:
        others = ", ".join(f"{getattr(o, '__module__', '?')}.{getattr(o, '__qualname__', o)}" for o in namesakes)
        _warn(
            entry_point,
            f"defines the model {name}, a name that {others} already has (anomalib.models.{name} stays "
            f"{getattr(models, name).__module__}): the short name {name!r} is ambiguous in get_model and --model. "
            f"Name this plugin's model by its dotted path, {dotted}.",
        )
    _allow_dotted_paths(models, entry_point)
    return True


def _load(models: ModuleType, entry_point: EntryPoint) -> bool:
    try:
        model_class = entry_point.load()
    except Exception as error:
        _warn(entry_point, f"failed to load: {error!r}")
        return False
    return _register(models, entry_point, model_class)


def _resolve_pending_on_access(models: ModuleType, pending: dict[str, EntryPoint]) -> None:
    """Load entry points whose module was still importing through a module ``__getattr__`` (PEP 562)."""
    previous: Callable[[str], object] | None = models.__dict__.get("__getattr__")

    def __getattr__(name: str) -> object:  # noqa: N807
        entry_point = pending.pop(name, None)
        if entry_point is not None and _load(models, entry_point) and name in models.__dict__:
            return models.__dict__[name]
        if previous is not None:
            return previous(name)
        msg = f"module {models.__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)

    models.__getattr__ = __getattr__


def load_plugins(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Load and register every entry point in ``group`` once; return the entry point names registered now.

    An entry point whose module is still being imported (a program that imports the plugin
    before anomalib) is registered on first access to ``anomalib.models.<Class>``; its class
    is in anomalib's subclass scan already, since the scan needs no attribute.
    """
    from importlib.metadata import entry_points

    models = importlib.import_module(WATCHED_MODULE)
    if getattr(models, LOADED_MARKER, False):
        return []
    setattr(models, LOADED_MARKER, True)
    registered: list[str] = []
    pending: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=group):
        try:
            importlib.import_module(entry_point.module)
        except Exception as error:
            _warn(entry_point, f"failed to import: {error!r}")
            continue
        if _is_initialising(entry_point.module):
            pending[entry_point.attr] = entry_point
            _allow_dotted_paths(models, entry_point)
        elif _load(models, entry_point):
            registered.append(entry_point.name)
    if pending:
        _resolve_pending_on_access(models, pending)
    return registered


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

    def __init__(self) -> None:
        self._searching = False

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        # A copy of this finder from another distribution asks the other finders too; the guard
        # ends that ping-pong, which would otherwise recurse without end.
        if fullname != WATCHED_MODULE or self._searching:
            return None
        self._searching = True
        try:
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
        finally:
            self._searching = False


def install() -> None:
    """Put the finder on ``sys.meta_path`` (idempotent); load at once if anomalib is already imported."""
    if os.environ.get("ANOMALIB_PLUGINS_DISABLE"):
        return
    if WATCHED_MODULE in sys.modules:
        load_plugins()
        return
    if not any(isinstance(finder, PluginFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, PluginFinder())
