"""The embedded data backend: files under a local directory, published by temporary file, fsync and rename."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from pitstore.atomic import publish
from pitstore.storage.base import ObjectInfo

__all__ = ["LocalStorage"]


class LocalStorage:
    """Files under ``root`` (see :mod:`pitstore.atomic`: a crash leaves a complete file or a ``.tmp`` that
    ``gc`` removes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def __repr__(self) -> str:
        return f"LocalStorage({self.url!r})"

    def local_path(self, path: str) -> Path:
        return self.root / path

    def put(self, path: str, data: bytes | memoryview) -> None:
        final = self.root / path
        publish(final.parent, final.name, lambda tmp: tmp.write_bytes(data))
        # What the kernel holds after fsync is what was written: the size check catches a short write only.
        if final.stat().st_size != len(data):
            final.unlink(missing_ok=True)
            raise OSError(f"{final}: stored {final.stat().st_size} bytes of {len(data)}")

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def read_many(self, paths: Sequence[str]) -> list[bytes]:
        return [self.read(p) for p in paths]

    def read_buffer(self, path: str) -> pa.Buffer:
        return pa.memory_map(str(self.root / path)).read_buffer()

    def size(self, path: str) -> int | None:
        try:
            return (self.root / path).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, path: str) -> None:
        (self.root / path).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for dirpath, dirnames, filenames in os.walk(self.root / prefix):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                full = Path(dirpath) / name
                try:
                    st = full.stat()
                except FileNotFoundError:  # removed since the listing
                    continue
                yield ObjectInfo(str(full.relative_to(self.root)), st.st_size, st.st_mtime)
