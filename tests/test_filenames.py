"""Bounded, safe file names for symbols and feature-set names (issue #16): long multibyte symbols, symbols with
path characters, and old stores whose paths the catalog recorded under the previous encoding."""

from __future__ import annotations

import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from pitstore import FeatureSet, Store, ret, sma
from pitstore.filenames import MAX_COMPONENT_BYTES, safe_name
from pitstore.testing import synthetic_bars

FS = FeatureSet("names_fs", [ret(1), sma(3)], timeframe="1d")
CJK = "中" * 64  # 64 characters, the longest valid symbol: 576 bytes once percent-encoded
LATE = datetime(2030, 1, 1, tzinfo=UTC)


def _bars(*symbols: str) -> pl.DataFrame:
    one = synthetic_bars(1, 40, start=datetime(2021, 1, 1, tzinfo=UTC))
    return pl.concat([one.with_columns(symbol=pl.lit(s)) for s in symbols])


def _components(root: Path) -> list[Path]:
    return [p.relative_to(root) for p in root.rglob("*")]


# --- the function ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["AAPL", "BRK-B", "BRK.B", "a=b", "x_y", "S0001"])
def test_plain_names_are_kept(name: str) -> None:
    assert safe_name(name) == name
    assert safe_name(name, prefix="s_") == "s_" + name


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "../etc", "EUR/USD", "a\\b", "a b", "a+b", "a%b",
                                  "a~b", "C:", "NUL", "é", CJK, "🚀" * 64, "x" * 300])
def test_every_name_is_one_bounded_component(name: str) -> None:
    for prefix in ("", "s_"):
        out = safe_name(name, prefix=prefix)
        assert out not in ("", ".", "..") and not out.startswith(".")
        assert "/" not in out and "\\" not in out and "\0" not in out
        assert out.isascii() and len(out.encode()) <= MAX_COMPONENT_BYTES
        assert out.startswith(prefix)


def test_encoded_or_shortened_names_never_collide() -> None:
    names = ["", ".", "..", "%2E", "%2E.", "EUR/USD", "EUR%2FUSD", "EUR+USD", "a b", "a%20b",
             "中" * 63 + "一", "中" * 63 + "二", "x" * 299 + "a", "x" * 299 + "b"]
    for prefix in ("", "s_"):
        out = [safe_name(n, prefix=prefix) for n in names]
        assert len(set(out)) == len(names)
    # Both long ones are shortened to the same readable part; only the hash tells them apart.
    a, b = safe_name("x" * 299 + "a"), safe_name("x" * 299 + "b")
    assert a.split("+")[0] == b.split("+")[0] and a != b


def test_a_plain_symbol_keeps_the_path_older_versions_wrote(tmp_path: Path) -> None:
    """Old stores and new code agree: "AAPL" is bars/s_AAPL and features/<set>/v<N>/s_AAPL, as before."""
    with Store.open(tmp_path / "store") as store:
        store.ingest(_bars("AAPL"))
        store.backfill(FS)
        (bar,) = store.catalog.live_bars(["AAPL"])
        (feat,) = store.catalog.feature_entries(FS.name, 1, ["AAPL"])
    assert Path(bar.path).parent == Path("bars/s_AAPL")
    assert Path(feat.path).parent == Path("features/names_fs/v1/s_AAPL")


def test_an_old_store_with_the_previous_encoding_keeps_reading(tmp_path: Path) -> None:
    """pitstore before this change wrote "BRK.B" under bars/s_BRK~2EB: the catalog's recorded path is what is
    read, so such entries stay readable, and a new snapshot goes under the new name beside them."""
    root = tmp_path / "store"
    with Store.open(root) as store:
        store.ingest(_bars("BRK.B"))
        store.backfill(FS)
        before = store.read(FS.name, ["BRK.B"])
    (root / "bars" / "s_BRK.B").rename(root / "bars" / "s_BRK~2EB")
    (root / "features/names_fs/v1/s_BRK.B").rename(root / "features/names_fs/v1/s_BRK~2EB")
    with sqlite3.connect(root / "catalog.sqlite") as conn:
        for table in ("bar_entries", "feature_entries"):
            conn.execute(f"UPDATE {table} SET path = replace(path, 's_BRK.B', 's_BRK~2EB')")
    with Store.open(root) as store:
        assert store.read(FS.name, ["BRK.B"]).equals(before)
        assert store.verify().ok
        more = synthetic_bars(1, 41, start=datetime(2021, 1, 1, tzinfo=UTC)).with_columns(symbol=pl.lit("BRK.B"))
        assert store.ingest(more).appended == ["BRK.B"]
        store.backfill(FS)
        assert store.read(FS.name, ["BRK.B"]).height == before.height + 1
        (bar,) = store.catalog.live_bars(["BRK.B"])
        assert bar.path.startswith("bars/s_BRK.B/")


# --- round trips through the store ----------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", [CJK, "EUR/USD", "BRK/B", "../etc", "..", ".", "a\\b", "🚀" * 64])
def test_symbol_round_trip(tmp_path: Path, symbol: str) -> None:
    root = tmp_path / "store"
    with Store.open(root) as store:
        assert store.ingest(_bars(symbol)).new_symbols == [symbol]
        assert store.backfill(FS).full == [symbol]
        assert store.symbols() == [symbol]
        assert store.bars(symbol).height == 40
        rows = store.read(FS.name, [symbol])
        assert rows.height == 40 and rows["symbol"].unique().to_list() == [symbol]
        hist = store.get_historical(pl.DataFrame({"symbol": [symbol], "ts": [LATE]}), FS.name)
        assert hist["symbol"].to_list() == [symbol]
        assert store.get_features(symbol, LATE, FS.name).ts is not None
        computed = store.get_or_compute(symbol, store.bars(symbol), {"n": 1}, _count)
        assert computed.height == 1
        assert store.verify().ok
    _assert_flat_and_inside(tmp_path, root)


def _count(raw: pl.DataFrame, config: dict[str, int]) -> pl.DataFrame:
    return pl.DataFrame({"n": [raw.height * config["n"]]})


def _assert_flat_and_inside(tmp_path: Path, root: Path) -> None:
    """Nothing outside the root, and every data file exactly one directory below its kind's directory."""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name).resolve()
            assert path.is_relative_to(root.resolve())
            assert len(name.encode()) <= 255
            rel = path.relative_to(root.resolve())
            if rel.parts[0] in ("bars", "cache") and rel.suffix == ".parquet":
                assert len(rel.parts) == 3, rel  # bars/<symbol>/<file>
            if rel.parts[0] == "features":
                assert len(rel.parts) == 5, rel  # features/<set>/v<N>/<symbol>/<file>


def test_symbols_differing_beyond_the_cut_stay_distinct(tmp_path: Path) -> None:
    a, b = "中" * 63 + "一", "中" * 63 + "二"
    assert safe_name(a, prefix="s_") != safe_name(b, prefix="s_")
    bars = pl.concat([_bars(a), _bars(b).with_columns(pl.col("open", "high", "low", "close") * 2)])
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars)
        store.backfill(FS)
        assert sorted(store.symbols()) == sorted([a, b])
        dirs = {Path(e.path).parent for e in store.catalog.live_bars()}
        assert len(dirs) == 2
        assert store.bars(b)["close"].to_list() == (store.bars(a)["close"] * 2).to_list()
        rows = store.read(FS.name, [a, b])
        assert rows.group_by("symbol").len().sort("symbol")["len"].to_list() == [40, 40]
    _assert_flat_and_inside(tmp_path, tmp_path / "store")


def test_feature_set_names_go_through_the_same_function(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store") as store:
        store.ingest(_bars("AAA"))
        store.backfill(FS)
        (feat,) = store.catalog.feature_entries(FS.name, 1)
    assert Path(feat.path).parts[1] == safe_name(FS.name)
    shutil.rmtree(tmp_path / "store")
