"""Every TA-Lib function as a feature: ``talib("RSI", timeperiod=14)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
import talib as _ta
from talib import abstract as _abstract

from pitstore.errors import DefinitionError
from pitstore.features.base import Feature, Kernel, TalibCall, make_feature, param_suffix

__all__ = ["talib", "talib_functions", "talib_info", "talib_kernel"]

# Functions whose value depends on all earlier history although TA-Lib does not flag them unstable.
_RECURSIVE_EXTRA = frozenset(
    {"EMA", "DEMA", "TEMA", "T3", "TRIX", "MACD", "MACDEXT", "MACDFIX", "APO", "PPO", "ADOSC", "AD", "OBV",
     "MA", "MAVP", "BBANDS", "STOCH", "STOCHF", "STOCHRSI"}
)


@cache
def talib_functions() -> tuple[str, ...]:
    """Names of every function of the installed TA-Lib."""
    return tuple(sorted(_ta.get_functions()))  # type: ignore[no-untyped-call]


@cache
def talib_info(name: str) -> dict[str, Any]:
    """TA-Lib's own metadata for ``name`` (inputs, parameters with defaults, outputs, flags, group)."""
    if name not in talib_functions():
        raise DefinitionError(
            f"unknown TA-Lib function {name!r}; see pitstore.list_features() for the {len(talib_functions())}"
            " available"
        )
    info: dict[str, Any] = dict(_abstract.Function(name).info)  # type: ignore[attr-defined]
    return info


def _is_recursive(name: str, info: Mapping[str, Any]) -> bool:
    flags = info.get("function_flags") or []
    if any("unstable" in f or "path-dependent" in f for f in flags):
        return True
    # MA-type parameters can select an EMA-family average.
    return name in _RECURSIVE_EXTRA or "matype" in info["parameters"]


def _input_columns(info: Mapping[str, Any], overrides: Mapping[str, Any]) -> tuple[str, ...]:
    unknown = set(overrides) - set(info["input_names"])
    if unknown:
        raise DefinitionError(
            f"TA-Lib {info['name']}: unknown input(s) {sorted(unknown)}; it takes {list(info['input_names'])}"
        )
    cols: list[str] = []
    for key, default in info["input_names"].items():
        value = overrides.get(key, default)
        cols.extend([value] if isinstance(value, str) else list(value))
    return tuple(cols)


def talib_kernel(call: TalibCall, inputs: Sequence[str]) -> Kernel:
    """The batch kernel of a TA-Lib call: the function over the input columns, its outputs as float64."""
    name, params = call
    fn = getattr(_ta, name)

    def kernel(a: Mapping[str, np.ndarray], start: int | np.ndarray = 0) -> Sequence[np.ndarray]:
        del start  # TA-Lib runs from the first value it is given
        out = fn(*(a[c] for c in inputs), **params)
        outs = out if isinstance(out, tuple | list) else (out,)
        return [np.asarray(o, dtype=np.float64) for o in outs]

    return kernel


def talib(function: str, *, inputs: Mapping[str, Any] | None = None, **params: Any) -> Feature:
    """Any TA-Lib function as a feature, with its parameters (defaults filled in).

    Inputs default to the bar columns TA-Lib names (``close``, ``high``, ...); ``inputs={"price": "open"}``
    maps a TA-Lib input to another column. Multi-output functions give one column per output.

    >>> talib("RSI", timeperiod=14).outputs
    ('talib_rsi_14',)
    >>> talib("BBANDS", timeperiod=20).outputs[0]
    'talib_bbands_20_2_2_0_upperband'
    """
    name = function.upper()
    info = talib_info(name)
    defaults: dict[str, Any] = dict(info["parameters"])
    unknown = set(params) - set(defaults)
    if unknown:
        raise DefinitionError(
            f"TA-Lib {name}: unknown parameter(s) {sorted(unknown)}; it takes {list(defaults)}"
        )
    resolved: dict[str, Any] = {}
    for key, default in defaults.items():
        value = params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise DefinitionError(f"TA-Lib {name}: parameter {key} must be a number, got {value!r}")
        if isinstance(default, int) and float(value) != int(value):
            raise DefinitionError(f"TA-Lib {name}: parameter {key} must be an integer, got {value!r}")
        resolved[key] = type(default)(value)
    cols = _input_columns(info, inputs or {})
    try:
        lookback = int(_abstract.Function(name, **resolved).lookback)  # type: ignore[attr-defined]
    except Exception as exc:  # TA-Lib rejects some out-of-range parameters here ...
        raise DefinitionError(f"TA-Lib {name}: invalid parameters {resolved}: {exc}") from exc
    if lookback < 0:  # ... and signals others with a lookback of -1
        raise DefinitionError(f"TA-Lib {name}: parameters out of TA-Lib's range: {resolved}")
    outputs = list(info["output_names"])
    suffix = param_suffix(resolved.values())
    return make_feature(
        name=f"talib_{name.lower()}" + (f"_{suffix}" if suffix else ""),
        kind="talib",
        func=name,
        params={**resolved, **({"inputs": dict(inputs)} if inputs else {})},
        output_suffixes=("",) if len(outputs) == 1 else tuple(outputs),
        inputs=cols,
        lookback=lookback,
        recursive=_is_recursive(name, info),
        description=f"TA-Lib {name}: {info.get('display_name', '')}",
        kernel=talib_kernel((name, resolved), cols),
        talib=(name, resolved),
    )
