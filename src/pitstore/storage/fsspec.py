"""Data on any fsspec filesystem (``s3://bucket/prefix``, ``gs://``, ``memory://`` ...).

Object stores have no rename, and need none: a PUT is atomic (an object is visible whole or not at all), and
every entry is written under a fresh name. So ``put`` writes the object, then reads back its size (HEAD) and,
where the store reports the MD5 of a single-part upload as its ETag (S3 and compatible servers), compares it
with the MD5 of what was sent; only then does the caller commit the catalog row. A writer killed before the
commit leaves an object no row references: ``gc`` removes it after the grace period.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from pitstore.errors import MissingDependencyError
from pitstore.storage.base import ObjectInfo

__all__ = ["FsspecStorage"]

_MD5_ETAG = re.compile(r"[0-9a-f]{32}")  # multipart uploads and SSE-KMS objects have other ETags: not an MD5


class FsspecStorage:
    """Files under ``url`` on the fsspec filesystem its scheme names; ``options`` go to that filesystem (e.g.
    ``{"endpoint_url": "http://127.0.0.1:9000"}`` for an S3-compatible server; fsspec's own configuration and
    the usual AWS variables apply as well)."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - the s3 extra is missing
            raise MissingDependencyError("data on object storage needs fsspec (and s3fs for s3://): "
                                         "pip install 'pitstore[s3]'") from exc
        self.url = url.rstrip("/")
        # No listings cache: other processes and machines add and delete objects all the time, and a cached
        # directory listing makes fsspec answer "no such file" for an object written since (s3fs's size/info
        # consult it before a GET).
        kwargs = {"use_listings_cache": False, **dict(options or {})}
        try:
            fs, base = fsspec.core.url_to_fs(self.url, **kwargs)
        except ImportError as exc:
            raise MissingDependencyError(f"{self.url}: {exc} (pip install 'pitstore[s3]')") from exc
        self.fs: Any = fs
        self.base = str(base).rstrip("/")

    def __repr__(self) -> str:
        return f"FsspecStorage({self.url!r})"

    def _full(self, path: str) -> str:
        return f"{self.base}/{path}"

    def local_path(self, path: str) -> Path | None:
        return None

    def put(self, path: str, data: bytes | memoryview) -> None:
        full = self._full(path)
        body = bytes(data)
        self.fs.pipe_file(full, body)
        self.fs.invalidate_cache(full)
        info = self.fs.info(full)
        problem = None
        if int(info["size"]) != len(body):
            problem = f"stored {info['size']} bytes of {len(body)}"
        else:
            etag = str(info.get("ETag", "")).strip('"').lower()
            if _MD5_ETAG.fullmatch(etag) and etag != hashlib.md5(body, usedforsecurity=False).hexdigest():
                problem = "the stored object's MD5 (ETag) is not that of the bytes sent"
        if problem is not None:
            self.delete(path)
            raise OSError(f"{self.url}/{path}: {problem}")

    def read(self, path: str) -> bytes:
        data: bytes = self.fs.cat_file(self._full(path))
        return data

    def read_many(self, paths: Sequence[str]) -> list[bytes]:
        if len(paths) <= 1:
            return [self.read(p) for p in paths]
        full = [self._full(p) for p in paths]
        got: dict[str, bytes] = self.fs.cat(full, on_error="raise")  # concurrent on async filesystems (s3fs)
        return [got[f] for f in full]

    def read_buffer(self, path: str) -> pa.Buffer:
        return pa.py_buffer(self.read(path))

    def size(self, path: str) -> int | None:
        full = self._full(path)
        self.fs.invalidate_cache(full)  # another machine may have deleted or written it since
        try:
            return int(self.fs.info(full)["size"])
        except FileNotFoundError:
            return None

    def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # deleting what is gone is done
            self.fs.rm_file(self._full(path))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        top = self._full(prefix)
        self.fs.invalidate_cache(top)
        found: dict[str, dict[str, Any]] = self.fs.find(top, detail=True)
        for name, info in found.items():
            if info.get("type") == "directory":
                continue
            rel = name[len(self.base) + 1:] if name.startswith(self.base + "/") else name
            if any(part.startswith(".") for part in rel.split("/")[:-1]):
                continue  # hidden directories hold local state, never data (as LocalStorage)
            yield ObjectInfo(rel, int(info.get("size", 0)), _mtime(info))


def _mtime(info: Mapping[str, Any]) -> float:
    """Modification time of a listing row (S3: LastModified; local-like filesystems: mtime or created)."""
    for key in ("LastModified", "mtime", "created", "last_modified"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return datetime.fromisoformat(value).timestamp()
    return 0.0  # unknown: treated as old, so gc's grace period cannot protect it (no such filesystem in use)
