"""The history-backend conformance suite: what every :class:`pitstore.history.base.HistoryBackend` answers, the
same way (DESIGN section 2's as-of rule, bitemporal versions, tombstones, store scopes).

A backend's test module subclasses :class:`HistoryConformance` and provides ``opener``: a function that opens a
new instance on one store's backend each call (``scope``: a :class:`StoreScope`, None for the unscoped tables; a
second call is another process's view of the same rows) and closes what it opened at teardown. ``history`` is an
unscoped, migrated instance. Imports pytest and hypothesis: for test modules only (``pitstore`` never imports it).
"""

from __future__ import annotations

import itertools
import math
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, cast

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pitstore.errors import (
    BackendError,
    ConfigError,
    ConflictError,
    DefinitionError,
    InvalidInputError,
    SchemaMismatchError,
)
from pitstore.history.base import HistoryBackend, StoreScope

__all__ = ["HistoryConformance", "Opener", "scope"]

Opener = Callable[..., HistoryBackend]
TS = pa.timestamp("us", tz="UTC")
DAY = 86_400_000_000
T0 = 1_700_000_000_000_000  # 2023-11-14, µs
# Versions PostgresHistory's first as-of seek reads (tests/test_history_postgres.py checks they agree): runs of
# tombstones longer than this take its slower path, which the suite must reach.
SEEK_ROWS = 4


def scope(store_id: str, fingerprints: dict[str, str], adopt: bool = False) -> StoreScope:
    """A store's scope whose versions have ``fingerprints`` (table_id -> fingerprint)."""
    return StoreScope(store_id, fingerprints.get, lambda _table_id: adopt)


WEIRD_SYMBOLS = ["EUR/USD", "a'b", "é", "x" * 64, 'quo"te', " sp ", "ES=F", "back\\slash", "comma,sym", "NULL",
                 "\\.", "../..", "日本", "%s", "{1}"]


def _rows(symbols: list[str], ts: list[int], **cols: Sequence[float | None]) -> pa.Table:
    return pa.table({"symbol": pa.array(symbols, pa.string()), "ts": pa.array(ts, pa.int64()),
                     **{k: pa.array(v, pa.float64()) for k, v in cols.items()}})


def _bits(value: float | None) -> object:
    """Comparable form of a float that tells NaN from null and -0.0 from 0.0 (NaN payloads are not kept)."""
    if value is None:
        return None
    return "nan" if math.isnan(value) else struct.pack("<d", value)


def _same(a: Any, b: Any) -> bool:
    """Equal as (ts, values) results, NaN equal to NaN."""
    if a is None or b is None:
        return a is b
    return bool(a[0] == b[0] and [_bits(v) for v in a[1]] == [_bits(v) for v in b[1]])


def _stored(history: HistoryBackend, table_id: str, symbol: str) -> list[tuple[int, int, bool, Any]]:
    """Every stored version of ``symbol``: (ts, recorded_at, tombstone, x)."""
    scanned = history.scan(table_id, symbols=[symbol], all_versions=True)
    return list(zip(scanned["ts"].cast(pa.int64()).to_pylist(), scanned["recorded_at"].cast(pa.int64()).to_pylist(),
                    scanned["tombstone"].to_pylist(), scanned["x"].to_pylist(), strict=True))


TOMB = "tombstone"  # the value of a Version that is a tombstone


class Version(NamedTuple):
    symbol: str
    ts: int
    recorded_at: int
    value: float | str | None  # TOMB: the (symbol, ts) no longer exists as of recorded_at


def _visible(versions: list[Version], known: int | None) -> dict[tuple[str, int], Version]:
    """The rows as known at ``known``: the latest version of each (symbol, ts) then, tombstones dropped."""
    latest: dict[tuple[str, int], Version] = {}
    for v in sorted(versions, key=lambda v: v.recorded_at):
        if known is None or v.recorded_at <= known:
            latest[(v.symbol, v.ts)] = v
    return {k: v for k, v in latest.items() if v.value != TOMB}


def _expected(versions: list[Version], symbol: str, t: int, lag: int, known: int | None) -> Any:
    rows = [v for (s, ts), v in _visible(versions, known).items() if s == symbol and ts + lag <= t]
    if not rows:
        return None
    best = max(rows, key=lambda v: v.ts)
    return (best.ts, (best.value,))


def _write_versions(history: HistoryBackend, table_id: str, versions: list[Version]) -> None:
    """Store ``versions``: values by recorded_at, restatements out of order; then the tombstones in order (each is
    written only over a row live at its time, so the rows it may hide must be there first)."""
    values = [v for v in versions if v.value != TOMB]
    for rec in sorted({v.recorded_at for v in values}, reverse=True):
        batch = [v for v in values if v.recorded_at == rec]
        history.write(table_id, ["x"], _rows([v.symbol for v in batch], [v.ts for v in batch],
                                             x=[cast(float | None, v.value) for v in batch]), recorded_at=rec)
    for v in sorted((v for v in versions if v.value == TOMB), key=lambda v: v.recorded_at):
        history.write(table_id, ["x"], _rows([], [], x=[]), recorded_at=v.recorded_at,
                      replaces=[(v.symbol, v.ts, v.ts)])


_versions = st.lists(
    st.builds(Version, st.sampled_from(["A", "B", "é"]), st.integers(0, 12), st.integers(1, 4),
              st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64), st.just(TOMB))),
    max_size=25, unique_by=lambda v: (v.symbol, v.ts, v.recorded_at),
)
_queries = st.lists(
    st.tuples(st.sampled_from(["A", "B", "é", "Z"]), st.integers(-2, 16), st.integers(0, 4),
              st.one_of(st.none(), st.integers(0, 5))),
    min_size=1, max_size=12,
)
_table_ids = itertools.count()


class HistoryConformance:
    """Writes, versions, tombstones, reads and scopes of a history backend."""

    @pytest.fixture
    def opener(self) -> Iterator[Opener]:
        raise NotImplementedError("a backend's test class provides the opener fixture")

    @pytest.fixture
    def history(self, opener: Opener) -> HistoryBackend:
        h = opener()
        h.migrate()
        return h

    def test_not_migrated_then_closed(self, opener: Opener) -> None:
        fresh = opener()
        fresh.migrate()
        fresh.migrate()  # idempotent
        assert fresh.columns("fs@1") is None
        fresh.close()
        fresh.close()
        with pytest.raises(BackendError, match="closed"):
            fresh.ping()
        with pytest.raises(BackendError, match="closed"):
            fresh.asof("fs@1", "A", 0)

    def test_round_trip_keeps_null_nan_inf_and_exact_bits(self, history: HistoryBackend) -> None:
        values: list[float | None] = [None, math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308,
                                      0.1 + 0.2]
        n = len(values)
        rows = pa.table({
            "symbol": ["A"] * n,
            "ts": pa.array([T0 + i for i in range(n)], pa.int64()).cast(TS),  # timestamp input
            "x": pa.array(values, pa.float64()),
            "k": pa.array(range(n), pa.int32()),  # integer features are stored as float
        })
        assert history.write("fs@1", ["x", "k"], rows, recorded_at=T0) == n
        for i, v in enumerate(values):
            assert _same(history.asof("fs@1", "A", T0 + i), (T0 + i, (v, float(i))))
        got = history.asof_many("fs@1", ["A"] * n, [T0 + i for i in range(n)])
        assert all(_same(g, (T0 + i, (v, float(i)))) for i, (g, v) in enumerate(zip(got, values, strict=True)))
        scanned = history.scan("fs@1")
        assert scanned.schema == pa.schema([("symbol", pa.string()), ("ts", TS), ("recorded_at", TS),
                                            ("x", pa.float64()), ("k", pa.float64())])
        assert [_bits(v) for v in scanned["x"].to_pylist()] == [_bits(v) for v in values]
        assert scanned["ts"].cast(pa.int64()).to_pylist() == [T0 + i for i in range(n)]
        assert set(scanned["recorded_at"].cast(pa.int64()).to_pylist()) == {T0}

    def test_write_is_idempotent_and_restatements_are_versions(self, history: HistoryBackend) -> None:
        rows = _rows(["A", "A", "B"], [10, 20, 10], x=[1.0, 2.0, 3.0])
        assert history.write("fs@1", ["x"], rows, recorded_at=100) == 3
        assert history.write("fs@1", ["x"], rows, recorded_at=100) == 0  # replay: nothing new
        assert history.scan("fs@1").num_rows == 3
        with pytest.raises(ConflictError, match="later recorded_at"):
            history.write("fs@1", ["x"], _rows(["A", "C"], [10, 10], x=[9.0, 9.0]), recorded_at=100)
        assert history.asof("fs@1", "C", 10) is None  # the failed write stored nothing
        assert history.write("fs@1", ["x"], _rows(["A"], [10], x=[1.5]), recorded_at=200) == 1  # restatement
        assert history.asof("fs@1", "A", 15) == (10, (1.5,))
        assert history.asof("fs@1", "A", 15, as_known_at=199) == (10, (1.0,))
        # Default recorded_at: the server's clock at each write, so a later write is a later version.
        before = time.time_ns() // 1000
        history.write("fs@1", ["x"], _rows(["A"], [10], x=[1.7]))
        history.write("fs@1", ["x"], _rows(["A"], [10], x=[1.8]))
        a10 = history.scan("fs@1", symbols=["A"], end=10)
        assert a10["x"].to_pylist() == [1.8]
        second = a10["recorded_at"].cast(pa.int64())[0].as_py()
        assert abs(second - before) < 60_000_000
        assert history.asof("fs@1", "A", 10) == (10, (1.8,))
        assert history.asof("fs@1", "A", 10, as_known_at=second - 1) == (10, (1.7,))

    def test_write_rejects_bad_rows(self, history: HistoryBackend) -> None:
        ok = _rows(["A"], [1], x=[1.0])
        with pytest.raises(InvalidInputError, match="duplicate"):
            history.write("fs@1", ["x"], _rows(["A", "A"], [1, 1], x=[1.0, 2.0]))
        with pytest.raises(InvalidInputError, match="naive"):
            history.write("fs@1", ["x"], ok.set_column(1, "ts", pa.array([1], pa.timestamp("us"))))
        with pytest.raises(InvalidInputError, match="missing column"):
            history.write("fs@1", ["x", "y"], ok)
        with pytest.raises(InvalidInputError, match="numeric"):
            history.write("fs@1", ["x"], ok.set_column(2, "x", pa.array(["1.0"])))
        with pytest.raises(InvalidInputError, match="symbol"):
            history.write("fs@1", ["x"], _rows(["a\nb"], [1], x=[1.0]))
        with pytest.raises(InvalidInputError, match="null"):
            history.write("fs@1", ["x"], pa.table({"symbol": ["A"], "ts": pa.array([None], pa.int64()), "x": [1.0]}))
        with pytest.raises(DefinitionError):
            history.write("fs@1", ["x", "x"], ok)
        with pytest.raises(DefinitionError):
            history.write("fs@1", ["ts"], ok)
        assert history.columns("fs@1") is None  # nothing above registered the table

    def test_schema_mismatch(self, history: HistoryBackend, opener: Opener) -> None:
        assert history.columns("fs@1") is None
        history.write("fs@1", ["a", "b"], _rows(["A"], [1], a=[1.0], b=[2.0]))
        assert history.columns("fs@1") == ("a", "b")
        for cols in (["a", "c"], ["b", "a"], ["a"]):
            with pytest.raises(SchemaMismatchError):
                history.write("fs@1", cols, _rows(["A"], [2], a=[1.0], b=[2.0], c=[3.0]))
        history.write("fs@2", ["a"], _rows(["A"], [1], a=[1.0]))  # another version, another column list
        assert history.columns("fs@2") == ("a",)
        # A second instance sees the same fixed list.
        other = opener()
        with pytest.raises(SchemaMismatchError):
            other.write("fs@1", ["z"], _rows(["A"], [1], z=[1.0]))

    def test_asof_edges(self, history: HistoryBackend) -> None:
        history.write("fs@1", ["x"], _rows(["A", "A", "A", "B"], [100, 200, 300, 150], x=[1.0, 2.0, 3.0, 4.0]))
        assert history.asof("fs@1", "A", 200) == (200, (2.0,))  # equality counts
        assert history.asof("fs@1", "A", 199) == (100, (1.0,))
        assert history.asof("fs@1", "A", 99) is None  # before the first row
        assert history.asof("fs@1", "A", 10**15) == (300, (3.0,))
        assert history.asof("fs@1", "A", 250, lag=50) == (200, (2.0,))  # 200 + 50 <= 250
        assert history.asof("fs@1", "A", 249, lag=50) == (100, (1.0,))
        assert history.asof("fs@1", "A", 149, lag=50) is None
        assert history.asof("fs@1", "Z", 10**15) is None  # unknown symbol
        assert history.asof("nope@1", "A", 10**15) is None  # unknown table
        assert history.asof("fs@1", "A", 300, as_known_at=0) is None  # nothing was known at 0
        assert history.asof("fs@1", "A", -(2**63), lag=2**63 - 1) is None  # the bound clamps, no overflow
        assert history.asof_many("fs@1", ["B", "A", "Z", "A"], [150, 99, 500, 300], lag=0) == [
            (150, (4.0,)), None, None, (300, (3.0,))]
        assert history.asof_many("fs@1", [], []) == []
        assert history.latest("fs@1", ["A", "Z", "B"]) == [(300, (3.0,)), None, (150, (4.0,))]
        assert history.latest("nope@1", ["A"]) == [None]
        with pytest.raises(InvalidInputError, match="lag"):
            history.asof("fs@1", "A", 300, lag=-1)
        with pytest.raises(InvalidInputError):
            history.asof("fs@1", "A", 300.0)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            history.asof_many("fs@1", ["A", "B"], [1])
        with pytest.raises(InvalidInputError):
            history.latest("fs@1", "AB")

    def test_scan_bounds_symbols_and_as_known_at(self, history: HistoryBackend) -> None:
        syms = ["b", "B", "é", "a"]
        history.write("fs@1", ["x", "y"], _rows([s for s in syms for _ in range(3)], [10, 20, 30] * 4,
                                                 x=[float(i) for i in range(12)], y=[None] * 12), recorded_at=100)
        history.write("fs@1", ["x", "y"], _rows(["a", "b"], [20, 30], x=[-1.0, -2.0], y=[7.0, 8.0]), recorded_at=200)
        full = history.scan("fs@1")
        assert full.column_names == ["symbol", "ts", "recorded_at", "x", "y"]
        keys = list(zip(full["symbol"].to_pylist(), full["ts"].cast(pa.int64()).to_pylist(), strict=True))
        assert keys == sorted((s, t) for s in syms for t in (10, 20, 30))  # code point order, one row per key
        latest = {k: (r, x) for k, r, x in zip(keys, full["recorded_at"].cast(pa.int64()).to_pylist(),
                                               full["x"].to_pylist(), strict=True)}
        assert latest[("a", 20)] == (200, -1.0) and latest[("b", 30)] == (200, -2.0) and latest[("a", 10)][0] == 100
        old = history.scan("fs@1", as_known_at=199)
        assert old.num_rows == 12 and set(old["recorded_at"].cast(pa.int64()).to_pylist()) == {100}
        assert history.scan("fs@1", as_known_at=99).num_rows == 0
        part = history.scan("fs@1", symbols=["a", "é", "zz"], start=20, end=30)  # bounds inclusive
        assert list(zip(part["symbol"].to_pylist(), part["ts"].cast(pa.int64()).to_pylist(), strict=True)) == [
            ("a", 20), ("a", 30), ("é", 20), ("é", 30)]
        assert part["y"].to_pylist() == [7.0, None, None, None]
        empty = history.scan("fs@1", symbols=[])
        assert empty.num_rows == 0 and empty.column_names == full.column_names
        assert history.scan("nope@1").column_names == ["symbol", "ts", "recorded_at"]

    def test_delete_before_and_window_start(self, history: HistoryBackend) -> None:
        assert history.window_start("fs@1") is None
        history.write("fs@1", ["x"], _rows(["A", "A", "B", "B"], [T0, T0 + DAY, T0 - DAY, T0 + 2 * DAY], x=[1.0] * 4),
                      recorded_at=1)
        history.write("fs@1", ["x"], _rows(["A"], [T0], x=[2.0]), recorded_at=2)  # a second version of A@T0
        history.write("fs@2", ["x"], _rows(["A"], [T0 - 5 * DAY], x=[1.0]), recorded_at=1)
        assert history.window_start("fs@1") == T0 - DAY
        assert history.delete_before("fs@1", T0 + DAY) == 3  # B@T0-1d and both versions of A@T0; ts is exclusive
        assert history.window_start("fs@1") == T0 + DAY
        assert history.asof("fs@1", "A", T0) is None
        assert history.asof("fs@1", "A", T0 + DAY) == (T0 + DAY, (1.0,))
        assert history.window_start("fs@2") == T0 - 5 * DAY  # other tables untouched
        assert history.delete_before("nope@1", T0) == 0
        assert history.delete_before("fs@1", 0) == 0

    def test_a_tombstone_hides_the_row_from_its_recorded_at_on(self, history: HistoryBackend) -> None:
        history.write("fs@1", ["x"], _rows(["A", "A", "A", "A", "B"], [10, 20, 30, 40, 20],
                                           x=[1.0, 2.0, 3.0, 4.0, 9.0]), recorded_at=100)
        # An entry restating A's span [15, 35] without ts 20 (and 30 unchanged): one tombstone, for A@20 only.
        assert history.write("fs@1", ["x"], _rows(["A"], [30], x=[3.0]), recorded_at=200,
                             replaces=[("A", 15, 35)]) == 2  # A@30 again, and the tombstone
        assert _stored(history, "fs@1", "A") == [(10, 100, False, 1.0), (20, 100, False, 2.0), (20, 200, True, None),
                                                  (30, 100, False, 3.0), (30, 200, False, 3.0), (40, 100, False, 4.0)]
        assert history.asof("fs@1", "A", 25) == (10, (1.0,))  # at now: gone
        assert history.asof("fs@1", "A", 20, as_known_at=200) == (10, (1.0,))
        assert history.asof("fs@1", "A", 25, as_known_at=199) == (20, (2.0,))  # known before the tombstone: there
        assert history.asof("fs@1", "B", 25) == (20, (9.0,))  # another symbol's row at that ts is untouched
        assert history.asof_many("fs@1", ["A", "A", "B"], [25, 25, 25], as_known_at=None) == [
            (10, (1.0,)), (10, (1.0,)), (20, (9.0,))]
        assert history.asof_many("fs@1", ["A"], [25], as_known_at=150) == [(20, (2.0,))]
        scanned = history.scan("fs@1", symbols=["A"])
        assert scanned["ts"].cast(pa.int64()).to_pylist() == [10, 30, 40] and "tombstone" not in scanned.column_names
        before = history.scan("fs@1", symbols=["A"], as_known_at=199)
        assert before["ts"].cast(pa.int64()).to_pylist() == [10, 20, 30, 40]
        assert history.scan("fs@1", symbols=["A"], start=20, end=20).num_rows == 0
        # Idempotent: the same write again stores nothing, the tombstone included.
        assert history.write("fs@1", ["x"], _rows(["A"], [30], x=[3.0]), recorded_at=200, replaces=[("A", 15, 35)]) == 0
        # What was known at 200 never changes: A@20 with values at 200, or A@40 absent from a span replaced at 100.
        with pytest.raises(ConflictError):
            history.write("fs@1", ["x"], _rows(["A"], [20], x=[2.0]), recorded_at=200)
        with pytest.raises(ConflictError, match="absent"):
            history.write("fs@1", ["x"], _rows(["A"], [10], x=[1.0]), recorded_at=100, replaces=[("A", 10, 40)])
        assert len(_stored(history, "fs@1", "A")) == 6  # the failed writes stored nothing
        # A later version brings the row back.
        assert history.write("fs@1", ["x"], _rows(["A"], [20], x=[2.5]), recorded_at=300) == 1
        assert history.asof("fs@1", "A", 25) == (20, (2.5,))
        assert history.asof("fs@1", "A", 25, as_known_at=299) == (10, (1.0,))

    def test_replaces_touches_only_live_rows_inside_its_spans(self, history: HistoryBackend) -> None:
        history.write("fs@1", ["x"], _rows(["A"] * 5, [10, 20, 30, 40, 50], x=[1.0, 2.0, 3.0, 4.0, 5.0]),
                      recorded_at=100)
        # An appended entry beyond every stored row: nothing to tombstone.
        assert history.write("fs@1", ["x"], _rows(["A"], [60], x=[6.0]), recorded_at=200, replaces=[("A", 60, 60)]) == 1
        # A span [20, 30] without any row: tombstones for 20 and 30, not for 10 or 40 (just outside), nor for B.
        assert history.write("fs@1", ["x"], _rows(["B"], [25], x=[0.0]), recorded_at=300, replaces=[("A", 20, 30)]) == 3
        assert [(t, r) for t, r, dead, _ in _stored(history, "fs@1", "A") if dead] == [(20, 300), (30, 300)]
        # A tombstone is written only over a row live at its recorded_at: nothing at 250 knew of A@60's absence
        # before 200... and the rows already dead at 400 get no second tombstone.
        assert history.write("fs@1", ["x"], _rows([], [], x=[]), recorded_at=150, replaces=[("A", 55, 65)]) == 0
        assert history.write("fs@1", ["x"], _rows([], [], x=[]), recorded_at=400, replaces=[("A", 15, 35)]) == 0
        assert history.latest("fs@1", ["A"]) == [(60, (6.0,))]
        with pytest.raises(InvalidInputError, match="empty span"):
            history.write("fs@1", ["x"], _rows([], [], x=[]), recorded_at=500, replaces=[("A", 30, 20)])
        with pytest.raises(InvalidInputError):
            history.write("fs@1", ["x"], _rows([], [], x=[]), recorded_at=500, replaces=[("a\nb", 1, 2)])
        with pytest.raises(DefinitionError, match="tombstone"):
            history.write("fs@2", ["tombstone"], _rows(["A"], [1], tombstone=[1.0]))

    def test_asof_steps_over_more_tombstones_than_one_seek_reads(self, history: HistoryBackend) -> None:
        """Runs of tombstones longer than the versions one seek fetches (some with older versions, which the walk
        must skip too) take the slower look-up, with the same answer."""
        n = 3 * SEEK_ROWS + 2
        history.write("fs@1", ["x"], _rows(["A"] * (n + 2), list(range(n + 2)), x=[float(t) for t in range(n + 2)]),
                      recorded_at=1)
        history.write("fs@1", ["x"], _rows(["A"] * 3, [3, 4, 5], x=[-3.0, -4.0, -5.0]), recorded_at=2)  # restated
        # A@1..n gone (n tombstones, and A@0 again): ts 0 and n + 1 stay.
        assert history.write("fs@1", ["x"], _rows(["A"], [0], x=[0.0]), recorded_at=3, replaces=[("A", 0, n)]) == n + 1
        for symbol, count in (("B", SEEK_ROWS), ("C", SEEK_ROWS - 1), ("D", 2 * SEEK_ROWS)):
            # B: exactly one seek's worth of tombstones above its first row; C: one fewer; D: all of its rows.
            keep = 0 if symbol == "D" else 1
            history.write("fs@1", ["x"], _rows([symbol] * (count + keep), list(range(count + keep)),
                                               x=[10.0] * (count + keep)), recorded_at=1)
            history.write("fs@1", ["x"], _rows([], [], x=[]), recorded_at=3, replaces=[(symbol, keep, count + keep)])
        assert history.asof("fs@1", "A", n + 1) == (n + 1, (n + 1.0,))
        for t in (n, n - 1, 5, 3, 1):
            assert history.asof("fs@1", "A", t) == (0, (0.0,)), t
            assert history.asof("fs@1", "A", t, as_known_at=2) == (t, (-t if 3 <= t <= 5 else float(t),)), t
        assert history.asof("fs@1", "A", n, as_known_at=1) == (n, (float(n),))
        assert history.asof("fs@1", "B", 100) == (0, (10.0,))
        assert history.asof("fs@1", "C", 100) == (0, (10.0,))
        assert history.asof("fs@1", "D", 100) is None
        assert history.asof("fs@1", "D", 100, as_known_at=2) == (2 * SEEK_ROWS - 1, (10.0,))
        queries = [("A", n + 1), ("A", n), ("B", 100), ("D", 100), ("C", 100), ("A", 3), ("Z", 5)]
        want = [(n + 1, (n + 1.0,)), (0, (0.0,)), (0, (10.0,)), None, (0, (10.0,)), (0, (0.0,)), None]
        assert history.asof_many("fs@1", [q[0] for q in queries], [q[1] for q in queries]) == want
        assert history.asof_many("fs@1", ["A", "D"], [n, 100], as_known_at=2) == [(n, (float(n),)),
                                                                                 (2 * SEEK_ROWS - 1, (10.0,))]
        assert history.latest("fs@1", ["D", "B", "A", "C"]) == [None, (0, (10.0,)), (n + 1, (n + 1.0,)), (0, (10.0,))]
        history.write("fs@1", ["x"], _rows([], [], x=[]), recorded_at=4, replaces=[("A", n + 1, n + 1)])
        assert history.latest("fs@1", ["A"]) == [(0, (0.0,))]  # the latest row removed: the one before it

    def test_window_start_skips_tombstoned_rows(self, history: HistoryBackend) -> None:
        history.write("fs@1", ["x"], _rows(["A", "B", "A"], [10, 10, 20], x=[1.0, 2.0, 3.0]), recorded_at=1)
        history.write("fs@1", ["x"], _rows([], [], x=[]), recorded_at=2, replaces=[("A", 10, 10)])
        assert history.window_start("fs@1") == 10  # B@10 is still there
        history.write("fs@1", ["x"], _rows([], [], x=[]), recorded_at=2, replaces=[("B", 10, 10)])
        assert history.window_start("fs@1") == 20
        history.write("fs@1", ["x"], _rows(["B"], [10], x=[2.5]), recorded_at=3)  # back again
        assert history.window_start("fs@1") == 10
        history.write("fs@1", ["x"], _rows([], [], x=[]), recorded_at=4, replaces=[("A", 0, 100), ("B", 0, 100)])
        assert history.window_start("fs@1") is None

    def test_stores_and_definitions_sharing_a_schema_never_see_each_others_rows(self, history: HistoryBackend,
                                                                                 opener: Opener) -> None:
        """Two stores' "fs@1" (two definitions) in one schema: each reads, scans, lists and deletes its own only; a
        definition of another fingerprint under the same name@version (a copied root's store id) is another table."""
        a, b = opener(scope("store-a", {"fs@1": "fp-a"})), opener(scope("store-b", {"fs@1": "fp-b"}))
        a2 = opener(scope("store-a", {"fs@1": "fp-other"}))
        assert a.write("fs@1", ["x"], _rows(["S", "S"], [10, 20], x=[1.0, 2.0]), recorded_at=1) == 2
        assert b.write("fs@1", ["y", "z"], _rows(["S"], [15], y=[-1.0], z=[-2.0]), recorded_at=1) == 1
        assert a.asof("fs@1", "S", 17) == (10, (1.0,))
        assert b.asof("fs@1", "S", 17) == (15, (-1.0, -2.0))
        assert a.latest("fs@1", ["S"]) == [(20, (2.0,))] and b.latest("fs@1", ["S"]) == [(15, (-1.0, -2.0))]
        assert a.scan("fs@1")["x"].to_pylist() == [1.0, 2.0] and a.columns("fs@1") == ("x",)
        assert a.window_start("fs@1") == 10 and b.window_start("fs@1") == 15
        assert a.tables() == b.tables() == ["fs@1"] and history.tables() == []  # unscoped: none of them
        assert history.asof("fs@1", "S", 17) is None and history.scan("fs@1").num_rows == 0
        assert a2.asof("fs@1", "S", 17) is None and a2.tables() == []
        assert a2.write("fs@1", ["w"], _rows(["S"], [12], w=[9.0]), recorded_at=1) == 1  # its own: no mismatch
        assert a2.asof("fs@1", "S", 17) == (12, (9.0,)) and a.asof("fs@1", "S", 17) == (10, (1.0,))
        assert b.delete_before("fs@1", 100) == 1 and a.asof("fs@1", "S", 17) == (10, (1.0,))
        with pytest.raises(DefinitionError, match="no such feature-set version"):
            a.write("other@1", ["x"], _rows(["S"], [1], x=[1.0]))
        assert a.asof("other@1", "S", 17) is None
        with pytest.raises(ConfigError, match="store id"):
            opener(scope("", {}))

    def test_weird_symbols_round_trip(self, history: HistoryBackend) -> None:
        n = len(WEIRD_SYMBOLS)
        history.write("fs@1", ["x"], _rows(WEIRD_SYMBOLS, [5] * n, x=[float(i) for i in range(n)]))
        assert history.latest("fs@1", WEIRD_SYMBOLS) == [(5, (float(i),)) for i in range(n)]
        assert history.asof_many("fs@1", WEIRD_SYMBOLS, [5] * n) == [(5, (float(i),)) for i in range(n)]
        for i, s in enumerate(WEIRD_SYMBOLS):
            assert history.asof("fs@1", s, 5) == (5, (float(i),))
        scanned = history.scan("fs@1", symbols=WEIRD_SYMBOLS)
        assert scanned["symbol"].to_pylist() == sorted(WEIRD_SYMBOLS)
        assert history.scan("fs@1", symbols=["a'b"])["x"].to_pylist() == [1.0]
        for bad in ("", "x" * 65, "tab\there"):
            with pytest.raises(InvalidInputError):
                history.asof("fs@1", bad, 5)

    # differing_executors: every backend's subclass runs this one method (a fresh table per example, so no
    # state is shared between them).
    @settings(max_examples=100, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors])
    @given(versions=_versions, queries=_queries, base=st.sampled_from([0, T0, -T0]), scan_known=st.integers(0, 5))
    def test_asof_matches_brute_force(self, history: HistoryBackend, versions: list[Version],
                                      queries: list[tuple[str, int, int, int | None]], base: int,
                                      scan_known: int) -> None:
        table_id = f"prop@{next(_table_ids)}"  # one schema for all examples: a fresh table each
        versions = [v._replace(ts=base + v.ts, recorded_at=base + v.recorded_at) for v in versions]
        assert history.write(table_id, ["x"], _rows([], [], x=[])) == 0  # registers the table
        _write_versions(history, table_id, versions)
        queries = [(s, base + t, lag, None if k is None else base + k) for s, t, lag, k in queries]
        for s, t, lag, known in queries:
            got_one = history.asof(table_id, s, t, lag=lag, as_known_at=known)
            assert _same(got_one, _expected(versions, s, t, lag, known))
        for known in {q[3] for q in queries}:
            lags = {q[2] for q in queries}
            for lag in lags:
                got = history.asof_many(table_id, [q[0] for q in queries], [q[1] for q in queries], lag=lag,
                                        as_known_at=known)
                want = [_expected(versions, q[0], q[1], lag, known) for q in queries]
                assert all(_same(g, w) for g, w in zip(got, want, strict=True))
        known = base + scan_known
        scanned = history.scan(table_id, as_known_at=known)
        visible = _visible(versions, known)
        want_rows = [visible[k] for k in sorted(visible)]
        assert scanned["symbol"].to_pylist() == [v.symbol for v in want_rows]
        assert scanned["ts"].cast(pa.int64()).to_pylist() == [v.ts for v in want_rows]
        assert scanned["recorded_at"].cast(pa.int64()).to_pylist() == [v.recorded_at for v in want_rows]
        assert [_bits(x) for x in scanned["x"].to_pylist()] == [_bits(cast(float | None, v.value)) for v in want_rows]
