"""The compute cache in one process: what the key covers, frame families, hits and statistics, bad inputs,
corrupted entries, single flight across threads, warming. Processes and kills: test_cache_processes.py."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from cache_workers import COMPUTES, Child, log_lines, make_raw, slow_summary, starts, summarise
from polars.testing import assert_frame_equal

from pitstore import InvalidInputError, Store
from pitstore.cache import cache_key
from pitstore.testing import synthetic_bars

# --- fixtures and helpers ------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "store") as s:
        yield s


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    d = tmp_path / "log"
    d.mkdir()
    return d


def cfg(log_dir: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {"log": str(log_dir), "name": name, "k": 1, **extra}


def cache_files(store: Store) -> list[Path]:
    """Every file under cache/ except the lock files."""
    return sorted(p for p in (store.root / "cache").rglob("*") if p.is_file() and ".locks" not in p.parts)


def entry_paths(store: Store) -> list[Path]:
    return [store.root / e.path for e in store.catalog.cache_entries()]


def key_of(raw: Any, config: Any = None, compute: Any = summarise, symbol: str = "AAA") -> str:
    return cache_key(symbol, raw, {"k": 1} if config is None else config, compute).key


def module_from(path: Path, name: str) -> ModuleType:
    """Import ``path`` as module ``name`` (a fresh module object each time)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- 1. what the key covers ---------------------------------------------------------------------------------


def test_key_covers_symbol_range_and_content() -> None:
    """Same input, same key; another symbol, another range, or another value in any cell: another key."""
    raw = make_raw("AAA")
    k = cache_key("AAA", raw, {"k": 1}, summarise)
    assert k.key == key_of(raw.clone())
    assert (k.first_ts, k.last_ts) == (raw["ts"].dt.epoch("us")[0], raw["ts"].dt.epoch("us")[-1])
    assert key_of(raw, symbol="BBB") != k.key
    assert key_of(raw.head(199)) != k.key  # last ts differs
    assert key_of(raw.tail(199)) != k.key  # first ts differs
    for row in (0, 100, 199):
        changed = raw.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.col("volume") + 1)
                                   .otherwise(pl.col("volume")).alias("volume"))
        assert key_of(changed) != k.key, row
    assert key_of(raw.rename({"volume": "vol"})) != k.key  # names are content too


def test_key_does_not_depend_on_chunking() -> None:
    """Equal data in one chunk or many, or as a slice of a larger table, has one key (datahash's promise)."""
    table = make_raw("AAA").to_arrow()
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=7))
    assert chunked.column("close").num_chunks > 1
    bigger = pa.concat_tables([table, table])
    assert key_of(chunked) == key_of(table) == key_of(bigger.slice(len(table), len(table)))


@pytest.mark.parametrize(("a", "b"), [
    ({"n": 2, "w": [1, 2], "s": "x"}, {"s": "x", "w": [1.0, 2.0], "n": 2.0}),
    ({"x": float("nan")}, {"x": float("nan")}),
    ({"x": np.float64("nan"), "i": np.int64(3)}, {"x": float("nan"), "i": 3}),
    ({"t": datetime(2024, 1, 2, 3, tzinfo=UTC)}, {"t": datetime(2024, 1, 2, 8, tzinfo=timezone(timedelta(hours=5)))}),
    ({"a": {"b": 1, "c": 2}}, {"a": {"c": 2, "b": 1}}),
])
def test_config_encoding_is_canonical(a: Any, b: Any) -> None:
    """Key order, 2 vs 2.0, NaN (not equal to itself), numpy scalars and timezones do not change the key."""
    raw = make_raw("AAA")
    assert key_of(raw, a) == key_of(raw, b)


@pytest.mark.parametrize(("a", "b"), [
    ({"n": 2}, {"n": 3}),
    ({"n": 2}, {"n": 2.5}),
    ({"x": float("nan")}, {"x": float("inf")}),
    ({"n": 1}, {"n": True}),
    ({"t": datetime(2024, 1, 2, 3, tzinfo=UTC)}, {"t": datetime(2024, 1, 2, 3, tzinfo=timezone(timedelta(hours=5)))}),
    ({"w": [1, 2]}, {"w": [2, 1]}),
    ({"n": 2}, {"n": 2, "extra": None}),
])
def test_different_configs_have_different_keys(a: Any, b: Any) -> None:
    raw = make_raw("AAA")
    assert key_of(raw, a) != key_of(raw, b)


def test_naive_datetime_or_unencodable_config_is_rejected(store: Store, log_dir: Path) -> None:
    """A naive datetime is ambiguous: InvalidInputError, nothing computed or stored; so is an object()."""
    raw = make_raw("AAA")
    for bad in ({"t": datetime(2024, 1, 2)}, {"o": object()}):
        with pytest.raises(InvalidInputError, match="config"):
            store.get_or_compute("AAA", raw, {**cfg(log_dir, "bad"), **bad}, slow_summary)
    assert starts(log_dir, "bad") == 0
    assert store.catalog.cache_entries() == [] and cache_files(store) == []


def _self_referencing_dict() -> dict[str, Any]:
    d: dict[str, Any] = {"k": 1}
    d["me"] = d
    return d


def _self_referencing_list() -> list[Any]:
    items: list[Any] = [1]
    items.append({"inner": items})
    return items


def _nested(depth: int) -> dict[str, Any]:
    """``depth`` dicts and lists nested alternately, 1 at the bottom."""
    x: Any = 1
    for i in range(depth):
        x = [x] if i % 2 else {"a": x}
    out: dict[str, Any] = {"k": 1, "deep": x}
    return out


@pytest.mark.parametrize(("make", "problem"), [
    pytest.param(_self_referencing_dict, "contains itself", id="dict-contains-itself"),
    pytest.param(_self_referencing_list, "contains itself", id="list-contains-itself-through-a-dict"),
    pytest.param(lambda: _nested(5_000), "nested more than 100 deep", id="5000-deep"),
    pytest.param(lambda: _nested(100), "nested more than 100 deep", id="101-deep"),  # the outer dict is one more
])
def test_recursive_or_too_deep_config_is_invalid_input(store: Store, log_dir: Path, make: Any, problem: str) -> None:
    """A config that contains itself or nests past the limit is InvalidInputError (it used to be a
    RecursionError), nothing computed or stored."""
    calls: list[int] = []

    def compute(raw: pl.DataFrame, config: Any) -> pl.DataFrame:
        calls.append(1)
        return summarise(raw, {"k": 1})

    with pytest.raises(InvalidInputError, match=f"config: .*{problem}"):
        store.get_or_compute("AAA", make_raw("AAA"), make(), compute)
    assert calls == [] and store.catalog.cache_entries() == []


def test_deep_but_bounded_and_shared_configs_are_keys(store: Store) -> None:
    """100 containers deep is fine, and one object referenced twice (no cycle) is no self-reference."""
    raw = make_raw("AAA")
    assert key_of(raw, _nested(99)) != key_of(raw, _nested(98))
    shared = [1, 2]
    assert key_of(raw, {"a": shared, "b": shared}) == key_of(raw, {"a": [1, 2], "b": [1, 2]})
    out = store.get_or_compute("AAA", raw, _nested(99), summarise)
    assert out["n"].to_list() == [200]


def test_one_cell_in_the_middle_of_a_large_frame(store: Store) -> None:
    """1.2M rows: changing one value in the middle gives a new key and the new result, never the stale one."""
    n = 1_200_000
    rng = np.random.default_rng(5)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    ts = pl.datetime_range(start, start + timedelta(seconds=n - 1), "1s", eager=True, time_zone="UTC")
    raw = pl.DataFrame({"ts": ts, "close": rng.random(n), "volume": rng.integers(0, 1000, n)})
    changed = raw.with_columns(pl.when(pl.int_range(pl.len()) == n // 2).then(pl.col("close") + 0.5)
                               .otherwise(pl.col("close")).alias("close"))

    def total(frame: pl.DataFrame, config: Any) -> pl.DataFrame:
        return frame.select(pl.col("close").sum(), pl.len())

    first = store.get_or_compute("BIG", raw, {}, total)
    second = store.get_or_compute("BIG", changed, {}, total)
    assert second["close"][0] == pytest.approx(first["close"][0] + 0.5, abs=1e-6)
    assert_frame_equal(second, total(changed, {}))
    k1, k2 = cache_key("BIG", raw, {}, total), cache_key("BIG", changed, {}, total)
    assert k1.key != k2.key and (k1.first_ts, k1.last_ts) == (k2.first_ts, k2.last_ts)
    assert k1.data.nbytes >= n * 24  # every byte of the three columns was hashed
    assert_frame_equal(store.get_or_compute("BIG", raw, {}, total), first)  # the old key still hits
    stats = store.stats()["cache"]
    assert (stats["misses"], stats["hits"], stats["entries"]) == (2, 1, 2)


def test_late_backfill_same_range_gives_new_result(store: Store, log_dir: Path) -> None:
    """The vendor restates one bar: same symbol, same first and last ts, so only the content says it changed."""
    raw = make_raw("AAA")
    config = cfg(log_dir, "late")
    before = store.get_or_compute("AAA", raw, config, slow_summary)
    restated = raw.with_columns(pl.when(pl.int_range(pl.len()) == 57).then(pl.col("close") * 1.5)
                                .otherwise(pl.col("close")).alias("close"))
    after = store.get_or_compute("AAA", restated, config, slow_summary)
    assert_frame_equal(after, summarise(restated, config))
    assert after["close_sum"][0] != before["close_sum"][0]
    assert starts(log_dir, "late") == 2
    assert_frame_equal(store.get_or_compute("AAA", restated, config, slow_summary), after)
    assert starts(log_dir, "late") == 2


CODE_V1 = '''
import polars as pl

FACTOR = 2


def helper(df):
    return df.select((pl.col("close") * FACTOR).sum().alias("v"))


def compute(raw, config):
    return helper(raw).with_columns(pl.lit(config["k"]).alias("k"))
'''
CODE_V1_REFORMATTED = '''
"""Same code, other layout."""
import polars as pl

FACTOR = 2


def helper(df):
    # a comment that changes nothing
    return df.select(
        (pl.col("close")   *   FACTOR).sum().alias("v")
    )


def compute(raw, config):
    """A docstring."""
    return helper(raw).with_columns(pl.lit(config["k"]).alias("k"))  # trailing comment
'''
CODE_HELPER_CHANGED = CODE_V1.replace('* FACTOR).sum()', '* FACTOR).mean()')
CODE_COMPUTE_CHANGED = CODE_V1.replace('pl.lit(config["k"])', 'pl.lit(config["k"] + 1)')
CODE_CONSTANT_CHANGED = CODE_V1.replace("FACTOR = 2", "FACTOR = 3")


def test_compute_fingerprint_follows_code_not_formatting(store: Store, tmp_path: Path) -> None:
    """Changing the compute or a module-level helper it calls (or a constant it reads) is a new key and a new
    result; comments, docstrings and layout are not."""
    raw = make_raw("AAA")
    results = {}
    for i, (name, code) in enumerate([("v1", CODE_V1), ("reformatted", CODE_V1_REFORMATTED),
                                      ("helper", CODE_HELPER_CHANGED), ("compute", CODE_COMPUTE_CHANGED),
                                      ("constant", CODE_CONSTANT_CHANGED)]):
        path = tmp_path / f"code{i}" / "cache_user_code.py"
        path.parent.mkdir()
        path.write_text(code)
        fn = module_from(path, "cache_user_code").compute
        results[name] = (cache_key("AAA", raw, {"k": 1}, fn).key, store.get_or_compute("AAA", raw, {"k": 1}, fn),
                         fn(raw, {"k": 1}))
    sys.modules.pop("cache_user_code", None)
    assert results["reformatted"][0] == results["v1"][0]
    keys = {results[n][0] for n in ("v1", "helper", "compute", "constant")}
    assert len(keys) == 4
    for _, got, fresh in results.values():
        assert_frame_equal(got, fresh)
    assert results["helper"][1]["v"][0] != results["v1"][1]["v"][0]
    assert results["compute"][1]["k"][0] == 2
    assert store.stats()["cache"]["misses"] == 4 and store.stats()["cache"]["hits"] == 1


# Each case: a compute, then a variant that differs only in what the case names (code elsewhere, a constant, the
# state it carries). The variant must get its own result (a new key), or be refused with InvalidInputError when its
# state cannot be fingerprinted; serving the first compute's result for it is the stale result DESIGN 3.1 forbids.
HELPER_V = "import polars as pl\n\n\ndef scale(frame):\n    return frame.select(pl.col('close').sum() * {f})\n"
USER_V = """
import polars as pl
import {helper}

PARAMS = {{"w": {w}}}
WEIGHTS = [{w}, 0]


def via_module_attribute(raw, config):
    return {helper}.scale(raw)


def via_dict_constant(raw, config):
    return raw.select(pl.col("close").sum() * PARAMS["w"])


def via_list_constant(raw, config):
    return raw.select(pl.col("close").sum() * WEIGHTS[0])
"""
USER_MODULES = ("cache_user_helpers", "cache_user_computes")


def _user_module(tmp_path: Path, version: int) -> ModuleType:
    """Version 1 or 2 of a user's code: a module with computes and the helper module they call."""
    d = tmp_path / f"user_v{version}"
    d.mkdir()
    (d / "cache_user_helpers.py").write_text(HELPER_V.format(f=version))
    (d / "cache_user_computes.py").write_text(USER_V.format(helper="cache_user_helpers", w=version))
    for name in USER_MODULES:
        sys.modules.pop(name, None)
    sys.path.insert(0, str(d))
    try:
        return importlib.import_module("cache_user_computes")
    finally:
        sys.path.remove(str(d))


class Scaler:
    def __init__(self, k: float) -> None:
        self.k = k

    def __call__(self, raw: pl.DataFrame, config: Any) -> pl.DataFrame:
        return raw.select(pl.col("close").sum() * self.k)

    def compute(self, raw: pl.DataFrame, config: Any) -> pl.DataFrame:
        return raw.select(pl.col("close").sum() * self.k)


def _weighted_by(table: pl.DataFrame) -> Any:
    def compute(raw: pl.DataFrame, config: Any) -> pl.DataFrame:
        return raw.select(pl.col("close").sum() * table["w"][0])

    return compute


TWO_LAMBDAS = {"a": lambda raw, config: raw.select(pl.col("close").sum()), "b": lambda raw, config: raw.select(pl.col("close").sum() * 2)}  # noqa: E501


def _variants(case: str, tmp_path: Path) -> tuple[Any, Any]:
    if case in ("module_attribute_helper", "dict_constant", "list_constant"):
        attr = {"module_attribute_helper": "via_module_attribute", "dict_constant": "via_dict_constant",
                "list_constant": "via_list_constant"}[case]
        return getattr(_user_module(tmp_path, 1), attr), getattr(_user_module(tmp_path, 2), attr)
    if case == "two_lambdas_on_one_line":
        return TWO_LAMBDAS["a"], TWO_LAMBDAS["b"]
    if case == "callable_object_state":
        return Scaler(1), Scaler(2)
    if case == "bound_method_state":
        return Scaler(1).compute, Scaler(2).compute
    assert case == "closure_over_a_frame"
    return _weighted_by(pl.DataFrame({"w": [1]})), _weighted_by(pl.DataFrame({"w": [2]}))


@pytest.mark.parametrize("case", ["module_attribute_helper", "dict_constant", "list_constant",
                                  "two_lambdas_on_one_line", "callable_object_state", "bound_method_state",
                                  "closure_over_a_frame"])
def test_a_different_compute_never_gets_a_stale_result(store: Store, tmp_path: Path, case: str) -> None:
    """Two computes that differ only in a helper of another module, a dict/list constant, the lambda's own code,
    or the state of a callable object, bound method or closure: the second gets its own result (or is refused
    with InvalidInputError when it cannot be fingerprinted), never the first one's."""
    raw = make_raw("AAA")
    try:
        first, second = _variants(case, tmp_path)
        want_first, want_second = first(raw, {}), second(raw, {})
        assert not want_first.equals(want_second)  # the two computes really differ
        try:
            assert_frame_equal(store.get_or_compute("AAA", raw, {}, first), want_first)
            got = store.get_or_compute("AAA", raw, {}, second)
        except InvalidInputError:
            return  # refusing a compute whose code or state cannot be fingerprinted is safe
    finally:
        for name in USER_MODULES:
            sys.modules.pop(name, None)
    assert_frame_equal(got, want_second)


@pytest.mark.parametrize(("a", "b"), [({"n": 10**400}, {"n": 10**400 + 1}), ({"n": -(10**30)}, {"n": -(10**30) - 1})])
def test_big_integers_in_configs(a: Any, b: Any) -> None:
    """Python ints have no size limit: two different ones are two keys (or, at worst, a typed error)."""
    raw = make_raw("AAA")
    try:
        ka, kb = key_of(raw, a), key_of(raw, b)
    except InvalidInputError:
        return
    assert ka != kb


@pytest.mark.slow  # fresh interpreter processes
def test_same_key_in_fresh_processes(tmp_path: Path) -> None:
    """New interpreters (with other string-hash seeds) compute the same key as this process for the same symbol,
    raw, config and compute: a plain function, a lambda holding a set constant, a function without source."""
    config = {"log": str(tmp_path), "name": "fresh", "k": 3, "when": "2024-01-01", "nan": float("nan")}
    names = ["slow_summary", "set_lambda", "no_source"]
    theirs: dict[str, list[str]] = {name: [] for name in names}
    for seed in ("1", "2"):
        with Child(env={"PYTHONHASHSEED": seed}) as child:
            child.expect("ready")
            for name in names:
                child.send({"op": "key", "call": {"symbol": "AAA", "config": config, "compute": name}})
                theirs[name].append(child.expect("key"))
            assert child.finish() == 0, child.stderr
    raw = make_raw("AAA")
    ours = {name: cache_key("AAA", raw, config, COMPUTES[name]).key for name in names}
    differing = [name for name in names if theirs[name] != [ours[name]] * 2]
    assert differing == [], f"keys differ between processes for {differing}"


def test_nanosecond_timestamps_in_raw(store: Store) -> None:
    """Tick data with nanosecond timestamps (not whole microseconds) is valid raw input."""
    ns = np.array([1_577_836_800_000_000_001, 1_577_836_800_000_000_501, 1_577_836_800_000_001_002])
    raw = pl.DataFrame({"ts": pl.Series(ns).cast(pl.Datetime("ns", "UTC")), "price": [1.0, 2.0, 3.0]})

    def mean(frame: pl.DataFrame, config: Any) -> pl.DataFrame:
        return frame.select(pl.col("price").mean())

    assert store.get_or_compute("TICK", raw, {}, mean)["price"][0] == 2.0
    assert store.get_or_compute("TICK", raw, {}, mean)["price"][0] == 2.0
    assert store.stats()["cache"]["hits"] == 1


# --- frame families ----------------------------------------------------------------------------------------


def _pandas_raw() -> pd.DataFrame:
    return make_raw("AAA").to_pandas().set_index("ts")


RAWS = {
    "polars": lambda: make_raw("AAA"),
    "lazy": lambda: make_raw("AAA").lazy(),
    "arrow": lambda: make_raw("AAA").to_arrow(),
    "batch": lambda: make_raw("AAA").to_arrow().to_batches()[0],
    "pandas": _pandas_raw,
}


def _as_polars(raw: Any) -> pl.DataFrame:
    if isinstance(raw, pd.DataFrame):
        return pl.from_pandas(raw.reset_index())
    if isinstance(raw, pl.LazyFrame):
        return raw.collect()
    if isinstance(raw, pa.RecordBatch):
        raw = pa.Table.from_batches([raw])
    out = pl.from_arrow(raw) if isinstance(raw, pa.Table) else raw
    assert isinstance(out, pl.DataFrame)
    return out


def to_pandas_result(raw: Any, config: Any) -> pd.DataFrame:
    """A pandas result with a meaningful (tz-aware, named) index and one of strings on top."""
    df = _as_polars(raw).to_pandas()
    out = df.set_index("ts")[["close", "volume"]].head(config["n"]) * config["k"]
    out["tag"] = [f"r{i}" for i in range(len(out))]
    return out


def to_polars_result(raw: Any, config: Any) -> pl.DataFrame:
    return _as_polars(raw).select("ts", (pl.col("close") * config["k"]).alias("c")).head(config["n"])


def to_arrow_result(raw: Any, config: Any) -> pa.Table:
    return to_polars_result(raw, config).to_arrow()


def to_lazy_result(raw: Any, config: Any) -> pl.LazyFrame:
    return to_polars_result(raw, config).lazy()


@pytest.mark.parametrize("raw_kind", list(RAWS))
def test_every_raw_family_works(store: Store, raw_kind: str) -> None:
    """pandas, polars (eager and lazy) and Arrow (table and batch) raw: computed once, then hit."""
    raw = RAWS[raw_kind]()
    first = store.get_or_compute("AAA", raw, {"k": 2, "n": 10}, to_polars_result)
    again = store.get_or_compute("AAA", RAWS[raw_kind](), {"k": 2, "n": 10}, to_polars_result)
    want = to_polars_result(raw, {"k": 2, "n": 10})
    assert_frame_equal(first, want)
    assert_frame_equal(again, want)
    stats = store.stats()["cache"]
    assert (stats["misses"], stats["hits"]) == (1, 1)


@pytest.mark.parametrize(("compute", "family"), [
    (to_pandas_result, pd.DataFrame), (to_polars_result, pl.DataFrame), (to_arrow_result, pa.Table),
    (to_lazy_result, pl.DataFrame),
])
def test_result_comes_back_in_its_family(store: Store, compute: Any, family: type) -> None:
    """The result is returned as the family compute returned, on the miss and on the hit (pandas index kept)."""
    raw = make_raw("AAA")
    config = {"k": 3, "n": 25}
    fresh = compute(raw, config)
    for _ in range(2):
        got = store.get_or_compute("AAA", raw, config, compute)
        assert isinstance(got, family)
        if family is pd.DataFrame:
            pd.testing.assert_frame_equal(got, fresh)
            assert got.index.name == "ts" and str(got.index.tz) == "UTC"
        elif family is pa.Table:
            assert got.equals(fresh)
        else:
            assert_frame_equal(got, fresh.collect() if isinstance(fresh, pl.LazyFrame) else fresh)
    assert store.stats()["cache"]["hits"] == 1


def test_pandas_string_index_is_preserved(store: Store) -> None:
    def by_name(raw: Any, config: Any) -> pd.DataFrame:
        return pd.DataFrame({"v": [1.5, 2.5, 3.5]}, index=pd.Index(["x", "y", "z"], name="name"))

    for _ in range(2):
        got = store.get_or_compute("AAA", make_raw("AAA"), {}, by_name)
        pd.testing.assert_frame_equal(got, by_name(None, None))


def empty_columns(raw: Any, config: Any) -> pl.DataFrame:
    return pl.DataFrame()


def zero_rows(raw: Any, config: Any) -> pl.DataFrame:
    return _as_polars(raw).head(0)


def multi_index(raw: Any, config: Any) -> pd.DataFrame:
    return _as_polars(raw).to_pandas().set_index(["symbol", "ts"])[["close"]].head(5)


def range_index(raw: Any, config: Any) -> pd.DataFrame:
    return pd.DataFrame({"v": [1.0, 2.0]}, index=pd.RangeIndex(5, 7, name="r"))


def categorical_and_nested(raw: Any, config: Any) -> pl.DataFrame:
    return _as_polars(raw).select(pl.col("symbol").cast(pl.Categorical), pl.concat_list("open", "close").alias("l"),
                                  pl.struct("high", "low").alias("s")).head(3)


def arrow_nulls_and_dictionary(raw: Any, config: Any) -> pa.Table:
    return pa.table({"x": pa.array([1, None, 3]), "d": pa.array(["a", None, "b"]).dictionary_encode()})


@pytest.mark.parametrize("compute", [empty_columns, zero_rows, multi_index, range_index, categorical_and_nested,
                                     arrow_nulls_and_dictionary])
def test_unusual_results_round_trip(store: Store, compute: Any) -> None:
    """No columns, no rows, a MultiIndex, a RangeIndex, categorical/list/struct columns, nulls and dictionaries:
    the hit returns exactly what the compute returned."""
    raw = make_raw("AAA")
    want = compute(raw, {})
    for _ in range(2):
        got = store.get_or_compute("AAA", raw, {}, compute)
        assert type(got) is type(want)
        if isinstance(want, pd.DataFrame):
            pd.testing.assert_frame_equal(got, want)
        elif isinstance(want, pa.Table):
            assert got.equals(want)
        else:
            assert_frame_equal(got, want)
    assert store.stats()["cache"]["hits"] == 1


# --- 2. get_or_compute, cached, stats -----------------------------------------------------------------------


def test_get_or_compute_computes_once_then_hits(store: Store, log_dir: Path) -> None:
    raw = make_raw("AAA")
    config = cfg(log_dir, "once")
    results = [store.get_or_compute("AAA", raw, config, slow_summary) for _ in range(4)]
    assert starts(log_dir, "once") == 1
    for r in results:
        assert_frame_equal(r, summarise(raw, config))
    [entry] = store.catalog.cache_entries()
    assert entry.hits == 3 and entry.symbol == "AAA" and (store.root / entry.path).is_file()
    assert cache_files(store) == [store.root / entry.path]


def test_cached_decorator(store: Store, log_dir: Path) -> None:
    """@store.cached: symbol from raw's single-valued symbol column, or symbol=; wrong uses are typed errors."""
    cached = store.cached(slow_summary)
    assert cached.__name__ == "slow_summary"
    raw_a, raw_b = make_raw("AAA"), make_raw("BBB")
    config = cfg(log_dir, "deco")
    assert_frame_equal(cached(raw_a, config), summarise(raw_a, config))
    assert_frame_equal(cached(raw_a, config), summarise(raw_a, config))
    assert_frame_equal(cached(raw_b, config), summarise(raw_b, config))
    assert_frame_equal(cached(raw_a, config, symbol="OTHER"), summarise(raw_a, config))
    assert starts(log_dir, "deco") == 3
    assert sorted(e.symbol for e in store.catalog.cache_entries()) == ["AAA", "BBB", "OTHER"]
    # the decorated function and a direct call share the key
    assert_frame_equal(store.get_or_compute("BBB", raw_b, config, slow_summary), summarise(raw_b, config))
    assert starts(log_dir, "deco") == 3
    for bad in (pl.concat([raw_a, raw_b]), raw_a.drop("symbol"), raw_a.with_columns(pl.lit(1).alias("symbol"))):
        with pytest.raises(InvalidInputError, match="symbol"):
            cached(bad, config)
    assert starts(log_dir, "deco") == 3


def test_stats_after_a_known_sequence(store: Store, log_dir: Path) -> None:
    """2 misses on AAA, 1 on BBB, 3 hits on AAA and 1 on BBB: every counter is exact or bounded by the cost."""
    n = 100
    ts = pl.datetime_range(datetime(2021, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC) + timedelta(days=n - 1),
                           "1d", eager=True, time_zone="UTC")
    raw = pl.DataFrame({"ts": ts, "close": np.linspace(1, 2, n), "volume": np.arange(n, dtype=np.int64)})
    raw_bytes = n * 8 * 3  # three 8-byte columns without nulls: exactly the bytes hashed per call

    def costly(frame: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
        return slow_summary(frame.with_columns(pl.lit("x").alias("symbol")), config)

    a1, a2, b1 = (cfg(log_dir, "a1", sleep=0.15), cfg(log_dir, "a2", sleep=0.05), cfg(log_dir, "b1", sleep=0.1))
    calls = [("AAA", a1), ("AAA", a1), ("AAA", a2), ("AAA", a1), ("BBB", b1), ("AAA", a2), ("BBB", b1)]
    for symbol, config in calls:
        store.get_or_compute(symbol, raw, config, costly)
    s = store.stats()["cache"]
    assert s["hash_method"] == "xxh3-128"
    assert (s["hits"], s["misses"], s["entries"], s["corruptions"]) == (4, 3, 3, 0)
    assert s["hit_rate"] == pytest.approx(4 / 7)
    entries = {e.key: e for e in store.catalog.cache_entries()}
    assert s["bytes"] == sum(e.size for e in entries.values()) == sum(p.stat().st_size for p in cache_files(store))
    secs = {name: next(e.compute_seconds for e in entries.values()
                       if e.key == cache_key(sym, raw, c, costly).key)
            for name, sym, c in (("a1", "AAA", a1), ("a2", "AAA", a2), ("b1", "BBB", b1))}
    assert secs["a1"] >= 0.15 and secs["a2"] >= 0.05 and secs["b1"] >= 0.1
    assert s["compute_seconds"] == pytest.approx(sum(secs.values()))
    assert s["saved_seconds"] == pytest.approx(2 * secs["a1"] + secs["a2"] + secs["b1"])
    assert s["hash_bytes"] == 7 * raw_bytes
    assert s["hash_seconds"] > 0 and s["hash_gb_per_s"] > 0
    per = s["per_symbol"]
    assert set(per) == {"AAA", "BBB"}
    assert (per["AAA"]["hits"], per["AAA"]["misses"], per["AAA"]["entries"]) == (3, 2, 2)
    assert (per["BBB"]["hits"], per["BBB"]["misses"], per["BBB"]["entries"]) == (1, 1, 1)
    assert per["AAA"]["hit_rate"] == pytest.approx(0.6) and per["BBB"]["hit_rate"] == pytest.approx(0.5)
    assert per["AAA"]["hash_bytes"] == 5 * raw_bytes and per["BBB"]["hash_bytes"] == 2 * raw_bytes
    assert per["BBB"]["saved_seconds"] == pytest.approx(secs["b1"])
    assert store.stats()["cache"] == s  # reading statistics changes none of them


# --- bad inputs ----------------------------------------------------------------------------------------------


def _bad_result(what: str) -> Any:
    """A value that is not a storable frame, built inside the compute (not captured: a captured DataFrame with
    mixed objects could not even be fingerprinted)."""
    return {
        "none": lambda: None,
        "dict": lambda: {"v": [1]},
        "list": lambda: [1, 2],
        "numpy": lambda: np.arange(3),
        "polars_series": lambda: pl.Series("v", [1, 2]),
        "pandas_series": lambda: pd.Series([1, 2], name="v"),
        "mixed_object_column": lambda: pd.DataFrame({"v": [1, "a", 2.5]}),
    }[what]()


def returns_bad(raw: Any, config: dict[str, Any]) -> Any:
    return _bad_result(config["what"])


@pytest.mark.parametrize("what", ["none", "dict", "list", "numpy", "polars_series", "pandas_series",
                                  "mixed_object_column"])
def test_compute_returning_a_non_frame(store: Store, what: str) -> None:
    """InvalidInputError, and nothing stored (no entry, no file, no statistics)."""
    with pytest.raises(InvalidInputError, match="result of compute"):
        store.get_or_compute("AAA", make_raw("AAA"), {"what": what}, returns_bad)
    assert store.catalog.cache_entries() == [] and cache_files(store) == []
    assert store.stats()["cache"]["misses"] == 0


BAD_RAWS = {
    "none": None,
    "dict": {"ts": [1], "close": [1.0]},
    "list": [[1, 2]],
    "numpy": np.zeros((3, 2)),
    "path": "bars.parquet",
    "polars_series": pl.Series("close", [1.0]),
    "pandas_series": pd.Series([1.0], name="close"),
    "mixed_object_column": pd.DataFrame({"v": [1, "a", 2.5]}),
}


@pytest.mark.parametrize("name", list(BAD_RAWS))
def test_raw_not_a_frame(store: Store, log_dir: Path, name: str) -> None:
    with pytest.raises(InvalidInputError, match="raw"):
        store.get_or_compute("AAA", BAD_RAWS[name], cfg(log_dir, "raw"), slow_summary)
    assert starts(log_dir, "raw") == 0
    assert store.catalog.cache_entries() == [] and cache_files(store) == []


@pytest.mark.parametrize("symbol", ["", 42, None, "A\nB", "x" * 1000, b"AAA"])
def test_bad_symbol(store: Store, log_dir: Path, symbol: Any) -> None:
    with pytest.raises(InvalidInputError, match="symbol"):
        store.get_or_compute(symbol, make_raw("AAA"), cfg(log_dir, "sym"), slow_summary)
    assert starts(log_dir, "sym") == 0
    assert store.catalog.cache_entries() == [] and cache_files(store) == []


@pytest.mark.parametrize("compute", [None, "module:fn", 42, pl.DataFrame()])
def test_compute_not_callable(store: Store, compute: Any) -> None:
    with pytest.raises(InvalidInputError, match="callable"):
        store.get_or_compute("AAA", make_raw("AAA"), {}, compute)
    assert store.catalog.cache_entries() == [] and cache_files(store) == []


def test_compute_that_raises_stores_nothing_and_runs_again(store: Store, log_dir: Path) -> None:
    class Boom(Exception):
        pass

    def fails(raw: Any, config: dict[str, Any]) -> pl.DataFrame:
        slow_summary(raw, config)
        raise Boom

    config = cfg(log_dir, "boom")
    for _ in range(2):
        with pytest.raises(Boom):
            store.get_or_compute("AAA", make_raw("AAA"), config, fails)
    assert starts(log_dir, "boom") == 2
    assert store.catalog.cache_entries() == [] and cache_files(store) == []


def test_special_symbols_are_stored_safely(store: Store, log_dir: Path) -> None:
    """Symbols with '/', '.', '..' and spaces are stored under the cache directory and read back."""
    for symbol in ("BRK/B", "..", ".", "A B", "^GSPC"):
        raw = make_raw(symbol)
        config = cfg(log_dir, "special")
        assert_frame_equal(store.get_or_compute(symbol, raw, config, slow_summary), summarise(raw, config))
        assert_frame_equal(store.get_or_compute(symbol, raw, config, slow_summary), summarise(raw, config))
    assert starts(log_dir, "special") == 5
    cache_dir = (store.root / "cache").resolve()
    for path in entry_paths(store):
        assert path.resolve().is_relative_to(cache_dir) and path.is_file()
    assert store.verify().ok


# --- 3. corruption -------------------------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage", [truncate, flip_middle_byte, delete])
def test_corrupted_entry_is_detected_and_recomputed(store: Store, log_dir: Path, damage: Any) -> None:
    """A truncated, altered or deleted entry: verify() names it; the next call returns the right result (a fresh
    compute), does not raise, and recomputes; then verify() is clean and the call after that hits."""
    raw = make_raw("AAA", 5000)
    config = cfg(log_dir, "corrupt")
    want = summarise(raw, config)
    assert_frame_equal(store.get_or_compute("AAA", raw, config, slow_summary), want)
    other = store.get_or_compute("BBB", make_raw("BBB"), config, slow_summary)  # an intact neighbour
    [entry] = store.catalog.cache_entries("AAA")
    damage(store.root / entry.path)

    report = store.verify()
    assert not report.ok
    assert [p["path"] for p in report.problems] == [entry.path]
    assert report.problems[0]["kind"] == "cache"

    assert_frame_equal(store.get_or_compute("AAA", raw, config, slow_summary), want)
    assert starts(log_dir, "corrupt") == 3
    s = store.stats()["cache"]
    if damage is not delete:
        assert s["corruptions"] == 1 and s["per_symbol"]["AAA"]["corruptions"] == 1
    assert s["per_symbol"]["BBB"]["corruptions"] == 0
    assert store.verify().ok
    [repaired] = store.catalog.cache_entries("AAA")
    assert (store.root / repaired.path).stat().st_size == repaired.size
    assert_frame_equal(store.get_or_compute("AAA", raw, config, slow_summary), want)
    assert_frame_equal(store.get_or_compute("BBB", make_raw("BBB"), config, slow_summary), other)
    assert starts(log_dir, "corrupt") == 3
    assert store.stats()["cache"]["hits"] == 2


def test_corruption_is_seen_by_another_store_object(tmp_path: Path, log_dir: Path) -> None:
    """A second Store on the same root (another reader) also detects the broken entry, recomputes once."""
    raw = make_raw("AAA")
    config = cfg(log_dir, "two")
    with Store.open(tmp_path / "s") as a, Store.open(tmp_path / "s") as b:
        a.get_or_compute("AAA", raw, config, slow_summary)
        flip_middle_byte(tmp_path / "s" / a.catalog.cache_entries()[0].path)
        assert_frame_equal(b.get_or_compute("AAA", raw, config, slow_summary), summarise(raw, config))
        assert_frame_equal(a.get_or_compute("AAA", raw, config, slow_summary), summarise(raw, config))
        assert starts(log_dir, "two") == 2
        assert a.verify().ok


# --- 4. single flight across threads --------------------------------------------------------------------------


def test_threads_of_one_process_compute_once(store: Store, log_dir: Path) -> None:
    """8 threads call one key at once: one computation, 8 equal results, 7 hits."""
    raw = make_raw("AAA")
    config = cfg(log_dir, "threads", sleep=0.3)
    barrier = threading.Barrier(8)
    results: list[Any] = [None] * 8
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = store.get_or_compute("AAA", raw, config, slow_summary)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert starts(log_dir, "threads") == 1
    want = summarise(raw, config)
    for r in results:
        assert_frame_equal(r, want)
    s = store.stats()["cache"]
    assert (s["misses"], s["hits"]) == (1, 7)


def test_threads_on_different_keys_run_in_parallel(store: Store, log_dir: Path) -> None:
    """Single flight is per key: 4 threads on 4 keys, each compute sleeping 0.6 s, overlap (no global lock)."""
    raw = make_raw("AAA")
    configs = [cfg(log_dir, f"par{i}", sleep=0.6) for i in range(4)]
    threads = [threading.Thread(target=store.get_or_compute, args=("AAA", raw, c, slow_summary)) for c in configs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.perf_counter() - t0
    for i in range(4):
        assert [ln.split()[0] for ln in log_lines(log_dir, f"par{i}")] == ["start", "end"]
    assert elapsed < 1.8, f"4 computes of 0.6 s took {elapsed:.2f} s: they did not run at the same time"
    assert store.stats()["cache"]["misses"] == 4


# --- warming, clearing -----------------------------------------------------------------------------------------


def test_warm_cache_then_everything_hits(store: Store, log_dir: Path) -> None:
    """warm_cache computes every (symbol, config) once; a second warm computes nothing; a failing symbol is
    reported without stopping the others; later get_or_compute on stored bars hits."""
    store.ingest(synthetic_bars(3, 80, seed=4))
    configs = [cfg(log_dir, "warm", k=k) for k in (1, 2)]
    done: list[int] = []
    report = store.warm_cache(None, configs, slow_summary, progress=done.append)
    assert (report.computed, report.hits, report.failed) == (6, 0, {})
    assert done == [1, 1, 1]
    assert starts(log_dir, "warm") == 6
    again = store.warm_cache(["S0000", "S0001", "S0002"], configs, slow_summary)
    assert (again.computed, again.hits) == (0, 6)
    assert starts(log_dir, "warm") == 6
    for config in configs:
        got = store.get_or_compute("S0001", store.bars("S0001"), config, slow_summary)
        assert_frame_equal(got, summarise(store.bars("S0001"), config))
    assert starts(log_dir, "warm") == 6
    partial = store.warm_cache(["S0000", "NOPE"], [*configs, cfg(log_dir, "warm", k=3)], slow_summary)
    assert (partial.computed, partial.hits) == (1, 2)
    assert list(partial.failed) == ["NOPE"] and "NotFoundError" in partial.failed["NOPE"]


def test_clear_and_cleanup_old_entries(store: Store, log_dir: Path) -> None:
    """clear(symbol) deletes that symbol's entries (rows and files) only; cleanup_old_entries(days) those not
    accessed within days; a deleted result is computed again on the next call."""
    config = cfg(log_dir, "clear")
    raws = {s: make_raw(s) for s in ("AAA", "BBB", "CCC")}
    for s, raw in raws.items():
        store.get_or_compute(s, raw, config, slow_summary)
    bbb_path = entry_paths(store)[1]
    assert store.clear("BBB") == 1
    assert not bbb_path.exists()
    assert sorted(e.symbol for e in store.catalog.cache_entries()) == ["AAA", "CCC"]
    assert store.clear("BBB") == 0 and store.clear("NOPE") == 0
    assert_frame_equal(store.get_or_compute("BBB", raws["BBB"], config, slow_summary), summarise(raws["BBB"], config))
    assert starts(log_dir, "clear") == 4

    old = store.catalog.cache_entries("AAA")[0]
    ten_days_ago = int((datetime.now(UTC) - timedelta(days=10)).timestamp() * 1e6)
    # Ten days pass for one entry: its last access is set in the catalog file, as another process would see it.
    with closing(sqlite3.connect(store.catalog.path)) as conn, conn:
        conn.execute("UPDATE cache_entries SET last_access = ? WHERE key = ?", (ten_days_ago, old.key))
    assert store.cleanup_old_entries(30) == 0
    assert store.cleanup_old_entries(5) == 1
    assert not (store.root / old.path).exists()
    assert sorted(e.symbol for e in store.catalog.cache_entries()) == ["BBB", "CCC"]
    with pytest.raises(InvalidInputError):
        store.cleanup_old_entries(-1)
    assert store.clear() == 2
    assert store.catalog.cache_entries() == [] and cache_files(store) == []
    assert store.verify().ok


def test_clear_leaves_a_key_held_by_another_process(store: Store, log_dir: Path) -> None:
    """clear() does not delete an entry whose key another process holds (it may be publishing it)."""
    raw = make_raw("AAA")
    config = cfg(log_dir, "heldclear")
    store.get_or_compute("AAA", raw, config, slow_summary)
    store.get_or_compute("BBB", make_raw("BBB"), config, slow_summary)
    key = cache_key("AAA", raw, config, slow_summary).key
    with Child() as child:
        child.expect("ready")
        child.send({"op": "hold", "root": str(store.root), "key": key})
        child.expect("held")
        assert store.clear() == 1
        assert [e.key for e in store.catalog.cache_entries()] == [key]
        child.send("release")
        child.expect("released")
        assert child.finish() == 0, child.stderr
    assert store.clear() == 1
    assert store.catalog.cache_entries() == [] and cache_files(store) == []


def test_cache_section_of_store_stats(store: Store, log_dir: Path) -> None:
    raw = make_raw("AAA")
    store.get_or_compute("AAA", raw, cfg(log_dir, "st"), slow_summary)
    stats = store.stats()
    assert stats["cache"]["entries"] == 1 and stats["cache"]["misses"] == 1
    assert stats["bytes_on_disk"] >= stats["cache"]["bytes"] > 0
