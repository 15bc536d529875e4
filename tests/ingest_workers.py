"""Worker processes of the ingest tests (importable by spawned children)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ("A", "B/C", "D.E")  # symbols that need encoding, as file names too


def interleaved_bars(i: int, n_proc: int, n: int) -> pl.DataFrame:
    """Process ``i``'s bars: every symbol at days i, i + n_proc, ...; its close says which process wrote it."""
    days = [k * n_proc + i for k in range(n)]
    return pl.DataFrame({
        "symbol": [s for s in SYMBOLS for _ in days],
        "ts": [T0 + timedelta(days=d) for _ in SYMBOLS for d in days],
        "open": 10.0, "high": 12.0 + i, "low": 9.0, "close": 10.0 + i, "volume": 100.0 + i,
    })


def ingest_interleaved(root: str, i: int, n_proc: int, n: int, barrier: Any, results: Any) -> None:
    """Ingest this process's bars once every process is ready; put (i, retries) or (i, the error)."""
    ingest_interleaved_team(root, None, i, n_proc, n, barrier, results)


def ingest_interleaved_team(root: str, catalog_url: str | None, i: int, n_proc: int, n: int, barrier: Any,
                            results: Any) -> None:
    """:func:`ingest_interleaved` on a store whose catalog is ``catalog_url`` (None: the embedded one)."""
    import pitstore

    with pitstore.Store.open(root, catalog_url=catalog_url) as store:
        bars = interleaved_bars(i, n_proc, n)
        barrier.wait()
        try:
            results.put((i, store.ingest(bars).retries))
        except Exception as exc:  # reported to the parent, which fails the test with it
            results.put((i, f"{type(exc).__name__}: {exc}"))


def ingest_until_commit(root: str, path: str, last_symbol: str, reached: Any) -> None:
    """Ingest the bars in ``path``; at the commit that would publish ``last_symbol`` (all files written by then)
    send on the connection ``reached`` and wait there to be killed."""
    import threading

    import pitstore

    with pitstore.Store.open(root) as store:
        catalog = store.catalog
        batch, single = getattr(catalog, "commit_bars_batch", None), catalog.commit_bars

        def stop_if_last(symbols: list[str]) -> None:
            if last_symbol in symbols:
                reached.send(True)
                threading.Event().wait()  # killed here by the parent

        def commit_bars_batch(items: Any) -> Any:
            stop_if_last([e.symbol for e, _ in items])
            assert batch is not None
            return batch(items)

        def commit_bars(entry: Any, expected: Any) -> Any:
            stop_if_last([entry.symbol])
            return single(entry, expected)

        catalog.commit_bars_batch = commit_bars_batch  # type: ignore[method-assign]
        catalog.commit_bars = commit_bars  # type: ignore[method-assign]
        store.ingest(path)
