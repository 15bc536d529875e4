"""A browsable catalogue of every feature pitstore ships: the built-ins and every TA-Lib function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pitstore.errors import NotFoundError
from pitstore.features.library import BUILTINS
from pitstore.features.talib_features import talib, talib_functions, talib_info

__all__ = ["FeatureMetadata", "feature_metadata", "list_features"]

_TALIB_PREFIX = "talib."


@dataclass(frozen=True)
class FeatureMetadata:
    """What a user needs to pick a feature: inputs, parameters with defaults, outputs, lookback."""

    name: str
    kind: str
    group: str
    inputs: tuple[str, ...]
    params: dict[str, Any]
    outputs: tuple[str, ...]
    lookback: int
    recursive: bool
    description: str


def _builtin(name: str) -> FeatureMetadata:
    spec = BUILTINS[name]
    from pitstore.features.library import _build

    f = _build(name, **spec.params)
    return FeatureMetadata(
        name=name, kind="builtin", group="pitstore", inputs=spec.inputs, params=dict(spec.params),
        outputs=f.outputs, lookback=f.lookback, recursive=spec.recursive, description=spec.description,
    )


def _talib(func: str) -> FeatureMetadata:
    info = talib_info(func)
    f = talib(func)
    return FeatureMetadata(
        name=_TALIB_PREFIX + func, kind="talib", group=str(info.get("group", "")), inputs=f.inputs,
        params=dict(info["parameters"]), outputs=f.outputs, lookback=f.lookback, recursive=f.recursive,
        description=str(info.get("display_name", "")),
    )


def list_features(kind: str | None = None) -> list[FeatureMetadata]:
    """Metadata of every available feature (``kind``: ``"builtin"`` or ``"talib"`` to filter).

    >>> [m.name for m in list_features("builtin")][:3]
    ['atr', 'bollinger', 'ema']
    """
    out: list[FeatureMetadata] = []
    if kind in (None, "builtin"):
        out += [_builtin(n) for n in sorted(BUILTINS)]
    if kind in (None, "talib"):
        out += [_talib(n) for n in talib_functions()]
    return out


def feature_metadata(name: str) -> FeatureMetadata:
    """Metadata of one feature: a built-in (``"rsi"``) or a TA-Lib function (``"talib.RSI"`` or ``"RSI"``).

    >>> feature_metadata("macd").outputs
    ('macd_12_26_9', 'macd_12_26_9_signal', 'macd_12_26_9_hist')
    """
    if name in BUILTINS:
        return _builtin(name)
    func = name[len(_TALIB_PREFIX):] if name.startswith(_TALIB_PREFIX) else name
    if func.upper() in talib_functions():
        return _talib(func.upper())
    raise NotFoundError(f"no feature named {name!r}; list_features() shows them all")
