"""The client's optional dependencies: their absence is a MissingDependencyError naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from pitstore.errors import MissingDependencyError

__all__ = ["need"]


def need(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"pitstore.client needs {module!r}: pip install 'pitstore[client]' ({exc})") from exc
