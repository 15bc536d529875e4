"""Child-process entry points of tests/test_first_hour.py (spawned: each child imports this module by name)."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import polars as pl


def push_unregistered(root: str, bars: pl.DataFrame, barrier: Any, results: Any) -> None:
    """Push ``bars`` from a process that never registered a feature set; report the rows, flushed on close."""
    try:
        from pitstore import Store

        barrier.wait(timeout=60)
        with Store.open(Path(root), online_url="sqlite://") as store:
            report = store.push(bars)
            results.put(("pushed", {t: rows for t, rows in report.rows.items()}))
    except BaseException:
        results.put(("error", traceback.format_exc()))
        raise
