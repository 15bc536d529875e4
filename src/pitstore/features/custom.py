"""User-defined features: polars expressions, and plain Python functions of one symbol's bars."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, overload

import polars as pl

from pitstore.errors import DefinitionError
from pitstore.features.base import Feature, make_feature

__all__ = ["expr", "feature"]

_BAR_INPUTS = ("open", "high", "low", "close", "volume")


def expr(
    name: str,
    expression: pl.Expr,
    *,
    lookback: int = 0,
    recursive: bool = False,
    description: str = "",
) -> Feature:
    """A feature from a polars expression over the bar columns, evaluated per symbol in time order.

    ``lookback`` rows at the start of each symbol are null.

    >>> import polars as pl
    >>> hl = expr("hl_range", (pl.col("high") - pl.col("low")) / pl.col("close"))
    >>> hl.outputs
    ('hl_range',)
    """
    if not isinstance(expression, pl.Expr):
        raise DefinitionError(f"expr {name!r}: expected a polars expression, got {type(expression).__name__}")
    inputs = tuple(sorted(set(expression.meta.root_names())))
    return make_feature(
        name=name, kind="expr", func="expr", params={}, inputs=inputs, lookback=lookback,
        recursive=recursive, description=description, expr=expression,
    )


@overload
def feature(fn: Callable[[pl.DataFrame], Any], /) -> Feature: ...


@overload
def feature(
    *,
    name: str | None = None,
    lookback: int = 0,
    outputs: Sequence[str] | None = None,
    recursive: bool = False,
    description: str | None = None,
    **params: Any,
) -> Callable[[Callable[..., Any]], Feature]: ...


def feature(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    lookback: int = 0,
    outputs: Sequence[str] | None = None,
    recursive: bool = False,
    description: str | None = None,
    **params: Any,
) -> Feature | Callable[[Callable[..., Any]], Feature]:
    """Turn a Python function of one symbol's bars into a feature (for what expressions cannot say).

    The function gets a polars DataFrame of one symbol's bars in time order (plus ``params`` as keyword
    arguments) and returns one column (Series, numpy array or list) of the same length, or a DataFrame
    whose columns are the named ``outputs``. Its source and the source of the module-level helpers it
    calls are part of the fingerprint.

    >>> @feature(lookback=1)
    ... def gap(bars):
    ...     return bars["open"] / bars["close"].shift(1) - 1
    >>> gap.outputs
    ('gap',)
    """

    def wrap(f: Callable[..., Any]) -> Feature:
        if not callable(f):
            raise DefinitionError(f"feature: expected a function, got {type(f).__name__}")
        fname = name or str(getattr(f, "__name__", "feature"))
        suffixes = tuple(outputs) if outputs else ("",)
        doc = (f.__doc__ or "").strip().splitlines()
        return make_feature(
            name=fname, kind="python", func=f"{f.__module__}.{f.__qualname__}", params=params,
            output_suffixes=suffixes, inputs=_BAR_INPUTS, lookback=lookback, recursive=recursive,
            description=description if description is not None else (doc[0] if doc else ""), fn=f,
        )

    return wrap(fn) if fn is not None else wrap
