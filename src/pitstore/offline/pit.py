"""THE point-in-time join, vectorised: the rules of :mod:`pitstore.rules` over frames.

As-of rule (DESIGN.md section 2): a look-up at time t for symbol s gets the row of s with the greatest
``ts`` such that ``ts + availability_lag <= t`` (equality counts). If that row's ``ts < t - ttl`` (the reads
pass the effective TTL, :func:`pitstore.rules.effective_ttl`), the values are null and the status is
``stale``. Every look-up row comes back, in input order, with a status: ``ok``, ``unknown_symbol``,
``no_data_yet``, ``stale`` or ``damaged`` (the symbol's stored entry is missing, truncated or does not match
its hash: values null, never an older row instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

import numpy as np
import polars as pl

from pitstore.rules import (
    DAMAGED,
    NO_DATA_YET,
    OK,
    STALE,
    STATUSES,
    UNKNOWN_SYMBOL,
    is_available,
    is_stale,
    micros,
    stale_expr,
)

__all__ = ["asof_join", "is_available", "is_stale", "micros", "worst_status"]
ORDER = "__pitstore_order"
_FEATURE_TS = "__pitstore_feature_ts"
_AVAILABLE = "__pitstore_available"
_ROW = "__pitstore_row"
_FIRST = "__pitstore_first_ts"


def asof_join(
    spine: pl.DataFrame,
    rows: pl.DataFrame,
    columns: Sequence[str],
    *,
    known_symbols: Sequence[str],
    availability_lag: timedelta = timedelta(0),
    ttl: timedelta | None = None,
    status_name: str = "status",
    damaged_symbols: Sequence[str] = (),
    stored_from: Mapping[str, int] | None = None,
) -> pl.DataFrame:
    """Join ``rows`` (symbol, ts, columns; ts ascending within each symbol) onto ``spine`` (ORDER, symbol, ts).

    Returns ORDER, the ``columns`` and ``status_name``, one row per spine row, sorted by ORDER (the spine's
    ORDER must be 0..n-1).
    ``known_symbols`` are the symbols the store has data for (others are ``unknown_symbol``);
    ``damaged_symbols`` those whose stored rows could not be read (``damaged``; ``rows`` must hold none of theirs).
    ``stored_from``: symbol -> its first stored ts (µs), for ``rows`` cut to what the look-ups need
    (:mod:`pitstore.offline.prune`: nothing older than the smallest ``t - ttl``): a look-up left without a row although
    the symbol has one available is ``stale`` (that row is older than ``t - ttl``), not ``no_data_yet``.
    """
    # Join narrow (keys and a row index only), then gather the feature columns once in input order:
    # sorting wide frames is what a naive as-of join spends its time on.
    right = rows.select(
        pl.col("symbol"),
        (pl.col("ts") + availability_lag).alias(_AVAILABLE),
        pl.col("ts").alias(_FEATURE_TS),
    ).with_row_index(_ROW)  # no global sort: the by-symbol join needs ts order within each symbol only
    left = spine.select(ORDER, "symbol", "ts").sort("ts")
    joined = left.join_asof(
        right, left_on="ts", right_on=_AVAILABLE, by="symbol", strategy="backward", check_sortedness=False
    )
    order = joined[ORDER].to_numpy()
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order), dtype=order.dtype)
    if spine[ORDER].is_sorted():  # the spine is in input order: only the join's own columns need moving back
        joined = pl.concat([spine.select(ORDER, "symbol", "ts"), joined.select(_ROW, _FEATURE_TS)[inverse]],
                           how="horizontal")
    else:
        joined = joined[inverse]  # back to input order (ORDER is 0..n-1)
    known = pl.col("symbol").is_in(pl.Series(list(known_symbols), dtype=pl.String).implode())
    unmatched = pl.col(_FEATURE_TS).is_null()
    stale = stale_expr(pl.col(_FEATURE_TS), pl.col("ts"), ttl)
    if stored_from:
        # Only look-ups left without a row can be "stale, its row was not read": join just those (few) to the
        # symbols' first stored ts, not all of them (a join of every look-up by symbol was a fifth of a call).
        lost = joined.select(pl.col(_FEATURE_TS).is_null().arg_true()).to_series()
        earlier_rows = pl.Series(_FIRST, [], dtype=pl.UInt32)
        if len(lost):
            firsts = pl.DataFrame({"symbol": list(stored_from), _FIRST: list(stored_from.values())},
                                  schema={"symbol": pl.String, _FIRST: pl.Int64})
            probe = joined.select("symbol", "ts").with_columns(pl.Series(_ROW, np.arange(joined.height)))[lost]
            probe = probe.join(firsts, on="symbol", how="inner")
            earlier_rows = probe.filter(pl.col(_FIRST) + micros(availability_lag)
                                        <= pl.col("ts").dt.epoch("us"))[_ROW].cast(pl.UInt32)
        mask = np.zeros(joined.height, dtype=bool)
        mask[earlier_rows.to_numpy()] = True
        earlier = pl.lit(pl.Series(mask))
        missing, stale = unmatched & ~earlier, stale.fill_null(False) | earlier
    else:
        missing = unmatched
    damaged = pl.col("symbol").is_in(pl.Series(list(damaged_symbols), dtype=pl.String).implode()) \
        if damaged_symbols else pl.lit(False)
    status = (
        pl.when(damaged).then(pl.lit(DAMAGED))
        .when(~known).then(pl.lit(UNKNOWN_SYMBOL))
        .when(missing).then(pl.lit(NO_DATA_YET))
        .when(stale).then(pl.lit(STALE))
        .otherwise(pl.lit(OK))
    )
    flags = joined.select(stale.alias("stale"), status.alias(status_name), pl.col(_ROW))
    values = rows.select(pl.col(c).gather(flags[_ROW]) for c in columns)
    if ttl is not None:
        values = values.select(pl.when(flags["stale"]).then(None).otherwise(pl.col(c)).alias(c) for c in columns)
    return pl.concat([joined.select(ORDER), values, flags.select(status_name)], how="horizontal")


def worst_status(statuses: Sequence[pl.Expr]) -> pl.Expr:
    """The worst of several status columns (``damaged`` > ``unknown_symbol`` > ``no_data_yet`` > ``stale`` > ``ok``;
    the order of :data:`pitstore.status.STATUSES`)."""
    if len(statuses) == 1:
        return statuses[0]
    rank = pl.Enum(list(STATUSES))
    worst = pl.max_horizontal([s.cast(rank).to_physical() for s in statuses])
    return worst.replace_strict(dict(enumerate(STATUSES)), return_dtype=pl.String)

