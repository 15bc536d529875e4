"""A browsable catalogue of every feature pitstore ships: the built-ins and every TA-Lib function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pitstore.errors import DefinitionError, InvalidInputError, NotFoundError
from pitstore.features.base import Feature, param_suffix
from pitstore.features.library import BUILTINS
from pitstore.features.talib_features import talib, talib_functions, talib_info

__all__ = ["FeatureMetadata", "build_feature", "feature_metadata", "list_features", "parse_indicator"]

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


def build_feature(name: str, params: dict[str, Any] | None = None) -> Feature:
    """A feature from its catalogue name and parameters (defaults filled in): ``build_feature("rsi", {"n": 21})``,
    ``build_feature("talib.BBANDS", {"timeperiod": 10})``. Unknown names are NotFoundError, bad parameters
    DefinitionError.

    >>> build_feature("macd", {"fast": 5}).outputs[0]
    'macd_5_26_9'
    """
    params = dict(params or {})
    if name in BUILTINS:
        from pitstore.features.library import _build

        spec = BUILTINS[name]
        unknown = sorted(set(params) - set(spec.params))
        if unknown:
            raise DefinitionError(f"{name}: unknown parameter(s) {unknown}; it takes {list(spec.params)}")
        return _build(name, **{**spec.params, **params})
    func = name[len(_TALIB_PREFIX):] if name.startswith(_TALIB_PREFIX) else name
    if func.upper() in talib_functions():
        return talib(func.upper(), **params)
    raise NotFoundError(f"no feature named {name!r}; list_features() shows them all")


def parse_indicator(text: str) -> Feature:
    """A built-in from its default output name: ``sma_50`` is ``sma(n=50)``, ``macd_12_26_9`` is
    ``macd(12, 26, 9)``, ``rsi`` is ``rsi()`` with its defaults; parameters in the order the catalogue lists
    them, trailing ones optional.

    >>> parse_indicator("bollinger_20_2").outputs
    ('bollinger_20_2_upper', 'bollinger_20_2_middle', 'bollinger_20_2_lower')
    """
    func, *values = text.split("_")
    for i in range(len(values) + 1):  # the longest built-in name that prefixes text (names may hold '_')
        head = "_".join([func, *values[:i]])
        if head in BUILTINS and all(_is_number(v) for v in values[i:]):
            spec = BUILTINS[head]
            rest = values[i:]
            if len(rest) > len(spec.params):
                break
            params = {k: _number(v, spec.params[k]) for k, v in zip(spec.params, rest, strict=False)}
            if "_".join([head, param_suffix(params.values())]).rstrip("_") != text:
                break  # e.g. 'sma_050': not a name pitstore gives
            feature = build_feature(head, params)
            # Parameters left out take their defaults; the columns keep the name asked for (vol_20, rsi).
            return feature if feature.name == text else feature.alias(text)
    raise InvalidInputError(f"{text!r} is not a built-in indicator name such as 'sma_50', 'rsi_14' or "
                            "'macd_12_26_9' (see the catalogue)", column="indicators", value=text)


def _is_number(text: str) -> bool:
    return text.replace("p", ".", 1).replace("m", "-", 1).lstrip("-").replace(".", "", 1).isdigit()


def _number(text: str, default: Any) -> int | float:
    value = float(text.replace("p", ".").replace("m", "-"))
    return int(value) if isinstance(default, int) and value.is_integer() else value
