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

from pitstore import tiering
from pitstore.cli import app
from pitstore.history.postgres import PostgresHistory


def _die(*_: Any, **__: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(step: str, args: list[str]) -> None:
    if step == "published":
        publish = tiering.publish_bytes

        def publish_then_die(*a: Any, **k: Any) -> None:
            publish(*a, **k)
            _die()

        tiering.publish_bytes = publish_then_die  # type: ignore[assignment]
    elif step == "committed":
        PostgresHistory.delete_versions = _die  # type: ignore[assignment,method-assign]
    else:
        raise SystemExit(f"unknown step {step!r}")
    app(args, prog_name="pitstore")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
