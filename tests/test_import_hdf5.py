"""``Store.import_hdf5`` / ``pitstore import-hdf5`` on genuine files written by pandas and PyTables (both legacy
layouts, fixed and table formats, deflate inside and gzip outside, a DatetimeIndex with a freq so genuine pickled
attributes exist), and the refusal of files whose pickles would run code: checked with h5py before PyTables opens
them."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import pickletools
import shutil
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

import pitstore
from pitstore import InvalidInputError, MissingDependencyError, Store
from pitstore.cli import app
from pitstore.sources.legacy.safety import pickle_problem

runner = CliRunner()


def bars_frame(n: int, seed: int, freq: str = "D", tz: str | None = "UTC") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 1, n))
    idx = pd.date_range("2024-01-01 21:00", periods=n, freq=freq, tz=tz, name="ts")
    assert idx.freq is not None  # pickled into the file as a pandas offset: a genuine pickle to allow
    return pd.DataFrame({"Open": close + 0.1, "High": close + 1, "Low": close - 1, "Close": close,
                         "Volume": rng.integers(1_000, 9_000, n).astype(float)}, index=idx)


def feature_frame(index: pd.DatetimeIndex, cols: list[str], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({c: rng.normal(0, 1, len(index)) for c in cols}, index=index)


def expected(frames: dict[str, pd.DataFrame]) -> pl.DataFrame:
    """symbol, ts and the columns of pandas frames by symbol, as polars (what get_historical must give)."""
    parts = []
    for symbol, df in frames.items():
        part = pl.from_pandas(df.reset_index().rename(columns={df.index.name or "index": "ts"}))
        parts.append(part.with_columns(pl.lit(symbol).alias("symbol"),
                                       pl.col("ts").dt.convert_time_zone("UTC").dt.cast_time_unit("us")))
    out = pl.concat(parts, how="diagonal_relaxed")
    return out.select("symbol", "ts", *[c for c in out.columns if c not in ("symbol", "ts")])


def looked_up(store: Store, want: pl.DataFrame, ref: str) -> pl.DataFrame:
    got = store.get_historical(want.select("symbol", "ts"), ref)
    assert got["status"].to_list() == ["ok"] * want.height
    return got.drop("status")


def write_hashed(directory: Path, symbol: str, bars: pd.DataFrame, features: pd.DataFrame, *,
                 key: str = "features", table: bool = False) -> Path:
    path = directory / f"{symbol}_b1686acd.h5"
    fmt = "table" if table else "fixed"
    bars.to_hdf(path, key="bars", mode="w", format=fmt, complib="zlib", complevel=6)
    features.to_hdf(path, key=key, mode="a", format=fmt, complib="zlib", complevel=6)
    return path


def partition(root: Path, name: str, symbol: str, kind: str, version: str, month: pd.Timestamp) -> Path:
    d = (root / "features" / name / f"symbol={symbol}" / f"feature_type={kind}" / f"version={version}"
         / f"year={month.year}" / f"month={month.month:02d}")
    d.mkdir(parents=True, exist_ok=True)
    return d / "data.h5"


# --- the hash-named layout: bars and features -------------------------------------------------------------------


def test_hash_named_files_import_bars_and_an_imported_feature_set(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    bars = {"AAPL": bars_frame(40, 1), "MSFT": bars_frame(40, 2)}
    feats = {s: feature_frame(b.index, ["z_20", "mom_5"], i) for i, (s, b) in enumerate(bars.items())}
    write_hashed(legacy, "AAPL", bars["AAPL"], feats["AAPL"])
    write_hashed(legacy, "MSFT", bars["MSFT"], feats["MSFT"], table=True)
    with h5py.File(legacy / "AAPL_b1686acd.h5") as f:  # genuine pickled attributes are there, and allowed
        assert b"pandas._libs.tslibs.offsets" in bytes(f["bars/axis1"].attrs["freq"])
    with Store.open(tmp_path / "store") as store:
        report = store.import_hdf5(sorted(legacy.iterdir()))
        assert report.bars is not None and sorted(report.bars.new_symbols) == ["AAPL", "MSFT"]
        for symbol, df in bars.items():
            got = store.bars(symbol)
            want = expected({symbol: df.rename(columns=str.lower)})
            assert_frame_equal(got.select(want.columns), want, check_dtypes=False)
        [v] = report.feature_sets
        assert (v.name, v.version, v.columns, v.timeframe, v.symbols) == ("legacy_b1686acd", 1, ("z_20", "mom_5"),
                                                                         "1d", 2)
        want = expected(feats)
        assert_frame_equal(looked_up(store, want, "legacy_b1686acd"), want)
        [info] = store.versions("legacy_b1686acd")
        assert info.definition["kind"] == "imported" and info.fingerprint == v.fingerprint
        assert info.symbols == 2 and info.entries == 2
        # the same files again: nothing new
        again = store.import_hdf5(sorted(legacy.iterdir()))
        assert again.feature_sets[0].version == 1 and again.feature_sets[0].written == []
        assert again.bars is not None and sorted(again.bars.unchanged) == ["AAPL", "MSFT"]
        assert store.verify().ok


def test_a_named_key_names_the_feature_set_and_naive_timestamps_need_a_zone(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    bars = bars_frame(30, 3, freq="min", tz=None)
    feats = feature_frame(bars.index, ["ema_fast"], 4)
    path = write_hashed(legacy, "ES=F", bars, feats, key="momentum")
    with Store.open(tmp_path / "store") as store:
        with pytest.raises(InvalidInputError, match="timezone-naive"):
            store.import_hdf5(path)
        assert store.symbols() == []
        report = store.import_hdf5(path, tz="America/New_York")
        [v] = report.feature_sets
        assert (v.name, v.timeframe) == ("momentum", "1m")
        local = feats.tz_localize("America/New_York")
        want = expected({"ES=F": local})
        assert_frame_equal(looked_up(store, want, "momentum:ema_fast"), want)
        assert store.bars("ES=F").height == 30


# --- the partitioned layout -------------------------------------------------------------------------------------


def test_partitioned_layout_keeps_legacy_versions_and_joins_feature_types(tmp_path: Path) -> None:
    legacy = tmp_path / "old_store"
    jan = pd.date_range("2024-01-01", "2024-01-31", freq="D", tz="UTC", name="ts")
    feb = pd.date_range("2024-02-01", "2024-02-29", freq="D", tz="UTC", name="ts")
    sources: dict[str, dict[str, pd.DataFrame]] = {"v1": {}, "v2": {}}
    for vi, version in enumerate(("v1", "v2")):
        for si, symbol in enumerate(("AAPL", "BRK.B")):
            joined = []
            for ki, (kind, cols) in enumerate((("momentum", ["mom_5", "mom_20"]), ("volatility", ["vol_20"]))):
                months = []
                for month in (jan, feb):
                    df = feature_frame(month, cols, 100 * vi + 10 * si + ki + month.month[0])
                    df.to_hdf(partition(legacy, "alpha", symbol, kind, version, month[0]), key="data", mode="w",
                              format="table" if ki else "fixed", complib="zlib", complevel=9)
                    months.append(df)
                joined.append(pd.concat(months))
            sources[version][symbol] = pd.concat(joined, axis=1)
    with Store.open(tmp_path / "store") as store:
        report = store.import_hdf5(legacy / "features")
        assert len(report.files) == 16 and report.bars is None
        assert [(v.name, v.version, v.legacy_version) for v in report.feature_sets] == [("alpha", 1, "v1"),
                                                                                       ("alpha", 2, "v2")]
        assert report.feature_sets[0].columns == ("mom_5", "mom_20", "vol_20")
        for i, version in enumerate(("v1", "v2"), start=1):
            want = expected(sources[version])
            assert_frame_equal(looked_up(store, want, f"alpha@{i}"), want)
            rows = store.read(f"alpha@{i}", symbols=["BRK.B"])
            assert_frame_equal(rows, want.filter(pl.col("symbol") == "BRK.B"))
        assert [v.version for v in store.versions("alpha")] == [1, 2]
        assert store.import_hdf5(legacy).feature_sets[1].written == []
        assert store.cleanup_versions("alpha", max_versions=1).retired == ["alpha@1"]


def test_a_gzipped_file_and_the_command_line(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    plain = write_hashed(legacy, "AAPL", bars_frame(20, 5), feature_frame(bars_frame(20, 5).index, ["f"], 6))
    with plain.open("rb") as src, gzip.open(legacy / "AAPL_b1686acd.h5.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain.unlink()
    root = tmp_path / "store"
    result = runner.invoke(app, ["import-hdf5", str(legacy), "--json", "--root", str(root)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["feature_sets"][0]["name"] == "legacy_b1686acd" and data["bars"]["new_symbols"] == ["AAPL"]
    result = runner.invoke(app, ["import-hdf5", str(legacy), "--root", str(root)])
    assert result.exit_code == 0 and "legacy_b1686acd@1" in result.output
    result = runner.invoke(app, ["get", "legacy_b1686acd:f", "--symbols", "AAPL", "--root", str(root)])
    assert result.exit_code == 0, result.output


def test_imported_rows_never_become_a_version_of_a_computed_set(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    b = bars_frame(20, 7)
    path = write_hashed(legacy, "AAPL", b, feature_frame(b.index, ["r"], 8), key="fs")
    with Store.open(tmp_path / "store") as store:
        store.register(pitstore.FeatureSet("fs", [pitstore.ret(1).alias("r")], timeframe="1d"))
        with pytest.raises(InvalidInputError, match="computed by pitstore"):
            store.import_hdf5(path)
        assert store.symbols() == []  # refused before anything was stored


# --- refusing pickles that would run code ---------------------------------------------------------------------


class _Plant:
    """Unpickled, writes the marker file: what a crafted legacy file would do on open."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def plant(path: Path, node: str, attr: str, payload: bytes) -> None:
    with h5py.File(path, "a") as f:
        f[node].attrs[attr] = np.bytes_(payload)


OPEN_WITH_PYTABLES = "import sys, pandas as pd\nwith pd.HDFStore(sys.argv[1], 'r') as s:\n    s.keys()\n"


@pytest.mark.parametrize("protocol", [0, 4])
def test_a_planted_pickle_is_refused_and_never_runs(tmp_path: Path, protocol: int) -> None:
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    good = write_hashed(legacy, "MSFT", bars_frame(10, 1), feature_frame(bars_frame(10, 1).index, ["f"], 2))
    bad = write_hashed(legacy, "AAPL", bars_frame(10, 3), feature_frame(bars_frame(10, 3).index, ["f"], 4))
    marker = tmp_path / "marker"
    plant(bad, "bars", "note", pickle.dumps(_Plant(marker), protocol))
    # The plant is live: PyTables itself (what pandas' HDFStore uses) runs it when listing the keys.
    decoy, decoy_marker = tmp_path / "decoy.h5", tmp_path / "decoy_marker"
    shutil.copyfile(bad, decoy)
    plant(decoy, "bars", "note", pickle.dumps(_Plant(decoy_marker), protocol))
    subprocess.run([sys.executable, "-c", OPEN_WITH_PYTABLES, str(decoy)], check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert decoy_marker.exists()
    with Store.open(tmp_path / "store") as store:
        with pytest.raises(InvalidInputError) as info:
            store.import_hdf5([good, bad])
        message = str(info.value)
        assert str(bad) in message and "'note'" in message and "/bars" in message
        assert "is a pickle that calls" in message  # builtins.getattr (protocol 0) or pathlib.Path.write_text
        assert not marker.exists()
        assert store.symbols() == [] and store.registry.names() == []  # the good file was not imported either
    result = runner.invoke(app, ["import-hdf5", str(bad), "--root", str(tmp_path / "store")])
    assert result.exit_code == 1 and "Traceback" not in result.output and "'note'" in result.output
    assert not marker.exists()


def test_external_links_and_pickled_data_are_refused(tmp_path: Path) -> None:
    b = bars_frame(10, 1)
    linked = write_hashed(tmp_path, "AAPL", b, feature_frame(b.index, ["f"], 2))
    with h5py.File(linked, "a") as f:
        f["elsewhere"] = h5py.ExternalLink("other.h5", "/x")
    objects = tmp_path / "MSFT_b1686acd.h5"
    with pytest.warns(pd.errors.PerformanceWarning):
        pd.DataFrame({"x": [1, "a", 2.5]}, index=b.index[:3]).to_hdf(objects, key="features", mode="w")
    with Store.open(tmp_path / "store") as store:
        with pytest.raises(InvalidInputError, match="links to another file"):
            store.import_hdf5(linked)
        with pytest.raises(InvalidInputError, match="pickled Python objects"):
            store.import_hdf5(objects)


def _hidden_global() -> bytes:
    """A protocol-4 pickle that pushes 'os', 'system', then two allowed names it pops again before STACK_GLOBAL:
    a scanner that only looked at the last strings pushed would read datetime.timedelta."""
    ops = (b"\x80\x04" + b"\x8c\x02os" + b"\x8c\x06system" + b"\x8c\x08datetime" + b"\x8c\x09timedelta"
           + b"00" + b"\x93" + b"\x8c\x04echo\x85R.")
    list(pickletools.genops(ops))  # well-formed
    return ops


def test_pickle_scanner_allows_pandas_own_types_only() -> None:
    genuine: list[Any] = [pd.offsets.Day(), pd.offsets.BusinessDay(2), pd.offsets.Week(weekday=0),
                          pd.offsets.MonthEnd(), pd.Timedelta(0).to_pytimedelta(), {"freq": pd.offsets.Hour()},
                          [("index", "ts")], None, np.dtype("float64"), UTC]
    for value in genuine:
        for protocol in (0, 2, 4):
            assert pickle_problem(pickle.dumps(value, protocol)) is None, (value, protocol)
    assert pickle_problem(pickle.dumps(_Plant(Path("x")), 0)) == "__builtin__.getattr"  # Python 2 names
    assert pickle_problem(pickle.dumps(_Plant(Path("x")), 4)) == "pathlib.Path.write_text"
    assert pickle_problem(b"cos\nsystem\n(S'echo'\ntR.") == "os.system"
    assert pickle_problem(b"cbuiltins\neval\n(S'1'\ntR.") == "builtins.eval"
    assert pickle_problem(b"(cposix\nsystem\nS'echo'\ni__main__\nx\n.") == "posix.system"
    assert pickle_problem(_hidden_global()) == "a global whose name cannot be read from the pickle"
    assert pickle_problem(b"\x80\x02\x82\x01.") == "the opcode EXT1"
    assert pickle_problem(b"Prices in USD.") is None  # text that is not a pickle


def test_missing_extra_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if not installed: importing it raises ImportError
    with Store.open(tmp_path / "store") as store, pytest.raises(MissingDependencyError,
                                                                match=r"pip install 'pitstore\[hdf5\]'"):
        store.import_hdf5(tmp_path)
    result = runner.invoke(app, ["import-hdf5", str(tmp_path), "--root", str(tmp_path / "store")])
    assert result.exit_code == 1 and "pitstore[hdf5]" in result.output


def test_push_rebuilding_sets_from_the_catalog_skips_imported_ones(tmp_path: Path) -> None:
    """A process that registered nothing pushes with every computed set of the catalog; an imported set has no
    computation, so it is left out rather than failing the push."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    b = bars_frame(30, 9)
    write_hashed(legacy, "AAPL", b, feature_frame(b.index, ["f"], 10), key="old_alpha")
    fs = pitstore.FeatureSet("rets", [pitstore.ret(1).alias("r1")], timeframe="1d")
    with Store.open(tmp_path / "store") as store:
        store.import_hdf5(legacy)
        store.backfill(fs)
    last = b.index[-1]
    bar = pl.DataFrame({"symbol": ["AAPL"], "ts": [last + pd.Timedelta(days=1)], "open": [100.0], "high": [101.0],
                        "low": [99.0], "close": [100.5], "volume": [1000.0]})
    with Store.open(tmp_path / "store") as store:
        report = store.push(bar.with_columns(pl.col("ts").dt.cast_time_unit("us")))
        assert list(report.rows) == ["rets@1"]
        store.flush()
