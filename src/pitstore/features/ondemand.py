"""Indicators on demand for one symbol and a range: read from a stored feature set when one holds them for
the current bars, otherwise computed once from the stored bars through the compute cache (a later request, by
any process, is a cache hit). Values are computed over the whole stored history, then cut to the range: the
same whatever the range (no warm-up effects)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import polars as pl

from pitstore.cache import ComputeCache
from pitstore.features.base import Feature
from pitstore.features.catalogue import build_feature
from pitstore.features.engine import ENGINE_VERSION, compute_frame
from pitstore.features.registry import Registry
from pitstore.fingerprint import library_versions

__all__ = ["compute_on_demand", "indicator_rows"]


class _Kernels:
    """pitstore's own kernels, reached through an object so the cache's code walk stops here: they are keyed
    by ``config["engine"]`` (the engine and library versions), as a feature set's fingerprint keys them."""

    def run(self, raw: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
        features = [build_feature(f["name"], f["params"]).alias(f["alias"]) for f in config["features"]]
        return compute_frame(features, raw).drop("symbol")


_KERNELS = _Kernels()


def compute_on_demand(raw: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
    """The cached computation: ``config["features"]`` lists ``{"name", "params", "alias"}``, rebuilt here."""
    return _KERNELS.run(raw, config)


def _config(features: Sequence[Feature]) -> dict[str, Any]:
    return {"features": [{"name": f.func if f.kind == "builtin" else f"talib.{f.func}",
                          "params": dict(f.params), "alias": f.name} for f in features],
            "engine": {"version": ENGINE_VERSION, "libraries": library_versions()}}


def _stored_set(registry: Registry, features: Sequence[Feature]) -> str | None:
    """``name@version`` of a registered set's latest version holding every feature, same definition and names."""
    wanted = [(f.kind, f.func, dict(f.params), list(f.outputs)) for f in features]
    for name in registry.names():
        info = registry.get(name)
        have = [(s["kind"], s["func"], s["params"], s["outputs"]) for s in info.definition.get("features", [])]
        if all(w in have for w in wanted):
            return f"{name}@{info.version}"
    return None


def indicator_rows(bars: pl.DataFrame, features: Sequence[Feature], start: datetime | None, end: datetime | None,
                   *, registry: Registry, cache: ComputeCache,
                   read: Callable[[str, datetime | None, datetime | None], pl.DataFrame],
                   use_stored: bool = True) -> tuple[pl.DataFrame, str]:
    """``ts`` and the features' outputs of one symbol's ``bars`` in ``[start, end]``, and where they came from
    (``"stored"`` or ``"computed"``: through the compute cache)."""
    symbol = bars["symbol"][0]
    outputs = [c for f in features for c in f.outputs]
    in_range = bars.select("ts").filter(_between(start, end))
    ref = _stored_set(registry, features) if use_stored else None
    if ref is not None:
        stored = read(ref, start, end)
        # Served as stored only when it has a row for every bar in the range: a set not yet backfilled over
        # the newest bars would otherwise answer from older data.
        if "status" not in stored.columns and stored["ts"].equals(in_range["ts"]):
            return stored.select("ts", *outputs), "stored"
    rows = cache.get_or_compute(symbol, bars, _config(features), compute_on_demand)
    return rows.filter(_between(start, end)), "computed"


def _between(start: datetime | None, end: datetime | None) -> pl.Expr:
    cond = pl.lit(True)
    if start is not None:
        cond &= pl.col("ts") >= start
    if end is not None:
        cond &= pl.col("ts") <= end
    return cond
