"""Feature definitions, the built-in library, the engine and the registry."""

from pitstore.features.base import Feature, FeatureSet
from pitstore.features.catalogue import FeatureMetadata, feature_metadata, list_features
from pitstore.features.custom import expr, feature
from pitstore.features.engine import compute
from pitstore.features.library import (
    atr,
    bollinger,
    ema,
    log_ret,
    macd,
    mom,
    ret,
    rsi,
    sma,
    standard_features,
    vol,
    vwap,
    zscore,
)
from pitstore.features.registry import FeatureRef, Registry, VersionInfo, fingerprint
from pitstore.features.talib_features import talib

__all__ = [
    "Feature",
    "FeatureMetadata",
    "FeatureRef",
    "FeatureSet",
    "Registry",
    "VersionInfo",
    "atr",
    "bollinger",
    "compute",
    "ema",
    "expr",
    "feature",
    "feature_metadata",
    "fingerprint",
    "list_features",
    "log_ret",
    "macd",
    "mom",
    "ret",
    "rsi",
    "sma",
    "standard_features",
    "talib",
    "vol",
    "vwap",
    "zscore",
]
