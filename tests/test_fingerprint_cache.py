"""The compute fingerprint is cached per code object, yet a changed module global still changes the key."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pitstore
from pitstore.fingerprint import code_fingerprint

MODULE = '''
import polars as pl

SCALE = 2.0
CALLS = 0


def compute(raw, config):
    global CALLS
    CALLS += 1
    return raw.select("ts", (pl.col("close") * SCALE).alias("scaled"))
'''


def _load(tmp_path: Path) -> ModuleType:
    path = tmp_path / "fpcache_mod.py"
    path.write_text(MODULE)
    spec = importlib.util.spec_from_file_location("fpcache_mod", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_changed_module_constant_misses(tmp_path: Path) -> None:
    """Hit, then SCALE changes: the next call computes again (and returns the new numbers), then hits again."""
    mod = _load(tmp_path)
    raw = pitstore.testing.synthetic_bars(n_symbols=1, n_bars=50, seed=3).drop("symbol")
    with pitstore.Store.open(tmp_path / "store") as store:
        first = store.get_or_compute("S0000", raw, {"v": 1}, mod.compute)
        store.get_or_compute("S0000", raw, {"v": 1}, mod.compute)
        assert mod.CALLS == 1
        mod.SCALE = 3.0
        changed = store.get_or_compute("S0000", raw, {"v": 1}, mod.compute)
        assert mod.CALLS == 2
        assert changed["scaled"].to_list() == [v * 1.5 for v in first["scaled"].to_list()]
        store.get_or_compute("S0000", raw, {"v": 1}, mod.compute)
        assert mod.CALLS == 2


def test_fingerprint_follows_the_global_and_its_in_place_changes(tmp_path: Path) -> None:
    """The cached parts are the code's alone: values it reads are read again on every call."""
    mod = _load(tmp_path)
    before = code_fingerprint(mod.compute, strict=True)
    assert code_fingerprint(mod.compute, strict=True) == before
    mod.SCALE = 2.5
    assert code_fingerprint(mod.compute, strict=True) != before
    mod.SCALE = 2.0
    assert code_fingerprint(mod.compute, strict=True) == before
    mod.SCALE = [2.0]
    listed = code_fingerprint(mod.compute, strict=True)
    mod.SCALE.append(1.0)  # same object, new contents
    assert code_fingerprint(mod.compute, strict=True) != listed
