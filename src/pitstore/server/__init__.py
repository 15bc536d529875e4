"""The HTTP service (``pitstore[server]``): the /v1 API over a Store, API keys, Prometheus metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pitstore.errors import MissingDependencyError

if TYPE_CHECKING:  # pitstore[server]: starlette comes with fastapi
    from starlette.types import ASGIApp

__all__ = ["create_app"]


# The arguments are forwarded unchanged (the signature checked is pitstore.server.app.create_app's).
def create_app(*args: Any, **kwargs: Any) -> ASGIApp:
    """The ASGI app (see :func:`pitstore.server.app.create_app`); needs ``pip install 'pitstore[server]'``."""
    try:
        from pitstore.server.app import create_app as create
    except ImportError as exc:
        raise MissingDependencyError(f"the HTTP service needs its extra: pip install 'pitstore[server]' ({exc})") \
            from exc
    app: ASGIApp = create(*args, **kwargs)  # pitstore.server.app.create_app: the pure-ASGI edge over FastAPI
    return app
