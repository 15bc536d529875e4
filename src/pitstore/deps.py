"""Optional dependencies: a driver one mode needs is imported when that mode is used, and its absence is a
MissingDependencyError naming the extra to install (``import pitstore`` loads no server driver)."""

from __future__ import annotations

import importlib
from types import ModuleType

from pitstore.errors import MissingDependencyError

__all__ = ["missing", "need"]


def missing(extra: str, what: str, exc: ImportError) -> MissingDependencyError:
    """The error for ``what`` when its extra is not installed (``raise missing(...) from exc``)."""
    return MissingDependencyError(f"{what} needs pip install 'pitstore[{extra}]' ({exc})")


def need(module: str, extra: str, what: str) -> ModuleType:
    """``module`` imported, or MissingDependencyError: ``what`` needs ``pip install 'pitstore[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing(extra, what, exc) from exc
