"""The HTTP service (``pitstore[server]``): the /v1 API over a Store, API keys, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from pitstore.errors import MissingDependencyError

__all__ = ["create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """The ASGI app (see :func:`pitstore.server.app.create_app`); needs ``pip install 'pitstore[server]'``."""
    try:
        from pitstore.server.app import create_app as create
    except ImportError as exc:
        raise MissingDependencyError(f"the HTTP service needs its extra: pip install 'pitstore[server]' ({exc})") \
            from exc
    return create(*args, **kwargs)
