"""Each client method as data: its arguments validated (before any request, with the library's typed errors),
the HTTP request, how its answer is read, and the same call on a local fallback Store.

Both clients (sync and async) run these; only the waiting differs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import polars as pl
import pyarrow as pa

from pitstore.client._http import Request
from pitstore.errors import InvalidInputError, NotFoundError
from pitstore.features.catalogue import FeatureMetadata
from pitstore.features.catalogue import _is_number as is_number
from pitstore.frames import FrameKind, frame_kind, from_polars, to_polars
from pitstore.live.engine import PushReport
from pitstore.online.serving import FeatureVector
from pitstore.server.wire import ARROW, MAX_SYMBOLS, frame_response_body
from pitstore.sources.bars import validate_symbol
from pitstore.status import FALLBACK, OK
from pitstore.store import Store
from pitstore.timeutil import utc

__all__ = ["SOURCE_COLUMN", "Call", "Catalogue", "frame_of_vectors"]

R = TypeVar("R")
SOURCE_COLUMN = "pitstore_source"  # added, = "fallback", to frames a local fallback store answered
_ARROW_IO = {"Accept": ARROW}
_OUTPUTS = ("polars", "pandas", "arrow")


@dataclass(frozen=True)
class Call(Generic[R]):
    name: str  # the client method: the metrics label
    request: Request
    parse: Callable[[Any], R]  # httpx.Response -> result
    local: Callable[[Store], R] | None = None  # the same call on a fallback store, its result marked as such


# --- arguments -------------------------------------------------------------------------------------------

_valid_symbol = lru_cache(maxsize=65_536)(validate_symbol)  # a pure check; the hot loop asks the same symbols

def symbols_of(symbols: Sequence[str] | str) -> list[str]:
    items = [symbols] if isinstance(symbols, str) else symbols
    if not items or (type(items) not in (list, tuple) and not isinstance(items, Sequence)):
        raise InvalidInputError("no symbols given", column="symbols", value=items or None)
    if len(items) > MAX_SYMBOLS:
        raise InvalidInputError(f"at most {MAX_SYMBOLS} symbols per request", column="symbols", value=len(items))
    return [_valid_symbol(s) if type(s) is str else validate_symbol(s) for s in items]


def features_of(features: Sequence[str] | str) -> list[str]:
    items = [features] if isinstance(features, str) else list(features)
    if not items:
        raise InvalidInputError("no features given", column="features")
    for f in items:
        if not isinstance(f, str) or not f.strip() or "," in f:
            raise InvalidInputError("each feature reference must be a non-empty name without commas, e.g. "
                                    "'daily_core' or 'daily_core@1:ret_5d'", column="features", value=f)
    return [f.strip() for f in items]


def _time(value: datetime | str | None, name: str) -> str | None:
    return None if value is None else utc(value, name).isoformat()


def output_of(output: str) -> FrameKind:
    if output not in _OUTPUTS:
        raise InvalidInputError("must be 'polars', 'pandas' or 'arrow'", column="output", value=output)
    return output  # type: ignore[return-value]


def _params(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}


def _path(prefix: str, symbol: str) -> str:
    return prefix + quote(validate_symbol(symbol), safe="")


# --- answers ---------------------------------------------------------------------------------------------

def _vector(row: dict[str, Any]) -> FeatureVector:
    ts = row["ts"]
    return FeatureVector(row["symbol"], None if ts is None else datetime.fromisoformat(ts), row["status"],
                         row["values"])


def _marked(v: FeatureVector) -> FeatureVector:
    """A vector a fallback store served: ``ok`` says ``fallback``; stale and missing keep their (null) say."""
    return v._replace(status=FALLBACK) if v.status == OK else v


def frame_of_vectors(vectors: Sequence[FeatureVector]) -> pl.DataFrame:
    """Vectors as the frame ``Store.get_online(output=...)`` gives: symbol, ts, the features (Float64), status."""
    names = list(vectors[0].values) if vectors else []
    schema: dict[str, pl.DataType] = {"symbol": pl.String(), "ts": pl.Datetime("us", "UTC"),
                                      **dict.fromkeys(names, pl.Float64()), "status": pl.String()}
    return pl.DataFrame([{"symbol": v.symbol, "ts": v.ts, **v.values, "status": v.status} for v in vectors],
                        schema=schema)


def _arrow_frame(resp: Any) -> pl.DataFrame:
    out = pl.from_arrow(pa.ipc.open_stream(resp.content).read_all())
    assert isinstance(out, pl.DataFrame)
    return out


def _fallback_frame(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.lit("fallback").alias(SOURCE_COLUMN))


def _between(df: pl.DataFrame, start: datetime | str | None, end: datetime | str | None) -> pl.DataFrame:
    if start is not None:
        df = df.filter(pl.col("ts") >= utc(start, "start"))
    if end is not None:
        df = df.filter(pl.col("ts") <= utc(end, "end"))
    return df


# --- the calls -------------------------------------------------------------------------------------------

def online(symbols: list[str], features: list[str]) -> Call[list[FeatureVector]]:
    """POST (a JSON body: 50 symbols do not fit every URL limit); a read, so idempotent."""
    return Call("get_online", Request("POST", "/v1/online", True, json={"symbols": symbols, "features": features}),
                lambda r: [_vector(row) for row in r.json()["rows"]],
                lambda s: [_marked(v) for v in s.get_online(symbols, features)])


def features(symbol: str, as_of: datetime | str, names: Sequence[str] | str,
             as_known_at: datetime | str | None) -> Call[FeatureVector]:
    feats, t, known = features_of(names), _time(as_of, "as_of"), _time(as_known_at, "as_known_at")
    assert t is not None
    return Call("get_features", Request("GET", _path("/v1/features/", symbol), True,
                                        params=_params(as_of=t, features=",".join(feats), as_known_at=known)),
                lambda r: _vector(r.json()),
                lambda s: _marked(s.get_features(symbol, utc(as_of, "as_of"), feats,
                                                 as_known_at=None if known is None else utc(known, "as_known_at"))))


def historical(entities: Any, names: Sequence[str] | str, as_known_at: datetime | str | None) -> Call[Any]:
    kind, feats, known = frame_kind(entities), features_of(names), _time(as_known_at, "as_known_at")
    df = to_polars(entities)
    if df.is_empty() or "symbol" not in df.columns or "ts" not in df.columns:
        raise InvalidInputError("entities must be a non-empty frame with 'symbol' and 'ts' columns",
                                column="entities")
    body, _ = frame_response_body(df, True)
    return Call("get_historical",
                Request("POST", "/v1/historical", True, params=_params(features=",".join(feats), as_known_at=known),
                        content=bytes(body), headers={"Content-Type": ARROW, **_ARROW_IO}),
                lambda r: from_polars(_arrow_frame(r), kind),
                lambda s: from_polars(_fallback_frame(s.get_historical(
                    df, feats, as_known_at=None if known is None else utc(known, "as_known_at"), output="polars")),
                    kind))


def ohlcv(symbol: str, start: datetime | str | None, end: datetime | str | None, timeframe: str | None,
          output: str) -> Call[Any]:
    kind = output_of(output)
    return Call("get_ohlcv", Request("GET", _path("/v1/bars/", symbol), True, headers=_ARROW_IO,
                                     params=_params(start=_time(start, "start"), end=_time(end, "end"),
                                                    timeframe=timeframe)),
                lambda r: from_polars(_arrow_frame(r), kind),
                lambda s: from_polars(_fallback_frame(_between(s.bars(symbol, timeframe=timeframe), start, end)),
                                      kind))


def indicators(symbol: str, start: datetime | str | None, end: datetime | str | None, names: Sequence[str] | str,
               timeframe: str | None, output: str, catalogue: Catalogue) -> Call[Any]:
    kind = output_of(output)
    items = [names] if isinstance(names, str) else list(names)
    if not items or not all(isinstance(n, str) and n and "," not in n for n in items):
        raise InvalidInputError("give indicator names such as 'sma_50', 'rsi_14'", column="indicators",
                                value=names)
    catalogue.check_indicators(items)
    t0, t1 = _time(start, "start"), _time(end, "end")
    return Call("get_indicators",
                Request("GET", _path("/v1/indicators/", symbol), True, headers=_ARROW_IO,
                        params=_params(indicators=",".join(items), start=t0, end=t1, timeframe=timeframe)),
                lambda r: from_polars(_arrow_frame(r), kind),
                lambda s: from_polars(_fallback_frame(s.get_indicators(
                    symbol, items, None if t0 is None else utc(t0, "start"), None if t1 is None else utc(t1, "end"),
                    timeframe=timeframe)), kind))


def compute(name: str, symbol: str, start: datetime | str | None, end: datetime | str | None,
            parameters: dict[str, Any] | None, timeframe: str | None, output: str,
            catalogue: Catalogue) -> Call[Any]:
    kind = output_of(output)
    if not isinstance(name, str) or not name:
        raise InvalidInputError("is required: a catalogue feature name", column="feature", value=name)
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInputError("must be a dict of parameter values", column="parameters", value=parameters)
    catalogue.check_feature(name)
    t0, t1 = _time(start, "start"), _time(end, "end")
    body = {"feature": name, "symbol": validate_symbol(symbol), "params": parameters or {}, "start": t0, "end": t1,
            "timeframe": timeframe}
    return Call("compute_feature", Request("POST", "/v1/compute", True, json=body, headers=_ARROW_IO),
                lambda r: from_polars(_arrow_frame(r), kind),
                lambda s: from_polars(_fallback_frame(s.compute_feature(
                    name, symbol, None if t0 is None else utc(t0, "start"), None if t1 is None else utc(t1, "end"),
                    params=parameters, timeframe=timeframe)), kind))


def _metadata(d: dict[str, Any]) -> FeatureMetadata:
    return FeatureMetadata(**{**d, "inputs": tuple(d["inputs"]), "outputs": tuple(d["outputs"])})


def catalog(catalogue: Catalogue) -> Call[list[FeatureMetadata]]:
    def parse(r: Any) -> list[FeatureMetadata]:
        out = [_metadata(d) for d in r.json()["features"]]
        catalogue.learn(out)
        return out

    return Call("get_available_indicators", Request("GET", "/v1/catalog", True), parse)


def metadata(name: str, catalogue: Catalogue) -> Call[FeatureMetadata]:
    if not isinstance(name, str) or not name:
        raise InvalidInputError("is required: a catalogue feature name", column="name", value=name)
    catalogue.check_feature(name)
    return Call("get_indicator_metadata", Request("GET", "/v1/catalog/" + quote(name, safe=""), True),
                lambda r: _metadata(r.json()))


def stats() -> Call[dict[str, Any]]:
    return Call("stats", Request("GET", "/v1/stats", True), lambda r: r.json())


def _push_report(body: dict[str, Any]) -> PushReport:
    rows = {t: pl.DataFrame(r, infer_schema_length=None).with_columns(
        pl.col("ts").str.to_datetime(time_unit="us", time_zone="UTC")) if r else pl.DataFrame()
        for t, r in body["rows"].items()}
    return PushReport(rows=rows, bars=body["bars"], duplicates=body["duplicates"], restated=body["restated"],
                      pending_offline=body["pending_offline"])


def push(bars: Any) -> tuple[Call[PushReport], list[str]]:
    """A write: never retried (the service may have applied it before the connection dropped), never run on a
    fallback store (that would write somewhere else). Also the symbols pushed (their cached vectors go)."""
    df = to_polars(bars)
    if df.is_empty() or "symbol" not in df.columns:
        raise InvalidInputError("bars must be a non-empty frame with a 'symbol' column", column="bars")
    body, _ = frame_response_body(df, True)
    return (Call("push", Request("POST", "/v1/push", False, content=bytes(body), headers={"Content-Type": ARROW}),
                 lambda r: _push_report(r.json())),
            sorted(set(df["symbol"].cast(pl.String).to_list())))


class Catalogue:
    """The service's feature catalogue once fetched (``get_available_indicators``): names are then checked
    before any request; until then the service checks them."""

    def __init__(self) -> None:
        self.names: set[str] | None = None
        self.builtins: set[str] = set()

    def learn(self, features: Sequence[FeatureMetadata]) -> None:
        self.builtins = {f.name for f in features if f.kind == "builtin"}
        self.names = {f.name for f in features}

    def check_feature(self, name: str) -> None:
        if self.names is None:
            return
        bare = name.removeprefix("talib.")
        if name not in self.names and f"talib.{bare.upper()}" not in self.names:
            raise NotFoundError(f"no feature named {name!r} in the service's catalogue")

    def check_indicators(self, names: Sequence[str]) -> None:
        """``sma_50``: a built-in's name, then its parameters as numbers (the library's naming rule)."""
        if self.names is None:
            return
        for text in names:
            parts = text.split("_")
            if not any("_".join(parts[:i]) in self.builtins and all(is_number(p) for p in parts[i:])
                       for i in range(1, len(parts) + 1)):
                raise InvalidInputError(f"{text!r} is not a built-in indicator name such as 'sma_50', 'rsi_14' or "
                                        "'macd_12_26_9' (see the catalogue)", column="indicators", value=text)
