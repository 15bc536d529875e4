"""Vendor bar layouts: column names, timezones and date-only daily files mapped to pitstore's bar columns.

A vendor file (Yahoo ``Date,Open,High,Low,Close,Adj Close,Volume``, Stooq ``<TICKER>,<PER>,<DATE>,...``, a
lowercase ``date,open,...``) becomes ``symbol, ts, open, high, low, close, volume`` with ts aware UTC. Nothing
is guessed that could move a bar in time: naive times need a zone, and date-only ts need the bar's close time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time
from functools import partial
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from pitstore.errors import InvalidInputError
from pitstore.sources.bars import BAR_COLUMNS

__all__ = ["BarLayout"]

# Names matched case-insensitively (and without Stooq's <...>) when no mapping names the column.
_ALIASES = {
    "symbol": "symbol", "ticker": "symbol",
    "ts": "ts", "timestamp": "ts", "date": "ts", "datetime": "ts",
    "open": "open", "high": "high", "low": "low", "close": "close", "volume": "volume", "vol": "volume",
}
_DATE_FORMATS = ((r"^\d{4}-\d{2}-\d{2}$", "%Y-%m-%d"), (r"^\d{8}$", "%Y%m%d"))  # date-only ts
_DATE_TRAP = ("a date read as midnight UTC would serve the day's close to look-ups during that day: give "
              "close_time (--close-time) and tz (--tz), e.g. 16:00 America/New_York for a US daily file")


@dataclass(frozen=True)
class BarLayout:
    """How a source's columns and timestamps map to pitstore bars (the defaults change nothing that is valid).

    ``columns``: source name -> bar column (``{"Date": "ts", "Adj Close": "close"}``); other columns named like
    a bar column in any case (``Open``, ``HIGH``, ``<VOL>``; ts from ``Timestamp``, ``Date`` or ``Datetime``
    when exactly one such column exists) are renamed too. ``tz``: the zone of naive timestamps (converted to
    UTC). ``close_time``: the time of day, in ``tz``, a date-only ts stands for (the bar's close; required
    for date-only ts). ``symbol``: the symbol of a one-symbol source without a symbol column.
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    tz: str | None = None
    close_time: time | str | None = None
    symbol: str | None = None
    aliases: bool = True  # False: only ``columns`` renames (look-up files, whose extra columns pass untouched)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.columns.items() if v not in BAR_COLUMNS}
        if bad:
            raise InvalidInputError(f"column mapping {bad} names no bar column; targets: {', '.join(BAR_COLUMNS)}",
                                    column="columns")
        targets = list(self.columns.values())
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise InvalidInputError(f"column mapping gives {', '.join(twice)} more than once", column="columns")
        if self.tz is not None:
            try:
                ZoneInfo(self.tz)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise InvalidInputError(f"unknown timezone {self.tz!r} (use an IANA name such as "
                                        "America/New_York)", column="tz", value=self.tz) from exc
        if isinstance(self.close_time, str):
            object.__setattr__(self, "close_time", _parse_time(self.close_time))
        if self.close_time is not None and self.tz is None:
            raise InvalidInputError("close_time needs tz: the zone the close time is in (e.g. America/New_York); "
                                    "a close time without a zone would be a guess", column="tz")

    def renames(self, names: Sequence[str]) -> dict[str, str]:
        """Source column -> bar column, for the columns of a source named ``names``."""
        missing = [k for k in self.columns if k not in names]
        if missing:
            raise InvalidInputError(f"column mapping names {missing}, not in the source; its columns: "
                                    f"{', '.join(names)}", column="columns")
        out = dict(self.columns)
        taken = set(out.values()) | (set(names) & set(BAR_COLUMNS))
        found: dict[str, list[str]] = {}
        for name in names if self.aliases else ():
            target = _ALIASES.get(name.strip().strip("<>").lower())
            if name not in out and name not in BAR_COLUMNS and target is not None and target not in taken:
                found.setdefault(target, []).append(name)
        for target, sources in found.items():
            if len(sources) > 1:
                raise InvalidInputError(f"columns {', '.join(sources)} could each be {target}: say which with a "
                                        f"mapping, e.g. --map '{sources[0]}={target}' (columns={{...}})",
                                        column=target)
            out[sources[0]] = target
        return out

    def apply(self, df: pl.DataFrame) -> pl.DataFrame:
        """``df`` with bar column names, the symbol column and ts as aware timestamps where the layout says so."""
        renames = self.renames(df.columns)
        # A column already named like a mapping's target gives way to it ("Adj Close=close" over a close column).
        shadowed = [c for c in df.columns if c in renames.values() and c not in renames]
        df = df.drop(shadowed).rename(renames)
        if self.symbol is not None:
            if "symbol" in df.columns:
                raise InvalidInputError(f"symbol {self.symbol!r} given but the source has a symbol column: symbol= "
                                        "(--symbol) is for one-symbol sources without one", column="symbol")
            df = df.with_columns(symbol=pl.lit(self.symbol, pl.String))
        if "ts" in df.columns:
            df = df.with_columns(self._ts(df["ts"]))
        return df

    def _ts(self, ts: pl.Series) -> pl.Series:
        if ts.dtype == pl.String:
            ts = _parse_strings(ts)
        if ts.dtype == pl.Date:
            return self._at_close(ts)
        if not isinstance(ts.dtype, pl.Datetime) or ts.dtype.time_zone is not None:
            if self.close_time is not None and isinstance(ts.dtype, pl.Datetime):
                raise InvalidInputError("close_time is for date-only ts; these timestamps carry a time and a zone",
                                        column="ts", value=ts[0] if len(ts) else None)
            return ts  # aware: taken as given; other dtypes: validation names the problem
        if self.tz is None:
            return ts  # naive: validation refuses it (never guessed)
        if len(ts) and (ts.dt.time() == time(0)).all():
            if self.close_time is not None:  # midnight datetimes are dates (e.g. pandas read_csv(parse_dates))
                return self._at_close(ts.dt.date())
            raise InvalidInputError(f"ts are all at midnight, like dates: {_DATE_TRAP}", column="ts", value=ts[0])
        if self.close_time is not None:
            raise InvalidInputError("close_time is for date-only ts; these timestamps carry a time of day",
                                    column="ts", value=ts[0])
        return _to_utc(ts, self.tz)

    def _at_close(self, dates: pl.Series) -> pl.Series:
        if self.close_time is None or self.tz is None:
            raise InvalidInputError(f"ts holds dates without a time of day: {_DATE_TRAP}", column="ts",
                                    value=dates[0] if len(dates) else None)
        assert isinstance(self.close_time, time)
        local = dates.dt.combine(self.close_time, time_unit="us")
        return _to_utc(local, self.tz)


def _parse_time(text: str) -> time:
    try:
        return time.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidInputError(f"close_time {text!r} is not a time of day such as 16:00 or 16:00:00",
                                column="close_time", value=text) from exc


def _parse_strings(ts: pl.Series) -> pl.Series:
    """Date-only strings (2024-01-02, 20240102) as Date, others as datetimes (aware when they carry an offset)."""
    values = ts.drop_nulls()
    for pattern, fmt in _DATE_FORMATS:
        if len(values) and values.str.contains(pattern).all():
            return _parsing(partial(ts.str.to_date, fmt))
    return _parsing(lambda: ts.str.to_datetime(time_unit="us"))


def _parsing(parse: Callable[[], pl.Series]) -> pl.Series:
    try:
        return parse()
    except pl.exceptions.PolarsError as exc:
        raise InvalidInputError(f"cannot parse ts as timestamps: {exc}", column="ts") from exc


def _to_utc(local: pl.Series, tz: str) -> pl.Series:
    """Naive local times in ``tz`` as UTC; a time the zone skips or repeats (DST) is an error, not a guess."""
    try:
        return local.dt.replace_time_zone(tz, ambiguous="raise", non_existent="raise").dt.convert_time_zone("UTC")
    except pl.exceptions.PolarsError as exc:
        raise InvalidInputError(f"ts in {tz}: {exc}", column="ts") from exc
