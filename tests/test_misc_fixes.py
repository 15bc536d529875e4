"""Smaller gaps (issue #16) and correctness items of #19: online frames keep their dtypes, one status vocabulary
for point-in-time reads, bar-based names and annualisation of the standard features, the conventions table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import pitstore
from pitstore import FeatureSet, Store, ret, sma
from pitstore.features.registry import definition
from pitstore.fingerprint import canonical_json, sha256_hex
from pitstore.testing import synthetic_bars

NOW = datetime.now(UTC)
FS = FeatureSet("online_fs", [ret(1), sma(3)], timeframe="1d")  # default online TTL: 4 days


def _bars_ending(symbol: str, last: datetime) -> pl.DataFrame:
    bars = synthetic_bars(1, 30, start=datetime(2020, 1, 1, tzinfo=UTC)).with_columns(symbol=pl.lit(symbol))
    return bars.with_columns(pl.col("ts") + (last - bars["ts"].max()))


# --- get_online(output=...) keeps the features' dtype ------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def online_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store whose online tier holds FRESH (last bar an hour ago) and OLD (last bar 10 days ago)."""
    if request.param == "redis":
        options = {"online_url": request.getfixturevalue("redis_url"),
                   "online_namespace": request.getfixturevalue("namespace")}
    else:
        options = {"online_url": f"{request.param}://"}
    with Store.open(tmp_path / "store", **options) as store:
        store.ingest(pl.concat([_bars_ending("FRESH", NOW - timedelta(hours=1)),
                                _bars_ending("OLD", NOW - timedelta(days=10))]))
        store.backfill(FS)
        store.materialize(FS)
        yield store
        if request.param == "redis":
            store.serving.online.delete("online_fs@1")


@pytest.mark.parametrize(("symbols", "statuses"), [
    (["NOPE", "NADA"], ["unknown_symbol", "unknown_symbol"]),
    (["OLD", "OLD"], ["stale", "stale"]),
    (["OLD", "NOPE", "FRESH"], ["stale", "unknown_symbol", "ok"]),
], ids=["all-missing", "all-stale", "mixed"])
def test_get_online_frame_keeps_float64_when_values_are_stale_or_missing(
        online_store: Store, symbols: list[str], statuses: list[str]) -> None:
    """A batch whose values are all null (stale or missing) still has Float64 feature columns, not Null."""
    df = online_store.get_online(symbols, "online_fs", output="polars")
    assert df.schema == pl.Schema({"symbol": pl.String, "ts": pl.Datetime("us", "UTC"), "ret_1": pl.Float64,
                                   "sma_3": pl.Float64, "status": pl.String})
    assert df["status"].to_list() == statuses
    fresh = df.filter(pl.col("status") == "ok")
    assert fresh["sma_3"].null_count() == 0
    assert df.filter(pl.col("status") != "ok")["sma_3"].null_count() == len(symbols) - fresh.height
    pandas = online_store.get_online(symbols, "online_fs", output="pandas")
    assert str(pandas["ret_1"].dtype) == "float64"


# --- one status vocabulary for point-in-time reads ------------------------------------------------------------


def test_get_features_says_what_get_historical_says_for_the_same_look_up(tmp_path: Path) -> None:
    """unknown_symbol, no_data_yet, ok, stale and damaged: get_features gives get_historical's status (and values)
    for every look-up, whichever situation it is."""
    fs = FeatureSet("pit_fs", [ret(1), sma(3)], timeframe="1d", ttl=timedelta(days=3))
    bars = synthetic_bars(2, 40, start=datetime(2020, 1, 1, tzinfo=UTC))
    first, last = bars["ts"].min(), bars["ts"].max()
    probes = [("S0000", first - timedelta(days=1)), ("S0000", first), ("S0000", last),
              ("S0000", last + timedelta(days=5)), ("NOPE", last), ("S0001", last)]
    with Store.open(tmp_path / "store", online_url="memory://") as store:
        store.ingest(bars)
        store.backfill(fs)
        (store.root / store.catalog.feature_entries("pit_fs", 1, ["S0001"])[0].path).unlink()  # S0001: damaged
        entities = pl.DataFrame({"symbol": [s for s, _ in probes], "ts": [t for _, t in probes]})
        historical = store.get_historical(entities, "pit_fs")
        want = ["no_data_yet", "ok", "ok", "stale", "unknown_symbol", "damaged"]
        assert historical["status"].to_list() == want
        for (symbol, t), row in zip(probes, historical.iter_rows(named=True), strict=True):
            got = store.get_features(symbol, t, "pit_fs")
            assert got.status == row["status"], (symbol, t)
            assert got.values == {"ret_1": row["ret_1"], "sma_3": row["sma_3"]}, (symbol, t)


# --- standard features on any timeframe -------------------------------------------------------------------------


@pytest.mark.parametrize(("timeframe", "want"), [
    ("1d", 252), ("2d", 126), ("1w", 52), ("2w", 26), ("1h", 252 * 6.5), ("4h", 252 * 6.5 / 4),
    ("5m", 252 * 6.5 * 12), ("1m", 252 * 390), ("30s", 252 * 390 * 2),
])
def test_periods_per_year_follows_the_documented_rule(timeframe: str, want: float) -> None:
    """252 sessions a year; a day bar is a session, a week bar a week, intraday bars fill 6.5-hour sessions."""
    assert pitstore.periods_per_year(timeframe) == pytest.approx(want, rel=1e-15)


def _log_return_std(close: np.ndarray, n: int) -> np.ndarray:
    """Independent reference: sample std of the last n one-bar log returns, NaN until n returns exist."""
    lr = np.log(close[1:] / close[:-1])
    out = np.full(close.shape, np.nan)
    for t in range(n, close.size):
        out[t] = np.std(lr[t - n:t], ddof=1)
    return out


@pytest.mark.parametrize(("timeframe", "override", "factor"), [
    ("1h", None, 252 * 6.5), ("5m", None, 252 * 78), ("1h", 24 * 365, 24 * 365), ("1d", None, 252),
])
def test_standard_features_annualise_by_the_timeframe(timeframe: str, override: float | None, factor: float) -> None:
    """vol_N on any timeframe = std of N one-bar log returns (ddof=1) x sqrt(periods per year of that
    timeframe, or the override); names count bars except on 1d, whose names keep their d."""
    fs = pitstore.standard_features(timeframe=timeframe, periods_per_year=override)
    unit = "d" if timeframe == "1d" else ""
    assert fs.columns == tuple(f"{k}_{n}{unit}" for k in ("ret", "vol", "mom") for n in
                               ((5, 20, 60) if k == "ret" else (20, 60)))
    bars = synthetic_bars(2, 150, timeframe=timeframe, seed=5)
    out = pitstore.compute(fs, bars)
    for symbol in ("S0000", "S0001"):
        close = bars.filter(pl.col("symbol") == symbol)["close"].to_numpy()
        got = out.filter(pl.col("symbol") == symbol)
        for n in (20, 60):
            want = _log_return_std(close, n) * np.sqrt(factor)
            np.testing.assert_allclose(got[f"vol_{n}{unit}"].to_numpy(), want, rtol=1e-10, equal_nan=True)


def test_the_daily_standard_set_keeps_its_definition_and_fingerprint() -> None:
    """Stored daily sets keep their fingerprint: the definition of standard_features() (libraries and engine
    version aside, which have their own reasons to change) is the one daily stores were registered with."""
    d = definition(pitstore.standard_features())
    d.pop("libraries")
    d.pop("engine_version")
    assert sha256_hex(canonical_json(d)) == "10478a65f7f228ea600723d6ff73ebb64d0205353664a6c5b37ce851167636fb"
    assert pitstore.fingerprint(pitstore.standard_features()) == pitstore.fingerprint(pitstore.FeatureSet(
        "daily_core", [ret(5).alias("ret_5d"), ret(20).alias("ret_20d"), ret(60).alias("ret_60d"),
                       pitstore.vol(20, 252).alias("vol_20d"), pitstore.vol(60, 252).alias("vol_60d"),
                       pitstore.mom(20).alias("mom_20d"), pitstore.mom(60).alias("mom_60d")],
        timeframe="1d", description="the seven standard return, volatility and momentum features"))
    assert pitstore.vol().name == "vol_20_252" and pitstore.vol(5, periods_per_year=409.5).name == "vol_5_409p5"


# --- docs/conventions.md, checked ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_symbol() -> tuple[dict[str, np.ndarray], pl.DataFrame]:
    bars = synthetic_bars(1, 300, seed=3)
    feats = [pitstore.ema(10), pitstore.rsi(14), pitstore.atr(14), pitstore.bollinger(20, 2.0), pitstore.vol(20),
             pitstore.mom(10), pitstore.vwap(20)]
    return {c: bars[c].to_numpy() for c in ("high", "low", "close", "volume")}, pitstore.compute(feats, bars)


def test_conventions_table_ema_is_sma_seeded_not_pandas_ewm(one_symbol: tuple[dict[str, np.ndarray], pl.DataFrame]
                                                            ) -> None:
    """ema(n): first value at bar n-1 = SMA of the first n closes; pandas ewm(adjust=False) from the first close
    differs there and agrees only after the seed has decayed; seeded with that SMA, ewm is the same recursion."""
    import pandas as pd

    a, out = one_symbol
    c, ema = a["close"], out["ema_10"].to_numpy()
    assert np.isnan(ema[:9]).all() and ema[9] == pytest.approx(c[:10].mean(), rel=1e-14)
    raw = pd.Series(c).ewm(span=10, adjust=False).mean().to_numpy()
    assert abs(raw[9] - ema[9]) > 1e-3 * ema[9]  # the seeds differ: visibly different first values
    np.testing.assert_allclose(raw[250:], ema[250:], rtol=1e-12)  # (1 - 2/11)^240: the seed has decayed
    seeded = pd.Series(np.r_[c[:10].mean(), c[10:]]).ewm(span=10, adjust=False).mean().to_numpy()
    np.testing.assert_allclose(seeded, ema[9:], rtol=1e-12)


def test_conventions_table_rsi_and_atr_seeding(one_symbol: tuple[dict[str, np.ndarray], pl.DataFrame]) -> None:
    """rsi(n) and atr(n): first value at bar n, seeded with simple means over bars 1..n, then Wilder smoothing."""
    a, out = one_symbol
    h, lo, c = a["high"], a["low"], a["close"]
    d = np.diff(c)
    gain, loss = np.clip(d, 0, None)[:14].mean(), np.clip(-d, 0, None)[:14].mean()
    rsi = out["rsi_14"].to_numpy()
    assert np.isnan(rsi[:14]).all() and rsi[14] == pytest.approx(100 * gain / (gain + loss), rel=1e-12)
    tr = np.maximum(h[1:] - lo[1:], np.maximum(abs(h[1:] - c[:-1]), abs(lo[1:] - c[:-1])))  # tr[i] is bar i+1's
    atr = out["atr_14"].to_numpy()
    assert np.isnan(atr[:14]).all() and atr[14] == pytest.approx(tr[:14].mean(), rel=1e-12)
    assert atr[15] == pytest.approx((atr[14] * 13 + tr[14]) / 14, rel=1e-12)


def test_conventions_table_bollinger_vol_mom_vwap(one_symbol: tuple[dict[str, np.ndarray], pl.DataFrame]) -> None:
    """bollinger: population std (ddof=0), not pandas rolling().std() (ddof=1); vol: ddof=1 x sqrt(252), as pandas
    rolling().std(); mom: close / SMA - 1, not TA-Lib MOM; vwap: rolling n bars of the typical price."""
    import pandas as pd
    import talib

    a, out = one_symbol
    c = a["close"]
    width = (out["bollinger_20_2_upper"] - out["bollinger_20_2_middle"]).to_numpy() / 2
    np.testing.assert_allclose(width[19:], pd.Series(c).rolling(20).std(ddof=0).to_numpy()[19:], rtol=1e-9)
    sample = pd.Series(c).rolling(20).std().to_numpy()
    np.testing.assert_allclose(sample[19:] / width[19:], np.sqrt(20 / 19), rtol=1e-9)
    log_ret = pd.Series(np.log(c)).diff()
    np.testing.assert_allclose(out["vol_20_252"].to_numpy()[20:],
                               (log_ret.rolling(20).std() * np.sqrt(252)).to_numpy()[20:], rtol=1e-9)
    mom = out["mom_10"].to_numpy()
    np.testing.assert_allclose(mom[9:], (c / pd.Series(c).rolling(10).mean() - 1).to_numpy()[9:], rtol=1e-9,
                               atol=1e-12)
    assert not np.allclose(mom[10:], talib.MOM(c, 10)[10:])  # TA-Lib MOM is close - close[t-n], in price units
    typical = (a["high"] + a["low"] + c) / 3
    window = slice(100, 120)
    assert out["vwap_20"][119] == pytest.approx(
        (typical[window] * a["volume"][window]).sum() / a["volume"][window].sum(), rel=1e-12)
