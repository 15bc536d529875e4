"""An app factory for a real uvicorn process whose store judges freshness at a time the test sets.

``uvicorn clock_app:app --factory --app-dir tests``, with ``PITSTORE_ROOT``, ``PITSTORE_ONLINE_URL`` and
``CLOCK_FILE``: the store's clock
(``Serving.clock``, µs) is the integer in that file, read on every request, so a test moves time by writing
the file between two requests (no sleeping, no wall clock)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pitstore import Store
from pitstore.server import create_app


def app() -> Any:
    store = Store.open(os.environ["PITSTORE_ROOT"], online_url=os.environ["PITSTORE_ONLINE_URL"])
    clock = Path(os.environ["CLOCK_FILE"])
    store.serving.clock = lambda: int(clock.read_text())
    return create_app(store)
