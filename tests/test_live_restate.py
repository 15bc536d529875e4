"""Restatements in live pushes: a corrected older bar never blocks the newer bars that follow it. After a
restatement, a new bar is computed and served as the latest, and what is stored after a flush equals a batch
backfill of the same final bars, bit for bit, however old the restated bar is."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from test_history_tier import _delete_tables

import pitstore
import pitstore.live.engine
import pitstore.sources.ingest
from pitstore import FeatureSet, Store
from pitstore.testing import synthetic_bars

# T, the latest bar pushed: a minute ago, so that the next bar (T+1) is no later than now and served "ok".
T = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
MINUTE = timedelta(minutes=1)
TABLE = "restate@1"


def _fs() -> FeatureSet:
    # Window, recursive and TA-Lib features: the three ways live rows are computed. A TTL of hours keeps
    # "ok" meaning "ok" however long the suite runs before these tests.
    features = [pitstore.ret(), pitstore.sma(5), pitstore.ema(5), pitstore.rsi(3), pitstore.talib("ADX")]
    return FeatureSet("restate", features, timeframe="1m", ttl=timedelta(hours=12))


def _bars(n_bars: int, extra: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Two symbols' 1-minute bars ending at T, and the next ``extra`` minutes of the walk."""
    full = synthetic_bars(2, n_bars + extra, timeframe="1m", start=datetime(2024, 1, 2, tzinfo=UTC), seed=7)
    last = full["ts"].max()
    assert isinstance(last, datetime)
    full = full.with_columns(pl.col("ts") + (T + extra * MINUTE - last))
    return full.filter(pl.col("ts") <= T), full.filter(pl.col("ts") > T)


def _corrected(bars: pl.DataFrame, symbol: str, ts: datetime) -> pl.DataFrame:
    """The bar of ``symbol`` at ``ts`` with a different close (high and low kept consistent)."""
    bar = bars.filter((pl.col("symbol") == symbol) & (pl.col("ts") == ts))
    assert bar.height == 1
    close = pl.col("close") * 1.03
    return bar.with_columns(close.alias("close"), pl.max_horizontal("high", close).alias("high"),
                            pl.min_horizontal("low", close).alias("low"))


def _replace(bars: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([bars.join(new, on=["symbol", "ts"], how="anti"), new]).sort("symbol", "ts")


def _batch(root: Path, bars: pl.DataFrame, fs: FeatureSet) -> pl.DataFrame:
    """The rows a batch ingest and backfill of ``bars`` store."""
    with Store.open(root, online_url="memory://") as s:
        s.ingest(bars)
        s.backfill(fs)
        out: pl.DataFrame = s.read(fs.name)
        return out


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.fixture
def pushed(tmp_path: Path) -> Iterator[tuple[Store, FeatureSet, pl.DataFrame, pl.DataFrame]]:
    """History stored and backfilled up to T-1, then the bars of T pushed."""
    fs = _fs()
    bars, more = _bars(200, 1)
    with Store.open(tmp_path / "live", online_url="sqlite://") as s:
        s.ingest(bars.filter(pl.col("ts") < T))
        s.backfill(fs)
        s.materialize(fs)
        report = s.push(bars.filter(pl.col("ts") == T))
        assert report.bars == 2 and not report.restated
        yield s, fs, bars, more


@pytest.mark.parametrize("flush_between", [False, True])
def test_a_new_bar_after_a_restatement_is_served_as_the_latest(
    pushed: tuple[Store, FeatureSet, pl.DataFrame, pl.DataFrame], tmp_path: Path, flush_between: bool,
) -> None:
    """Push T, push a correction of T-5, push T+1: the online row is the one of T+1, computed from the
    corrected history, and the stored rows equal a batch backfill of the final bars."""
    s, fs, bars, more = pushed
    fixed = _corrected(bars, "S0001", T - 5 * MINUTE)
    report = s.push(fixed)
    assert report.restated == {"S0001": 1} and report.bars == 0
    if flush_between:
        s.flush()

    report = s.push(more)
    assert report.bars == 2 and not report.restated and report.duplicates == 0
    final = _replace(pl.concat([bars, more]), fixed)
    want = _batch(tmp_path / "batch", final, fs)
    assert report.rows[TABLE].equals(want.filter(pl.col("ts") > T))
    for row in s.get_online(["S0000", "S0001"], fs.name):
        assert row.status == "ok" and row.ts == T + MINUTE
        last = want.filter(pl.col("symbol") == row.symbol).row(-1, named=True)
        assert row.values == {c: last[c] for c in fs.columns}
    assert s.flush() == 2  # the bars of T+1; T was stored by the restatement or the flush
    assert s.read(fs.name).equals(want)
    assert s.bars("S0001").equals(final.filter(pl.col("symbol") == "S0001"))


def test_a_restatement_and_a_new_bar_in_one_push_serve_the_new_bar(
    pushed: tuple[Store, FeatureSet, pl.DataFrame, pl.DataFrame], tmp_path: Path,
) -> None:
    """One push with a correction of T-5 and the bar of T+1 of the same symbol: T+1 is the latest online."""
    s, fs, bars, more = pushed
    fixed = _corrected(bars, "S0000", T - 5 * MINUTE)
    report = s.push(pl.concat([more.filter(pl.col("symbol") == "S0000"), fixed]))
    assert report.restated == {"S0000": 1}
    final = _replace(pl.concat([bars, more.filter(pl.col("symbol") == "S0000")]), fixed)
    want = _batch(tmp_path / "batch", final, fs)
    assert report.rows[TABLE].equals(
        want.filter((pl.col("symbol") == "S0000") & (pl.col("ts") >= T - 5 * MINUTE)))
    online = s.serving.online.get_latest(TABLE, ["S0000"])[0]
    assert online is not None and online.ts == _us(T + MINUTE)
    s.flush()
    assert s.read(fs.name).equals(want)


def test_a_restatement_older_than_the_first_stored_bar_and_the_history_window(tmp_path: Path) -> None:
    """A correction far in the past (older than any history window, here a bar before the first stored one
    and one in the middle): the symbol is recomputed from its full corrected history, the latest online row
    keeps its ts, the next bar is computed from the corrected state."""
    fs = _fs()
    bars, more = _bars(3000, 1)  # two days of minutes
    first = bars["ts"].min()
    assert isinstance(first, datetime)
    with Store.open(tmp_path / "live", online_url="sqlite://", history_days=1) as s:
        bars = bars.filter((pl.col("symbol") == "S0001") | (pl.col("ts") > first))
        s.ingest(bars.filter(pl.col("ts") > first))
        s.backfill(fs)
        s.materialize(fs)
        old = _corrected(bars, "S0001", first + 100 * MINUTE)
        report = s.push(pl.concat([bars.filter((pl.col("symbol") == "S0001") & (pl.col("ts") == first)), old]))
        assert report.restated == {"S0001": 1}
        final = _replace(bars, old)
        want = _batch(tmp_path / "batch", final, fs)
        assert report.rows[TABLE].equals(want.filter(pl.col("symbol") == "S0001"))
        online = s.serving.online.get_latest(TABLE, ["S0001"])[0]
        assert online is not None and online.ts == _us(T)

        report = s.push(more)
        final = pl.concat([final, more]).sort("symbol", "ts")
        want = _batch(tmp_path / "batch2", final, fs)
        assert report.rows[TABLE].equals(want.filter(pl.col("ts") > T))
        s.flush()
        assert s.read(fs.name).equals(want)


def test_a_restatement_older_than_the_history_window(tmp_path: Path, postgres_url: str, namespace: str) -> None:
    """With the history tier (real PostgreSQL, a 1-day window): a correction of a bar older than the window
    recomputes the symbol offline; the history tier gets the recomputed rows inside its window (they change
    too: EMA and RSI carry the correction forward), the older ones are read from the offline tier."""
    fs = FeatureSet(f"{namespace}_r", _fs().features, timeframe="1m", ttl=timedelta(hours=12))
    table = f"{fs.name}@1"
    bars, more = _bars(3000, 1)  # two days of minutes
    at = T - timedelta(days=1) - 2 * MINUTE  # just before the window of the latest bar
    inside = at + 5 * MINUTE
    old = _corrected(bars, "S0001", at)
    final = _replace(bars, old)
    want = _batch(tmp_path / "batch", final, fs)
    try:
        with Store.open(tmp_path / "live", online_url="sqlite://", postgres_url=postgres_url, history_days=1) as s:
            s.ingest(bars)
            s.backfill(fs)
            s.materialize(fs)
            history = s.serving.history
            assert history is not None
            before = history.asof(table, "S0001", _us(inside), 0)
            report = s.push(old)
            assert report.restated == {"S0001": 1}
            assert report.rows[table].equals(want.filter((pl.col("symbol") == "S0001") & (pl.col("ts") >= at)))
            row = want.filter((pl.col("symbol") == "S0001") & (pl.col("ts") == inside)).row(0, named=True)
            after = history.asof(table, "S0001", _us(inside), 0)
            assert after == (_us(inside), tuple(row[c] for c in fs.columns)) and after != before
            assert history.asof(table, "S0001", _us(at), 0) is None  # outside the window: never copied
            row = want.filter((pl.col("symbol") == "S0001") & (pl.col("ts") == at)).row(0, named=True)
            assert s.get_features("S0001", at, fs.name).values == {c: row[c] for c in fs.columns}

            report = s.push(more)
            want = _batch(tmp_path / "batch2", pl.concat([final, more]).sort("symbol", "ts"), fs)
            assert report.rows[table].equals(want.filter(pl.col("ts") > T))
            s.flush()
            assert s.read(fs.name).equals(want)
    finally:
        _delete_tables(postgres_url, namespace + "_")


def test_a_restatement_keeps_a_concurrent_correction_between_its_bars(
    pushed: tuple[Store, FeatureSet, pl.DataFrame, pl.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Corrections of T-10 and T-2 pushed while another writer corrects T-6, just before the push's ingest:
    the push stores only its own bars (ingest overlays them), so the other correction is kept, not reverted
    to the bar read before it."""
    s, fs, bars, _ = pushed
    pushed_fix = pl.concat([_corrected(bars, "S0001", T - k * MINUTE) for k in (10, 2)])
    other_fix = _corrected(bars, "S0001", T - 6 * MINUTE)
    real = pitstore.sources.ingest.ingest

    def racing(root: Path, catalog: object, new: pl.DataFrame, **kwargs: object) -> object:
        if new["ts"].is_in(pushed_fix["ts"].implode()).any():  # the restatement's ingest, not the flush
            real(root, s.catalog, other_fix)  # the other writer commits first
        return real(root, catalog, new, **kwargs)  # type: ignore[arg-type]

    # White-box: the race is injected inside the engine's own ingest call (no public hook runs between its steps).
    monkeypatch.setattr(pitstore.live.engine._ingest, "ingest", racing)
    report = s.push(pushed_fix)
    assert report.restated == {"S0001": 2}
    final = _replace(bars, pl.concat([pushed_fix, other_fix]))
    assert s.bars("S0001").equals(final.filter(pl.col("symbol") == "S0001"))
    monkeypatch.undo()
    s.backfill(fs)  # the other writer's correction, recomputed as its own ingest would have it
    assert s.read(fs.name).equals(_batch(tmp_path / "batch", final, fs))
