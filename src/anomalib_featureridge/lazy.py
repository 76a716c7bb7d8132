"""Names a package exports but imports on first access (PEP 562), so that importing it stays light.

``anomalib-featureridge --help``, the data helpers and the option declarations must start without
torch and anomalib; the models load only when one of their names is used.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, homes: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose names ``homes`` maps to a (relative) module each."""

    def __getattr__(name: str) -> object:  # noqa: N807
        home = homes.get(name)
        if home is None:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg)
        value = getattr(import_module(home, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted({*vars(sys.modules[package]), *homes})

    return __getattr__, __dir__
