"""Lazy re-exports for packages whose ``__init__`` must stay light (no torch at import time).

``netsift --help``, ``--version``, ``models`` and ``datasets`` read only torch-free declarations (method names
and options, the zoo, the data sets); the names that need torch are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, names: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps an attribute to the submodule defining it
    (relative, e.g. ``".bundle"``); the first access imports it and caches the value in ``namespace``."""

    def __getattr__(name: str):
        if name in names:
            value = getattr(importlib.import_module(names[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
