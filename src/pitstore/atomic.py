"""Atomic publication of immutable files: temporary file in the same directory, fsync, rename, fsync dir.

A crash at any point leaves either no file under the final name or a complete one; a leftover temporary
(``.<name>.<random>.tmp``) is never read and is removed by ``gc``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["TMP_SUFFIX", "publish", "publish_bytes"]

TMP_SUFFIX = ".tmp"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(directory: Path, name: str, write: Callable[[Path], object], *, durable: bool = True) -> Path:
    """Call ``write(tmp_path)``, then make its file appear atomically as ``directory/name``; returns that path.
    ``durable=False``: no fsync, for scratch files that a crash makes useless anyway (still atomic)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    try:
        write(tmp)
        if durable:
            _fsync(tmp)
        final = directory / name
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(directory)
    return final


def publish_bytes(directory: Path, name: str, data: bytes | memoryview) -> Path:
    """Publish ``data`` as ``directory/name`` atomically."""
    return publish(directory, name, lambda p: p.write_bytes(data))
