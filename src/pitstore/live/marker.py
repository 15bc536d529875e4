"""Online rows whose bars never reached the offline tier: a marker per pushing process, reconciled when it dies.

A push serves its rows online at once and buffers the bars for the offline tier. A pushing process killed before
its flush leaves online rows computed from bars no tier stores; served as ``ok`` they would also block a resumed
feed (an older row never replaces a newer one). So each pushing process keeps a marker file, ``live/<id>.pushing``
under the store root, holding an exclusive ``flock`` for its lifetime and listing the tables and symbols it pushed.
The kernel drops the lock of a dead process (SIGKILL included): whoever opens the store's serving next finds the
marker unlocked and drops the online rows of those symbols that are newer than their stored bars (a later read
fills them from the offline tier). A marker whose process lives is left alone: its rows are its buffered bars.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from pitstore.catalog.base import Catalog
from pitstore.errors import BackendError
from pitstore.online.base import OnlineStore

__all__ = ["PushMarker", "reconcile"]

log = logging.getLogger("pitstore.live")

MARKER_DIR = "live"
_SUFFIX = ".pushing"
_TMP_GRACE_SECONDS = 60.0  # a marker's temporary file older than this was left by a process killed creating it


class PushMarker:
    """This process's marker: created on the first push, removed by a clean close."""

    def __init__(self, root: Path) -> None:
        self.directory = root / MARKER_DIR
        self.path: Path | None = None
        self._fd: int | None = None
        self._tables: set[str] = set()
        self._symbols: set[str] = set()

    def note(self, table_ids: Iterable[str], symbols: Iterable[str]) -> None:
        """Record ``symbols`` of ``table_ids`` before their rows go online (once each: pushes stay cheap)."""
        lines = [json.dumps(["t", t]) for t in table_ids if t not in self._tables]
        lines += [json.dumps(["s", s]) for s in symbols if s not in self._symbols]
        if not lines:
            return
        fd = self._fd if self._fd is not None else self._open()
        os.write(fd, ("\n".join(lines) + "\n").encode())  # unbuffered: a killed process's write is in the file
        for line in lines:
            kind, name = json.loads(line)
            (self._tables if kind == "t" else self._symbols).add(name)

    def _open(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: nobody else holds it
        # Locked before it gets the name reconcile looks for, so it is never taken for a dead process's marker.
        self.path = self.directory / f"{name}{_SUFFIX}"
        os.rename(tmp, self.path)
        self._fd = fd
        return fd

    def release(self, *, remove: bool) -> None:
        """Unlock; ``remove``: every pushed bar is stored, nothing to reconcile."""
        if self._fd is None:
            return
        if remove and self.path is not None:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd, self.path = None, None
        self._tables.clear()
        self._symbols.clear()


def reconcile(root: Path, catalog: Catalog, online: OnlineStore) -> int:
    """Drop the online rows dead pushing processes left newer than their symbols' stored bars; returns how many."""
    directory = root / MARKER_DIR
    if not directory.is_dir():
        return 0
    dropped = 0
    for path in sorted(directory.iterdir()):
        if not path.name.endswith(_SUFFIX) and not (path.name.endswith(".tmp") and _old(path)):
            continue  # a young .tmp may be a marker being created, locked an instant later
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # removed meanwhile by its process or another reconciler
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process lives
            if path.name.endswith(_SUFFIX):
                tables, symbols = _read(path)
                try:
                    dropped += _drop_newer(catalog, online, tables, symbols)
                except BackendError as exc:  # kept: the next process to open the store tries again
                    log.warning("cannot reconcile the online rows of a dead pushing process (%s): %s", path, exc)
                    continue
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return dropped


def _old(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime > _TMP_GRACE_SECONDS
    except FileNotFoundError:
        return False


def _read(path: Path) -> tuple[list[str], list[str]]:
    tables: set[str] = set()
    symbols: set[str] = set()
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line cut short by the kill
            kind, name = json.loads(line)
            (tables if kind == "t" else symbols).add(name)
    return sorted(tables), sorted(symbols)


def _drop_newer(catalog: Catalog, online: OnlineStore, tables: list[str], symbols: list[str]) -> int:
    if not tables or not symbols:
        return 0
    stored = {e.symbol: e.last_ts for e in catalog.live_bars(symbols)}
    dropped = 0
    for table_id in tables:
        rows = online.get_latest(table_id, symbols)
        newer = [s for s, r in zip(symbols, rows, strict=True)
                 if r is not None and (s not in stored or r.ts > stored[s])]
        if newer:
            log.warning("dropping online rows of %s for %d symbol(s) a dead pushing process computed from bars"
                        " that were never stored: %s", table_id, len(newer), newer[:10])
            dropped += online.delete(table_id, newer)
    return dropped
