"""pitstore: a point-in-time feature store for market data.

Compute features once and get exactly the same values everywhere, never from the future.

>>> import pitstore
>>> bars = pitstore.testing.synthetic_bars(n_symbols=3, n_bars=100)
>>> out = pitstore.compute(pitstore.standard_features(), bars)
>>> out.columns[2:]
['ret_5d', 'ret_20d', 'ret_60d', 'vol_20d', 'vol_60d', 'mom_20d', 'mom_60d']
"""

from importlib.metadata import PackageNotFoundError, version

from pitstore import testing
from pitstore.cache import CachedCompute, WarmReport
from pitstore.catalog.versions import CleanupReport, VersionSummary
from pitstore.config import Settings
from pitstore.errors import (
    BackendError,
    BackendUnavailableError,
    CacheCorruptionError,
    ConfigError,
    ConflictError,
    DefinitionError,
    FeatureSetNotFoundError,
    InvalidInputError,
    LookaheadError,
    MissingDependencyError,
    NotFoundError,
    PitstoreError,
    ReadOnlyStoreError,
    RetentionError,
    SchemaMismatchError,
    VersionNotFoundError,
)
from pitstore.features import (
    Feature,
    FeatureMetadata,
    FeatureRef,
    FeatureSet,
    Registry,
    VersionInfo,
    atr,
    bollinger,
    compute,
    ema,
    expr,
    feature,
    feature_metadata,
    fingerprint,
    list_features,
    log_ret,
    macd,
    mom,
    ret,
    rsi,
    sma,
    standard_features,
    talib,
    vol,
    vwap,
    zscore,
)
from pitstore.features.lookahead import check_lookahead
from pitstore.frames import Frame, FrameKind
from pitstore.history.tiering import TierReport
from pitstore.live.engine import PushReport
from pitstore.offline.backfill import BackfillReport
from pitstore.online.serving import FeatureVector
from pitstore.ops.housekeeping import GcReport, VerifyReport
from pitstore.scale.results import HistoricalDataset
from pitstore.sources.bars import validate_bars
from pitstore.sources.ingest import IngestReport
from pitstore.sources.legacy.hdf5 import ImportReport
from pitstore.status import Status
from pitstore.store import Store
from pitstore.timeutil import periods_per_year

try:
    __version__ = version("pitstore")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "BackfillReport",
    "CacheCorruptionError",
    "CachedCompute",
    "CleanupReport",
    "ConfigError",
    "ConflictError",
    "DefinitionError",
    "Feature",
    "FeatureMetadata",
    "FeatureRef",
    "FeatureSet",
    "FeatureSetNotFoundError",
    "FeatureVector",
    "Frame",
    "FrameKind",
    "GcReport",
    "HistoricalDataset",
    "ImportReport",
    "IngestReport",
    "InvalidInputError",
    "LookaheadError",
    "MissingDependencyError",
    "NotFoundError",
    "PitstoreError",
    "PushReport",
    "ReadOnlyStoreError",
    "Registry",
    "RetentionError",
    "SchemaMismatchError",
    "Settings",
    "Status",
    "Store",
    "TierReport",
    "VerifyReport",
    "VersionInfo",
    "VersionNotFoundError",
    "VersionSummary",
    "WarmReport",
    "__version__",
    "atr",
    "bollinger",
    "check_lookahead",
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
    "periods_per_year",
    "ret",
    "rsi",
    "sma",
    "standard_features",
    "talib",
    "testing",
    "validate_bars",
    "vol",
    "vwap",
    "zscore",
]
