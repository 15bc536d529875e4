"""The client's optional dependencies: their absence is a MissingDependencyError naming the extra."""

from __future__ import annotations

from types import ModuleType

from pitstore.deps import need as _need

__all__ = ["need"]


def need(module: str) -> ModuleType:
    return _need(module, "client", "pitstore.client")
