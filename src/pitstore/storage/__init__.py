"""Data backends: where a store's files live (a local directory, or any fsspec filesystem such as S3)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pitstore.errors import ConfigError
from pitstore.storage.base import ObjectInfo, Storage
from pitstore.storage.local import LocalStorage

__all__ = ["LocalStorage", "ObjectInfo", "Storage", "as_storage", "open_storage"]

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+)://")


def open_storage(data_url: str | None, root: Path, options: Mapping[str, Any] | None = None) -> Storage:
    """The backend of ``data_url``: None (the store root), a local path or ``file://`` URL (that directory), or
    any other URL an fsspec filesystem serves (``s3://bucket/prefix``)."""
    if not data_url:
        return LocalStorage(root)
    match = _URL.match(data_url)
    if match is None:
        return LocalStorage(Path(data_url).expanduser())
    if match["scheme"].lower() == "file":
        parts = urlsplit(data_url)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigError(f"data_url {data_url!r}: a file:// URL must be a local absolute path (file:///path)")
        return LocalStorage(Path(unquote(parts.path)))
    from pitstore.storage.fsspec import FsspecStorage  # fsspec only when object storage is used

    return FsspecStorage(data_url, options)


def as_storage(data: Storage | Path) -> Storage:
    """``data`` as a backend: a Path is the local directory of an embedded store (callers that predate backends)."""
    return LocalStorage(data) if isinstance(data, Path) else data
