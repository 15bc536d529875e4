"""The file layouts of the older in-house stores, and their frames read as polars (symbol, ts, columns).

* hash-named pandas HDFStore files: ``<SYMBOL>_<hex hash>.h5``, each key one frame (bars when it has open, high,
  low and close columns; its other columns are features of the set the hash names);
* the partitioned layout ``features/<set>/symbol=AAPL/feature_type=<type>/version=v1/year=2024/month=01/data.h5``:
  feature columns of ``<set>``, legacy version ``v1``; the feature types of one symbol are joined on ts.

Files are deflate ("gzip") compressed inside (``complib="zlib"``); a whole file gzipped (``.h5.gz``) is
decompressed first. Every file is copied into a private directory and checked there (:mod:`.safety`), so what
PyTables opens is what was checked.
"""

from __future__ import annotations

import gzip
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import polars as pl

from pitstore.errors import InvalidInputError
from pitstore.sources.legacy.safety import check_hdf5

__all__ = ["Frame", "Source", "discover", "read_frames", "stage"]

SUFFIXES = (".h5", ".hdf5", ".hdf", ".h5.gz", ".hdf5.gz")
_HASHED = re.compile(r"^(?P<symbol>.+)_(?P<hash>[0-9a-fA-F]{6,64})$")
_OHLC = ("open", "high", "low", "close")
_TIME_NAMES = ("ts", "timestamp", "datetime", "date", "time", "index")
_GENERIC_KEYS = frozenset({"data", "df", "table", "frame", "features", "values", "bars"})


@dataclass(frozen=True)
class Source:
    """One legacy file and what its path says."""

    path: Path
    shown: str  # as the user gave it: what errors name
    layout: str  # "hashed" or "partitioned"
    symbol: str
    set_name: str | None  # partitioned: <set>; hashed: None (from the key, or legacy_<hash>)
    hash: str | None
    feature_type: str | None
    legacy_version: str | None  # "v1", ...


@dataclass(frozen=True)
class Frame:
    """A frame of a file: bars (symbol, ts, open, high, low, close[, volume]) or feature columns."""

    source: Source
    key: str
    kind: str  # "bars" or "features"
    set_name: str | None  # features: the feature set it belongs to
    df: pl.DataFrame  # symbol, ts (µs UTC) and the columns


def _base_name(path: Path) -> str:
    name = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def set_name(text: str) -> str:
    """A feature-set name (an identifier, as references need) from a legacy name."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if re.match(r"^[A-Za-z_]", name) else f"s_{name}"


def _parse(path: Path, shown: str) -> Source:
    parts = path.parts
    keys = dict(p.split("=", 1) for p in parts[:-1] if "=" in p)
    if "symbol" in keys:
        i = next(i for i, p in enumerate(parts) if p.startswith("symbol="))
        if i < 2 or parts[i - 2] != "features":
            raise InvalidInputError(f"{shown}: a partitioned file must be under features/<set>/symbol=...")
        return Source(path, shown, "partitioned", unquote(keys["symbol"]), set_name(parts[i - 1]), None,
                      keys.get("feature_type"), keys.get("version"))
    m = _HASHED.match(_base_name(path))
    if m is None:
        raise InvalidInputError(f"{shown}: not a layout pitstore imports: expected SYMBOL_<hash>.h5 or "
                                "features/<set>/symbol=S/feature_type=T/version=vN/year=Y/month=M/data.h5")
    return Source(path, shown, "hashed", m["symbol"], None, m["hash"].lower(), None, None)


def discover(paths: Iterable[str | Path]) -> list[Source]:
    """The legacy files named by ``paths`` (files, or directories searched for HDF5 files), parsed."""
    out: list[Source] = []
    for given in paths:
        p = Path(given)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(SUFFIXES))
            if not found:
                raise InvalidInputError(f"{given}: no HDF5 files (*.h5, *.hdf5, *.h5.gz) under it")
            out.extend(_parse(f, str(f)) for f in found)
        elif p.is_file():
            out.append(_parse(p, str(given)))
        else:
            raise InvalidInputError(f"no such file or directory: {given}")
    if not out:
        raise InvalidInputError("no files given to import")
    return out


def stage(source: Source, directory: Path, n: int) -> Path:
    """A private copy of the file (decompressed when gzipped), checked: what PyTables may open."""
    copy = directory / f"{n}.h5"
    if source.path.name.lower().endswith(".gz"):
        try:
            with gzip.open(source.path) as src, copy.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as exc:
            raise InvalidInputError(f"{source.shown}: not a gzip file ({exc})") from exc
    else:
        shutil.copyfile(source.path, copy)
    check_hdf5(copy, source.shown)
    return copy


def read_frames(source: Source, copy: Path, tz: str | None) -> list[Frame]:
    """The frames of a checked copy, as polars, split into bars and features."""
    import pandas as pd

    out: list[Frame] = []
    with pd.HDFStore(copy, mode="r") as h5:
        for key in h5:  # its keys
            obj = h5.get(key)
            if isinstance(obj, pd.Series):
                obj = obj.to_frame()
            if not isinstance(obj, pd.DataFrame):
                raise InvalidInputError(f"{source.shown}: {key} is a {type(obj).__name__}, not a frame")
            out.extend(_split(source, key, _to_polars(obj, source, key, tz)))
    if not out:
        raise InvalidInputError(f"{source.shown}: holds no frames")
    return out


def _split(source: Source, key: str, df: pl.DataFrame) -> list[Frame]:
    cols = [c for c in df.columns if c not in ("symbol", "ts")]
    lower = {c.lower(): c for c in cols}
    frames = []
    if source.layout == "hashed" and all(c in lower for c in _OHLC):
        bar_cols = [lower[c] for c in (*_OHLC, "volume") if c in lower]
        frames.append(Frame(source, key, "bars", None,
                            df.select("symbol", "ts", *bar_cols).rename({c: c.lower() for c in bar_cols})))
        cols = [c for c in cols if c not in bar_cols]
    if cols:
        name = source.set_name
        if name is None:
            bare = key.strip("/").replace("/", "_")
            name = set_name(bare) if bare and bare.lower() not in _GENERIC_KEYS else f"legacy_{source.hash}"
        frames.append(Frame(source, key, "features", name, df.select("symbol", "ts", *cols)))
    return frames


def _time_column(pdf: Any, source: Source, key: str) -> str:
    import pandas as pd

    stamps = [c for c in pdf.columns if pd.api.types.is_datetime64_any_dtype(pdf[c])]
    for name in _TIME_NAMES:
        for c in stamps:
            if str(c).lower() == name:
                return str(c)
    if len(stamps) == 1:
        return str(stamps[0])
    raise InvalidInputError(f"{source.shown}: {key} has no single timestamp index or column (a DatetimeIndex, or a "
                            f"column named ts, timestamp or date); found {[str(c) for c in stamps] or 'none'}")


def _to_polars(obj: Any, source: Source, key: str, tz: str | None) -> pl.DataFrame:
    import pandas as pd

    pdf = obj.reset_index() if not isinstance(obj.index, pd.RangeIndex) else obj.copy()
    pdf.columns = [str(c) for c in pdf.columns]
    ts = _time_column(pdf, source, key)
    stamps = pdf[ts]
    if stamps.dt.tz is None:
        if tz is None:
            raise InvalidInputError(f"{source.shown}: {key}: timestamps are timezone-naive; give the zone they are "
                                    "in (tz='UTC', --tz UTC)", column=ts)
        stamps = stamps.dt.tz_localize(tz)
    pdf[ts] = stamps.dt.tz_convert("UTC")
    symbols = [c for c in pdf.columns if c.lower() == "symbol"]
    pdf = pdf.rename(columns={ts: "ts", **({symbols[0]: "symbol"} if symbols else {})})
    if not symbols:
        pdf.insert(0, "symbol", source.symbol)
    values = [c for c in pdf.columns if c not in ("symbol", "ts")]
    for c in values:
        if not (pd.api.types.is_numeric_dtype(pdf[c]) or pd.api.types.is_bool_dtype(pdf[c])):
            raise InvalidInputError(f"{source.shown}: {key}: column {c!r} is {pdf[c].dtype}, not numbers", column=c)
    df: pl.DataFrame = pl.from_pandas(pdf[["symbol", "ts", *values]])
    return df.with_columns(pl.col("symbol").cast(pl.String), pl.col("ts").cast(pl.Datetime("us", "UTC")),
                           *(pl.col(c).cast(pl.Float64) for c in values))
