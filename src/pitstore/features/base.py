"""Feature and feature-set definitions: plain, immutable descriptions of what to compute."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import polars as pl

from pitstore.errors import DefinitionError
from pitstore.timeutil import parse_timeframe, to_timedelta

__all__ = ["Feature", "FeatureKind", "FeatureSet", "Kernel", "TalibCall", "param_suffix"]

FeatureKind = Literal["builtin", "talib", "expr", "python"]
# A kernel computes one feature for one symbol: input columns (float64, time order) in, outputs out; the second
# argument is the absolute position of the first value (0: the symbol's first stored bar; one int per row for a
# matrix), which window kernels anchor their blocks to (pitstore.features.windows).
Kernel = Callable[[Mapping[str, np.ndarray], "int | np.ndarray"], Sequence[np.ndarray]]
# The TA-Lib function behind a feature: its name and keyword parameters (its inputs are the feature's inputs,
# in order). The batch engine calls it; a live update steps TA-Lib's streaming handle of the same function.
TalibCall = tuple[str, Mapping[str, Any]]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def param_suffix(values: Iterable[Any]) -> str:
    """``(12, 26, 9)`` -> ``"12_26_9"``: names stay identifiers, so ``1.5`` -> ``1p5`` and ``-2`` -> ``m2``.

    >>> param_suffix([20, 2.0, 1.5, -2, 1e-7])
    '20_2_1p5_m2_0p0000001'
    """
    parts = []
    for v in values:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        text = np.format_float_positional(v, trim="-") if isinstance(v, float) else str(v)
        parts.append(text.replace("-", "m").replace(".", "p"))
    return "_".join(parts)


@dataclass(frozen=True, eq=False)
class Feature:
    """One feature: a named computation over one symbol's bars, with one or more output columns.

    Build features with the library functions (``sma(50)``, ``talib("RSI", timeperiod=14)``,
    ``expr(...)``, ``@feature``), not with this constructor. ``alias(name)`` renames the outputs.
    """

    name: str
    kind: FeatureKind
    func: str
    params: Mapping[str, Any]
    outputs: tuple[str, ...]
    output_suffixes: tuple[str, ...]
    inputs: tuple[str, ...]
    lookback: int
    recursive: bool = False
    description: str = ""
    version: str | None = None
    kernel: Kernel | None = field(default=None, repr=False)
    talib: TalibCall | None = field(default=None, repr=False)
    expr: pl.Expr | None = field(default=None, repr=False)
    fn: Callable[..., Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise DefinitionError(f"invalid feature name {self.name!r}: use letters, digits and '_'")
        if self.lookback < 0:
            raise DefinitionError(f"feature {self.name!r}: lookback must be >= 0, got {self.lookback}")

    def alias(self, name: str) -> Feature:
        """The same feature with outputs renamed: ``name``, or ``name_<suffix>`` for multi-output ones."""
        return replace(self, name=name, outputs=_output_names(name, self.output_suffixes))

    def tagged(self, version: str) -> Feature:
        """The same feature with an explicit version tag (changes its fingerprint)."""
        return replace(self, version=version)

    def spec(self) -> dict[str, Any]:
        """The canonical description that the fingerprint hashes (code is added by the fingerprint)."""
        return {
            "kind": self.kind,
            "func": self.func,
            "params": dict(self.params),
            "outputs": list(self.outputs),
            "inputs": list(self.inputs),
            "lookback": self.lookback,
            "version": self.version,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"<Feature {self.name}: {self.func}({args}) -> {', '.join(self.outputs)}>"


def _output_names(name: str, suffixes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{name}_{s}" if s else name for s in suffixes)


def make_feature(
    *,
    name: str,
    kind: FeatureKind,
    func: str,
    params: Mapping[str, Any],
    output_suffixes: Sequence[str] = ("",),
    inputs: Sequence[str],
    lookback: int,
    recursive: bool = False,
    description: str = "",
    kernel: Kernel | None = None,
    talib: TalibCall | None = None,
    expr: pl.Expr | None = None,
    fn: Callable[..., Any] | None = None,
) -> Feature:
    suffixes = tuple(output_suffixes)
    return Feature(
        name=name,
        kind=kind,
        func=func,
        params=dict(params),
        outputs=_output_names(name, suffixes),
        output_suffixes=suffixes,
        inputs=tuple(inputs),
        lookback=int(lookback),
        recursive=recursive,
        description=description,
        kernel=kernel,
        talib=talib,
        expr=expr,
        fn=fn,
    )


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """The unit of storage and versioning: a name, a timeframe, features, and serving rules.

    >>> from pitstore import FeatureSet, sma, rsi
    >>> fs = FeatureSet("daily_ta", [sma(50), rsi(14)], timeframe="1d")
    >>> fs.columns
    ('sma_50', 'rsi_14')
    """

    name: str
    features: tuple[Feature, ...]
    timeframe: str = "1d"
    ttl: timedelta | None = None
    availability_lag: timedelta = timedelta(0)
    version: str | None = None
    description: str = ""

    def __init__(
        self,
        name: str,
        features: Iterable[Feature],
        *,
        timeframe: str = "1d",
        ttl: timedelta | str | None = None,
        availability_lag: timedelta | str | None = None,
        version: str | None = None,
        description: str = "",
    ) -> None:
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", name):
            raise DefinitionError(
                f"invalid feature set name {name!r}: letters, digits and '_', starting with a letter"
            )
        feats = tuple(features)
        if not feats:
            raise DefinitionError(f"feature set {name!r} has no features")
        for f in feats:
            if not isinstance(f, Feature):
                raise DefinitionError(f"feature set {name!r}: {f!r} is not a Feature")
        parse_timeframe(timeframe)
        lag = to_timedelta(availability_lag) or timedelta(0)
        ttl_td = to_timedelta(ttl)
        if lag < timedelta(0):
            raise DefinitionError(f"feature set {name!r}: availability_lag must not be negative")
        if ttl_td is not None and ttl_td <= timedelta(0):
            raise DefinitionError(f"feature set {name!r}: ttl must be positive")
        if ttl_td is not None and lag >= ttl_td:
            # A row is available from ts + lag and stale after ts + ttl: it would be fresh for one instant at most.
            raise DefinitionError(f"feature set {name!r}: availability_lag ({lag}) must be less than ttl ({ttl_td}),"
                                  " else every row is stale as soon as it is available")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "timeframe", timeframe)
        object.__setattr__(self, "ttl", ttl_td)
        object.__setattr__(self, "availability_lag", lag)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "description", description)
        check_unique_outputs(feats)

    @property
    def columns(self) -> tuple[str, ...]:
        """Output column names, in definition order."""
        return tuple(c for f in self.features for c in f.outputs)

    @property
    def lookback(self) -> int:
        """The largest lookback of its features (bars of history the set needs)."""
        return max(f.lookback for f in self.features)

    def __repr__(self) -> str:
        return f"<FeatureSet {self.name} [{self.timeframe}]: {', '.join(self.columns)}>"


def check_unique_outputs(features: Sequence[Feature]) -> None:
    seen: dict[str, str] = {}
    for f in features:
        for col in f.outputs:
            if col in ("symbol", "ts"):
                raise DefinitionError(f"feature {f.name!r}: output name {col!r} is reserved")
            if col in seen:
                raise DefinitionError(
                    f"duplicate output column {col!r} (from {seen[col]!r} and {f.name!r}); "
                    "rename one with .alias()"
                )
            seen[col] = f.name
