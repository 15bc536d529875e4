"""Child-process entry points of tests/test_push_safety.py (spawned: each child imports this module by name)."""

from __future__ import annotations

import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl


def killable_fs() -> Any:
    import pitstore

    return pitstore.FeatureSet("k", [pitstore.sma(5), pitstore.rsi(3)], timeframe="1m", ttl=timedelta(hours=12))


def push_then_wait(root: str, bars: pl.DataFrame, results: Any, hold: Any) -> None:
    """Push ``bars`` (they stay buffered: live_flush_bars is large), report, then wait to be killed."""
    try:
        from pitstore import Store

        store = Store.open(Path(root), online_url="sqlite://", live_flush_bars=1_000_000)
        report = store.push(bars, feature_sets=killable_fs())
        results.put(("pushed", report.bars, report.pending_offline))
        hold.wait(timeout=120)  # the test SIGKILLs this process while it waits
    except BaseException:
        results.put(("error", traceback.format_exc()))
        raise
