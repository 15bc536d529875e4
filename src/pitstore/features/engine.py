"""The feature engine: one call computes any features over the bars of many symbols.

Every feature is computed per symbol, in time order, from that symbol's full history in the input;
the first ``lookback`` rows of each symbol are null. Bars arrive sorted by (symbol, ts) from
:func:`pitstore.sources.bars.validate_bars`, so each symbol is a contiguous slice and kernels run on zero-copy
numpy views.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import numpy as np
import polars as pl

from pitstore.errors import DefinitionError
from pitstore.features.base import Feature, FeatureSet, check_unique_outputs
from pitstore.features.library import WindowKernel, is_window
from pitstore.frames import Frame, FrameKind, frame_kind, from_polars
from pitstore.sources.bars import Runs, checked_bars, symbol_runs

if TYPE_CHECKING:  # pandas is an optional extra; pyarrow has no types (pa.Table is Any to mypy)
    import pandas as pd
    import pyarrow as pa

__all__ = ["ENGINE_VERSION", "compute", "compute_frame", "flatten_features"]

# Bump when a built-in kernel or the engine's rules change numbers: it is part of every fingerprint.
# 2: vwap and zscore sum each window on its own (start-independent); 3: window sums and moments from blocks
# anchored at absolute bar positions (O(n), still start-independent; last bits differ from 2).
ENGINE_VERSION = "3"

FeatureLike = Feature | FeatureSet | Iterable["Feature | FeatureSet"]


def flatten_features(features: FeatureLike) -> list[Feature]:
    """A flat list of features from a feature, a feature set, or a list mixing both."""
    if isinstance(features, Feature):
        return [features]
    if isinstance(features, FeatureSet):
        return list(features.features)
    out: list[Feature] = []
    try:
        items = list(features)
    except TypeError as exc:
        raise DefinitionError(f"expected features or a feature set, got {type(features).__name__}") from exc
    for item in items:
        if isinstance(item, Feature | FeatureSet):
            out.extend(flatten_features(item))
        else:
            raise DefinitionError(f"expected a Feature or FeatureSet, got {type(item).__name__}: {item!r}")
    return out


# The output follows the bars' frame family, or ``output=``; Arrow bars (Any to mypy) give Any.
@overload
def compute(features: FeatureLike, bars: pl.DataFrame | pl.LazyFrame, *, output: None = None) -> pl.DataFrame: ...
@overload
def compute(features: FeatureLike, bars: pd.DataFrame, *, output: None = None) -> pd.DataFrame: ...
@overload
def compute(features: FeatureLike, bars: object, *, output: Literal["polars"]) -> pl.DataFrame: ...
@overload
def compute(features: FeatureLike, bars: object, *, output: Literal["pandas"]) -> pd.DataFrame: ...
@overload
def compute(features: FeatureLike, bars: object, *, output: Literal["arrow"]) -> pa.Table: ...
@overload
def compute(features: FeatureLike, bars: Any, *, output: FrameKind | None = None) -> Frame: ...
def compute(features: FeatureLike, bars: Any, *, output: FrameKind | None = None) -> Frame:
    """Compute ``features`` over ``bars`` (pandas, polars or Arrow) and return a frame of the same type.

    The result has ``symbol``, ``ts`` and one column per feature output, sorted by (symbol, ts).

    >>> import pitstore
    >>> bars = pitstore.testing.synthetic_bars(n_symbols=2, n_bars=30)
    >>> out = pitstore.compute([pitstore.sma(5), pitstore.rsi(14)], bars)
    >>> out.columns
    ['symbol', 'ts', 'sma_5', 'rsi_14']
    """
    kind = output or frame_kind(bars)
    feats = flatten_features(features)
    df, runs = checked_bars(bars)
    return from_polars(compute_frame(feats, df, runs=runs), kind)


def compute_frame(features: Sequence[Feature], df: pl.DataFrame, *,
                  offsets: Mapping[str, int] | None = None, runs: Runs | None = None) -> pl.DataFrame:
    """Compute on validated bars (sorted by symbol, ts); returns ``symbol``, ``ts`` and the outputs.

    ``offsets``: per symbol, the absolute position of its first row here when the bars are a tail of its
    stored history (default 0: they start at its first stored bar). Only window features can start late
    (:func:`pitstore.features.library.is_window`); the first ``lookback`` rows given are null either way.
    ``runs``: the :func:`pitstore.sources.bars.symbol_runs` of ``df`` when the caller has them already."""
    if not features:
        raise DefinitionError("no features to compute")
    check_unique_outputs(features)
    missing = sorted({c for f in features for c in f.inputs} - set(df.columns))
    if missing:
        raise DefinitionError(
            f"features need column(s) {missing} that the bars do not have "
            "(TA-Lib features can map an input to another column with inputs={...})"
        )
    n_rows = df.height
    names, starts, ends = runs if runs is not None else symbol_runs(df["symbol"])
    first = np.array([offsets.get(s, 0) for s in names] if offsets else np.zeros(len(names)), np.int64)
    columns: dict[str, pl.Series] = {}
    kernel_feats = [f for f in features if f.kernel is not None]
    if kernel_feats:
        columns.update(_run_kernels(kernel_feats, df, starts, ends, first))
    in_group: np.ndarray | None = None
    for f in features:
        if f.kind == "expr":
            assert f.expr is not None
            values = df.select(f.expr.over("symbol").cast(pl.Float64).alias("v"))["v"]
            if in_group is None:
                in_group = np.arange(n_rows) - np.repeat(starts, ends - starts)
            arr = values.to_numpy().astype(np.float64, copy=True)
            arr[in_group < f.lookback] = np.nan
            columns[f.outputs[0]] = pl.Series(f.outputs[0], arr, nan_to_null=True)
        elif f.kind == "python":
            columns.update(_run_python(f, df, starts, ends))
    ordered = [columns[c] for f in features for c in f.outputs]
    return df.select("symbol", "ts").with_columns(ordered)


def _run_kernels(
    features: Sequence[Feature], df: pl.DataFrame, starts: np.ndarray, ends: np.ndarray, first: np.ndarray
) -> dict[str, pl.Series]:
    needed = sorted({c for f in features for c in f.inputs})
    arrays = {c: df[c].cast(pl.Float64).to_numpy() for c in needed}
    outs = {f.name: [np.empty(df.height) for _ in f.outputs] for f in features}
    windows = [is_window(f) for f in features]
    if all(windows) and len(starts) > 1 and first.any():
        _run_blocks(features, arrays, outs, starts, ends, first)
        return _series(features, outs)
    for a, b, pos in zip(starts.tolist(), ends.tolist(), first.tolist(), strict=True):
        view = {c: arr[a:b] for c, arr in arrays.items()}
        shared: dict[str, np.ndarray] = {}  # intermediates the window kernels share over this symbol's slice
        for f, window in zip(features, windows, strict=True):
            assert f.kernel is not None
            columns = [out[a:b] for out in outs[f.name]]
            if window:  # writes into the output columns
                results = cast("WindowKernel", f.kernel)(view, pos, out=columns, shared=shared)
            else:
                results = f.kernel(view, pos)
            for column, res in zip(columns, results, strict=True):
                if res is not column:
                    column[...] = res
                column[: f.lookback] = np.nan  # windows reaching before the first row given
    return _series(features, outs)


def _series(features: Sequence[Feature], outs: Mapping[str, list[np.ndarray]]) -> dict[str, pl.Series]:
    return {
        col: pl.Series(col, arr, nan_to_null=True)
        for f in features
        for col, arr in zip(f.outputs, outs[f.name], strict=True)
    }


def _run_blocks(features: Sequence[Feature], arrays: Mapping[str, np.ndarray], outs: Mapping[str, list[np.ndarray]],
                starts: np.ndarray, ends: np.ndarray, first: np.ndarray) -> None:
    """Window features over the tails of an incremental backfill: the symbols whose tails have one length as
    the rows of one block, one kernel call per feature for all of them (as the live WindowBlock steps many
    symbols at once: kernels work along the last axis and take each row's absolute position), instead of a
    call per symbol (~0.1 ms each, for a few rows). Same values bit for bit: a value depends only on its window
    and its position (pitstore.features.windows)."""
    lengths = ends - starts
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        index = starts[rows, None] + np.arange(length)  # (symbols, length) positions in the frame
        view = {c: arr[index] for c, arr in arrays.items()}
        shared: dict[str, np.ndarray] = {}
        for f in features:
            assert f.kernel is not None
            columns = [np.empty((len(rows), length)) for _ in f.outputs]
            results = cast("WindowKernel", f.kernel)(view, first[rows], out=columns, shared=shared)
            for out, column, res in zip(outs[f.name], columns, results, strict=True):
                if res is not column:
                    column[...] = res
                column[:, : f.lookback] = np.nan  # windows reaching before the first row given
                out[index] = column


def _run_python(f: Feature, df: pl.DataFrame, starts: np.ndarray, ends: np.ndarray) -> dict[str, pl.Series]:
    assert f.fn is not None
    outs = [np.empty(df.height) for _ in f.outputs]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        part = df.slice(a, b - a)
        result = f.fn(part, **f.params)
        if isinstance(result, pl.DataFrame):
            cols = [result[s] if s in result.columns else None for s in f.output_suffixes]
            if any(c is None for c in cols):
                raise DefinitionError(
                    f"feature {f.name!r} returned columns {result.columns}, expected {list(f.output_suffixes)}"
                )
            results = [np.asarray(c.cast(pl.Float64).to_numpy(), dtype=np.float64) for c in cols if c is not None]
        else:
            if len(f.outputs) != 1:
                raise DefinitionError(f"feature {f.name!r} has several outputs and must return a DataFrame")
            if isinstance(result, pl.Series):
                result = result.cast(pl.Float64).to_numpy()
            results = [np.asarray(result, dtype=np.float64)]
        for out, res in zip(outs, results, strict=True):
            if res.shape != (b - a,):
                raise DefinitionError(
                    f"feature {f.name!r} returned {f'{res.shape[0]} values' if res.ndim else 'a scalar'} for "
                    f"{b - a} bars of symbol {df['symbol'][a]!r}"
                )
            out[a:b] = res
            out[a : min(a + f.lookback, b)] = np.nan
    return {col: pl.Series(col, arr, nan_to_null=True) for col, arr in zip(f.outputs, outs, strict=True)}
