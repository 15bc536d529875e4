"""Child-process entry points of tests/test_serving_failures.py (started with the ``spawn`` method, so each child
is a fresh interpreter that imports this module by name: the test directory is on the children's sys.path)."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any


def get_online_once(root: str, online_url: str, namespace: str, symbols: list[str], features: str,
                    barrier: Any, results: Any) -> None:
    """Open the store, wait at ``barrier`` with the other children, call ``get_online`` once; put
    ``(fills, [(symbol, ts, status, values repr), ...])`` or ``("error", traceback)`` on ``results``."""
    try:
        from pitstore import Store

        options: dict[str, Any] = {"online_url": online_url}
        if online_url.startswith("redis"):
            options["online_namespace"] = namespace
        with Store.open(Path(root), **options) as store:
            store.serving.tables(features)  # resolve (catalog reads) before the barrier: only the fill races
            barrier.wait(timeout=120)
            vectors = store.get_online(symbols, features)
            fills = store.serving.fills
        results.put((fills, [(v.symbol, v.ts, v.status, repr(v.values)) for v in vectors]))
    except BaseException:
        results.put(("error", traceback.format_exc()))
        raise
