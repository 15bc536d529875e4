"""Serving through the Store: materialize, get_online (statuses, TTL, fallback), get_features across tiers, warm."""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from pitstore import FeatureSet, Store, standard_features
from pitstore.features.library import ret
from pitstore.offline.pit import micros
from pitstore.rules import to_us
from pitstore.testing import synthetic_bars
from pitstore.timeutil import parse_timeframe

NOW = datetime.now(UTC)


def _recent_bars(n_symbols: int = 6, n_bars: int = 120) -> pl.DataFrame:
    """Daily bars whose last bar closed an hour ago (fresh under the 4-day default TTL)."""
    bars = synthetic_bars(n_symbols, n_bars, start=datetime(2020, 1, 1, tzinfo=UTC))
    return bars.with_columns(pl.col("ts") + (NOW - timedelta(hours=1) - bars["ts"].max()))


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind = request.param
    options: dict[str, str] = {}
    if kind == "redis":
        options = {"online_url": request.getfixturevalue("redis_url"),
                   "online_namespace": request.getfixturevalue("namespace")}
    else:
        options = {"online_url": f"{kind}://"}
    with Store.open(tmp_path / "store", **options) as s:
        s.ingest(_recent_bars())
        s.backfill(standard_features())
        yield s
        if kind == "redis":
            s.serving.online.delete("daily_core@1")


def test_materialize_then_get_online_returns_the_last_stored_row(store: Store) -> None:
    assert store.materialize(standard_features()) == 6
    offline = store.read("daily_core").group_by("symbol", maintain_order=True).last()
    vectors = store.get_online(["S0003", "NOPE", "S0001"], "daily_core")
    assert [v.symbol for v in vectors] == ["S0003", "NOPE", "S0001"]
    assert [v.status for v in vectors] == ["ok", "unknown_symbol", "ok"]
    for v in (vectors[0], vectors[2]):
        want = offline.filter(pl.col("symbol") == v.symbol).row(0, named=True)
        assert v.ts == want["ts"]
        assert v.values == {k: want[k] for k in v.values}
    assert vectors[1].values == dict.fromkeys(vectors[0].values)


def test_get_online_selects_columns_and_returns_a_frame_when_asked(store: Store) -> None:
    store.materialize("daily_core")
    df = store.get_online(["S0001", "S0002"], ["daily_core:ret_5d", "daily_core:vol_20d"], output="polars")
    assert df.columns == ["symbol", "ts", "ret_5d", "vol_20d", "status"]
    assert df["status"].to_list() == ["ok", "ok"]
    want = store.read(["daily_core:ret_5d"], symbols=["S0002"])["ret_5d"][-1]
    assert df["ret_5d"][1] == want


def test_values_older_than_the_ttl_are_stale_never_fresh(tmp_path: Path) -> None:
    with Store.open(tmp_path, online_url="memory://") as s:
        bars = _recent_bars().with_columns(pl.col("ts") - timedelta(days=5))  # last bar 5 days and 1 h ago
        s.ingest(bars)
        fs = FeatureSet("long_ttl", [ret(5)], timeframe="1d", ttl=timedelta(days=6))
        s.backfill(standard_features())
        s.backfill(fs)
        s.materialize(standard_features())
        s.materialize(fs)
        daily = s.get_online(["S0001"], "daily_core")[0]  # default daily TTL: 4 days
        assert daily.status == "stale" and all(v is None for v in daily.values.values())
        assert daily.ts is not None
        assert s.get_online(["S0001"], "long_ttl")[0].status == "ok"  # its own TTL: 6 days
        both = s.get_online(["S0001"], ["long_ttl:ret_5", "daily_core:ret_20d"])[0]
        assert both.status == "stale"  # the worse of the two wins


# Friday 2024-01-12 16:00 in New York (the close); the next session opens Tuesday 09:30 (Monday is a holiday).
FRIDAY_CLOSE = datetime(2024, 1, 12, 21, tzinfo=UTC)
US = timedelta(microseconds=1)


@contextmanager
def _serving_at(tmp_path: Path, timeframe: str, last: datetime, n_bars: int = 80,
                lag: timedelta | None = None) -> Iterator[Callable[[datetime], str]]:
    """A store with one feature set of ``timeframe`` whose last bar is at ``last`` (nothing explicit: the
    default TTL); returns get_online's status for S0000 at a given clock time."""
    step = parse_timeframe(timeframe)
    with Store.open(tmp_path, online_url="memory://") as store:
        store.ingest(synthetic_bars(1, n_bars, timeframe=timeframe, start=last - (n_bars - 1) * step))
        fs = FeatureSet(f"tf_{timeframe}", [ret(5)], timeframe=timeframe, availability_lag=lag)
        store.backfill(fs)
        store.materialize(fs)

        def status(now: datetime) -> str:
            epoch = datetime(1970, 1, 1, tzinfo=UTC)
            vec = store.serving.get_online(["S0000"], fs.name, now_us=micros(now - epoch))[0]
            assert vec.ts == last
            return vec.status

        yield status


@pytest.mark.parametrize(("timeframe", "ttl"), [("1m", timedelta(minutes=2)), ("5m", timedelta(minutes=10)),
                                                ("1h", timedelta(hours=2)), ("1d", timedelta(days=4)),
                                                ("1w", timedelta(days=16))])
def test_default_online_ttl_follows_the_timeframe(tmp_path: Path, timeframe: str, ttl: timedelta) -> None:
    """No TTL given: the online TTL is 2 bar spacings (plus 2 days for daily and longer), exactly."""
    with _serving_at(tmp_path, timeframe, FRIDAY_CLOSE) as status:
        assert status(FRIDAY_CLOSE + ttl) == "ok"
        assert status(FRIDAY_CLOSE + ttl + US) == "stale"


def test_hourly_value_is_fresh_until_the_next_bar_is_overdue(tmp_path: Path) -> None:
    """A 1h set read 55 minutes after its bar closed is fresh (a 5-minute default made it stale 55 minutes of
    every hour), and after one missed bar too."""
    with _serving_at(tmp_path, "1h", FRIDAY_CLOSE) as status:
        assert status(FRIDAY_CLOSE + timedelta(minutes=55)) == "ok"
        assert status(FRIDAY_CLOSE + timedelta(minutes=115)) == "ok"


def test_daily_close_is_fresh_at_the_next_open_after_a_long_weekend(tmp_path: Path) -> None:
    """Friday's daily close is served at Monday's open, and at Tuesday's after a Monday holiday (a 24 h
    default made it stale at Monday's open while get_historical said ok)."""
    with _serving_at(tmp_path, "1d", FRIDAY_CLOSE) as status:
        assert status(datetime(2024, 1, 15, 14, 31, tzinfo=UTC)) == "ok"  # Monday 09:31 New York
        assert status(datetime(2024, 1, 16, 14, 31, tzinfo=UTC)) == "ok"  # Tuesday 09:31 New York


def test_intraday_value_is_stale_at_the_next_session(tmp_path: Path) -> None:
    """A 1m value from Friday's close is not Tuesday's price: stale at the next open (intraday TTLs do not
    span the night)."""
    with _serving_at(tmp_path, "1m", FRIDAY_CLOSE, n_bars=390) as status:
        assert status(FRIDAY_CLOSE + timedelta(minutes=1)) == "ok"
        assert status(datetime(2024, 1, 16, 14, 31, tzinfo=UTC)) == "stale"


def test_default_ttl_counts_from_when_the_row_becomes_available(tmp_path: Path) -> None:
    """With an availability lag longer than the bar spacing the default TTL still leaves rows fresh for two
    spacings once available (a TTL below the lag would make every row stale on arrival)."""
    lag = timedelta(minutes=30)
    with _serving_at(tmp_path, "5m", FRIDAY_CLOSE, lag=lag) as status:
        assert status(FRIDAY_CLOSE + lag + timedelta(minutes=10)) == "ok"
        assert status(FRIDAY_CLOSE + lag + timedelta(minutes=10) + US) == "stale"


def test_a_row_not_available_yet_is_never_served_online(tmp_path: Path) -> None:
    """The latest row before ``ts + lag``: get_online answers as of now, with the bar before (what get_features
    at now says), never the row not knowable yet and never a made-up stale."""
    lag, step = timedelta(minutes=30), timedelta(minutes=5)
    with Store.open(tmp_path, online_url="memory://") as store:
        store.ingest(synthetic_bars(1, 80, timeframe="5m", start=FRIDAY_CLOSE - 79 * step))
        store.backfill(FeatureSet("tf_5m", [ret(5)], timeframe="5m", availability_lag=lag))
        store.materialize("tf_5m")
        t = FRIDAY_CLOSE + lag - US
        before = store.serving.get_online(["S0000"], "tf_5m", now_us=to_us(t))[0]
        assert (before.status, before.ts) == ("ok", FRIDAY_CLOSE - step)
        assert before == store.get_features("S0000", t, "tf_5m")


def test_get_features_is_the_same_whichever_tier_answers(store: Store) -> None:
    """The online tier answers at or after the newest row, the offline tier before; both follow the as-of
    rule, so asking the offline tier directly gives the same answer at every time."""
    store.materialize("daily_core")
    rows = store.read("daily_core", symbols=["S0002"])
    times = rows["ts"].to_list()
    rng = random.Random(3)
    probes = [times[-1], times[-1] + timedelta(minutes=30), times[0] - timedelta(days=1)]
    probes += [t + timedelta(seconds=rng.choice([0, -1, 1])) for t in rng.sample(times, 25)]
    table = store.serving.tables("daily_core")[0]
    for t in probes:
        got = store.get_features("S0002", t, "daily_core")
        want = store.serving.router.offline_asof(table, "S0002", to_us(t))
        assert (got.status, got.ts, got.values) == (want.status, want.ts, want.values), t
        expected = rows.filter(pl.col("ts") <= t)
        if expected.is_empty():
            assert got.status == "no_data_yet"
        else:
            assert got.ts == expected["ts"][-1]


def test_online_row_older_than_stored_rows_is_not_served_as_latest(tmp_path: Path) -> None:
    """Bars appended and backfilled but not materialized: get_features must not answer from the old online row."""
    with Store.open(tmp_path, online_url="memory://") as s:
        bars = _recent_bars()
        s.ingest(bars.filter(pl.col("ts") < bars["ts"].max()))
        s.backfill(standard_features())
        s.materialize("daily_core")
        s.ingest(bars)
        s.backfill(standard_features())
        got = s.get_features("S0001", NOW, "daily_core")
        assert got.ts == bars["ts"].max()


def test_warm_loads_the_most_requested_symbols(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with Store.open(root, online_url="sqlite://") as s:
        s.ingest(_recent_bars())
        s.backfill(standard_features())
        for _ in range(3):
            s.get_online(["S0004", "S0002"], "daily_core")
        s.get_online(["S0005"], "daily_core")
    (root / "online.sqlite").unlink()  # a fresh online tier, as on a new machine at market open
    with Store.open(root, online_url="sqlite://") as s:
        assert s.warm(top=2) == 2
        got = {v.symbol: v.status for v in s.get_online(["S0004", "S0002", "S0005"], "daily_core")}
        # Warmed symbols are online already; a miss is filled from the offline tier on first read.
        assert got == {"S0004": "ok", "S0002": "ok", "S0005": "ok"}
        assert s.serving.fills == 1
        assert s.warm() == 6


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_online_tier_falls_back_to_the_offline_tier(tmp_path: Path) -> None:
    """No Redis listening: reads are answered from the offline tier with status fallback, not an error."""
    with Store.open(tmp_path, online_url=f"redis://127.0.0.1:{_closed_port()}/0") as s:
        s.ingest(_recent_bars())
        s.backfill(standard_features())
        vectors = s.get_online(["S0001", "NOPE"], "daily_core")
        assert [v.status for v in vectors] == ["fallback", "unknown_symbol"]
        want = s.read("daily_core", symbols=["S0001"]).row(-1, named=True)
        assert vectors[0].values == {k: want[k] for k in vectors[0].values}
        assert s.get_features("S0001", NOW, "daily_core").values == vectors[0].values
