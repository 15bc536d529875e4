"""``python tests/tier_workers.py STEP ARGS...``: ``pitstore ARGS...`` (a ``tier`` run) that SIGKILLs itself at
STEP, as a power cut would (no cleanup handler runs):

* ``published``: right after an archive file is complete on disk, before its catalog row;
* ``committed``: after the archive's catalog row, before any row is deleted from PostgreSQL.

The kill points are patched in here, by the test, so the library carries no test hook."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from pitstore.cli import app
from pitstore.history import tiering
from pitstore.history.postgres import PostgresHistory
from pitstore.storage import LocalStorage


def _die(*_: Any, **__: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(step: str, args: list[str]) -> None:
    if step == "published":
        put = LocalStorage.put

        def put_then_die(self: LocalStorage, path: str, data: bytes | memoryview) -> None:
            put(self, path, data)
            if path.startswith(tiering.ARCHIVE_DIR + "/"):
                _die()

        LocalStorage.put = put_then_die  # type: ignore[method-assign]
    elif step == "committed":
        PostgresHistory.delete_versions = _die  # type: ignore[assignment,method-assign]
    else:
        raise SystemExit(f"unknown step {step!r}")
    app(args, prog_name="pitstore")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
