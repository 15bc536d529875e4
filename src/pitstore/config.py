"""Settings: one frozen object, resolved as keyword arguments > PITSTORE_* environment > pitstore.toml."""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pitstore.errors import ConfigError

__all__ = ["Settings", "root_path"]

# Defaults live here, one comment each.
_DEFAULT_ROOT = "./pitstore-data"  # embedded store root, relative to the working directory
_DEFAULT_LOCK_TIMEOUT = 30.0  # seconds a writer waits for the SQLite catalog lock before failing
_DEFAULT_ONLINE_URL = "sqlite://"  # the online tier: online.sqlite under the root (no server needed)
# "scheme:/..." or "scheme://...": a URL (two letters at least: "C:/data" is a Windows drive, not a scheme).
# One slash too, since Path("s3://b/x") has already collapsed to "s3:/b/x" when it arrives here.
_URL_ROOT = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):/")


@dataclass(frozen=True)
class Settings:
    """Resolved configuration, passed down to every component.

    >>> Settings.load(root="/tmp/x").root
    PosixPath('/tmp/x')
    """

    root: Path = Path(_DEFAULT_ROOT)
    lock_timeout: float = _DEFAULT_LOCK_TIMEOUT
    online_url: str = _DEFAULT_ONLINE_URL
    # Redis key prefix; None: "pitstore-<store id>", one per store, so stores sharing a Redis never share keys.
    # An explicit value is used as given (stores given the same one share rows: give each its own).
    online_namespace: str | None = None
    # The online tier on Redis when online_url is not set anywhere (online_url wins): PITSTORE_REDIS_URL alone suffices.
    redis_url: str | None = None
    postgres_url: str | None = None  # the history tier (optional): postgresql://...
    history_days: float = 30.0  # days of rows materialize keeps in the history tier
    live_flush_bars: int = 50_000  # pushed bars buffered before they are written to the offline tier
    # HTTP API key hashes, "read:<sha256>,admin:<sha256>" (pitstore keys create adds to <root>/api_keys.json too)
    api_keys: str | None = None
    max_body_bytes: int = 256 * 1024 * 1024  # one HTTP request body at most (1M Arrow look-ups are ~20 MB)
    # Cost tracking (stats, /metrics, the cache-miss log line), in the currency of your choice; 0: not tracked.
    cost_per_compute_second: float = 0.0
    cost_per_data_call: float = 0.0  # one upstream data call: each compute-cache miss makes one, a hit avoids one
    # Days past now a bar's ts may lie in ingest and push; later ones are refused as future-dated (a bad clock
    # or a typo would else freeze the symbol's online row: every real bar after it looks like a restatement).
    # 1 day covers clock skew, dates labelled in time zones ahead of UTC and bars stamped at their close.
    max_future_days: float = 1.0
    # True: every write is refused (ReadOnlyStoreError) and nothing under the root is written, reads included.
    # None (default): read-only exactly when the root (or its catalog) exists and is not writable by this user.
    read_only: bool | None = None
    # Bytes of decoded entries a store keeps in memory between reads; None: 1/8 of this machine's RAM; 0: none.
    entry_cache_bytes: int | None = None
    # Bytes of decoded feature rows one get_historical or read decodes at a time (estimated from the catalog): larger
    # reads go through the symbols in batches of about this much, each dropped once answered (issue #18 item 4).
    read_batch_bytes: int = 256 * 1024 * 1024
    # Team mode: the catalog in PostgreSQL (postgresql://...; "?schema=" picks its schema), data files still under
    # root. None: the embedded SQLite catalog, root/catalog.sqlite.
    catalog_url: str | None = None
    catalog_schema: str = "pitstore_catalog"  # the catalog's PostgreSQL schema when catalog_url has no ?schema=
    # Days superseded bar snapshots and feature entries are kept for as_known_at replays; gc then deletes them,
    # and as_known_at further back is refused (RetentionError): pitstore.catalog.retention.
    retention_days: float = 90.0
    # Where the data files are: None (the root), a local path or file:// URL, or an fsspec URL (s3://bucket/prefix).
    # Off the root, the root keeps only local state (locks, online.sqlite; catalog.sqlite without catalog_url).
    data_url: str | None = None
    # fsspec storage options of data_url as a JSON object (given as a dict or TOML table too, kept as its JSON),
    # e.g. {"endpoint_url": "http://127.0.0.1:9000"}; fsspec's own configuration and the AWS variables apply too.
    data_options: str | None = None
    # Appends kept as segments after a bar snapshot's base (pitstore.sources.segments); the append that would add one
    # more rewrites the symbol's bars as a new base (compaction). 0: every ingest writes whole snapshots.
    bar_segments: int = 16

    @property
    def storage_options(self) -> dict[str, Any]:
        """``data_options`` as the keyword arguments of the data_url's fsspec filesystem."""
        return dict(json.loads(self.data_options)) if self.data_options else {}

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def catalog_exists(self) -> bool:
        """Whether a store is there to open: the SQLite file under the root, or, in team mode, a catalog URL (its
        schema is made on first open, as ``pitstore init`` does)."""
        return bool(self.catalog_url) or self.catalog_path.is_file()

    @property
    def catalog_location(self) -> str:
        """Where the catalog is, for messages: the SQLite file, the PostgreSQL URL without its password, or the
        memory URL."""
        if not self.catalog_url:
            return str(self.catalog_path.resolve())
        if self.catalog_url.startswith("memory:"):  # no password to hide; urlsplit would drop an empty "//"
            return self.catalog_url
        parts = urlsplit(self.catalog_url)
        host = parts.hostname or ""
        netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()

    @property
    def refuses_writes(self) -> bool:
        """``read_only``, or when None (auto), whether an existing root or catalog is not writable by this process
        (a missing root is created as usual: nothing else could be meant)."""
        if self.read_only is not None:
            return self.read_only
        root, catalog = Path(self.root), self.catalog_path
        return (root.exists() and not os.access(root, os.W_OK)) or (not self.catalog_url and catalog.exists()
                                                                   and not os.access(catalog, os.W_OK))

    @property
    def max_future(self) -> timedelta:
        """How far past now a bar's ts may lie (``max_future_days``)."""
        return timedelta(days=self.max_future_days)

    @classmethod
    def load(cls, *, config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
        """Resolve settings: ``overrides`` > environment > ``pitstore.toml`` > defaults."""
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        toml_path = Path(config_file) if config_file is not None else Path("pitstore.toml")
        if toml_path.is_file():
            try:
                data = tomllib.loads(toml_path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{toml_path}: {exc}") from exc
            section = data.get("pitstore", data)
            for key, val in section.items():
                if key not in known:
                    raise ConfigError(f"{toml_path}: unknown setting {key!r}")
                values[key] = val
        elif config_file is not None:
            raise ConfigError(f"config file not found: {toml_path}")
        env_root = os.environ.get("PITSTORE_ROOT") or os.environ.get("FEATURE_STORE_PATH")
        if env_root:
            values["root"] = env_root
        for key in ("online_url", "online_namespace", "redis_url", "postgres_url", "lock_timeout", "history_days",
                    "live_flush_bars", "max_future_days", "api_keys", "max_body_bytes", "cost_per_compute_second",
                    "cost_per_data_call", "read_only", "entry_cache_bytes", "read_batch_bytes", "catalog_url",
                    "catalog_schema", "retention_days", "data_url", "data_options", "bar_segments"):
            env = os.environ.get(f"PITSTORE_{key.upper()}")
            if env:
                values[key] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("redis_url") and not values.get("online_url"):
            values["online_url"] = values["redis_url"]
        settings = replace(cls(), **values)
        return settings._checked()

    def _checked(self) -> Settings:
        try:
            lock_timeout = float(self.lock_timeout)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"lock_timeout must be a number, got {self.lock_timeout!r}") from exc
        if lock_timeout <= 0:
            raise ConfigError(f"lock_timeout must be positive, got {lock_timeout}")
        try:
            history_days, flush = float(self.history_days), int(self.live_flush_bars)
            max_body = int(self.max_body_bytes)
            costs = float(self.cost_per_compute_second), float(self.cost_per_data_call)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"history_days, live_flush_bars, max_body_bytes and costs must be numbers: {exc}") \
                from exc
        if self.online_namespace is not None and (not isinstance(self.online_namespace, str)
                                                  or not self.online_namespace.isprintable()
                                                  or not self.online_namespace):
            raise ConfigError(f"online_namespace must be a non-empty printable string, got {self.online_namespace!r}")
        if self.redis_url is not None and not (isinstance(self.redis_url, str)
                                               and self.redis_url.startswith(("redis://", "rediss://"))):
            raise ConfigError(f"redis_url must be a redis:// or rediss:// URL, got {self.redis_url!r}")
        if self.catalog_url is not None and not (isinstance(self.catalog_url, str) and self.catalog_url.startswith(
                ("postgresql://", "postgres://", "memory://"))):
            raise ConfigError(f"catalog_url must be a postgresql:// or memory:// URL, got {self.catalog_url!r}")
        if not isinstance(self.catalog_schema, str) or not 0 < len(self.catalog_schema.encode()) <= 63:
            raise ConfigError(f"catalog_schema must be a PostgreSQL schema name of 1 to 63 bytes, got"
                              f" {self.catalog_schema!r}")
        options = _options(self.data_options)
        if min(costs) < 0:
            raise ConfigError(f"cost_per_compute_second and cost_per_data_call must be >= 0, got {costs}")
        if max_body < 1:
            raise ConfigError(f"max_body_bytes must be positive, got {max_body}")
        if not history_days > 0 or flush < 1:
            raise ConfigError(f"history_days must be positive and live_flush_bars at least 1, got {history_days}"
                              f" and {flush}")
        future = _days(self.max_future_days, "max_future_days")
        try:
            entry_bytes = None if self.entry_cache_bytes is None else int(self.entry_cache_bytes)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"entry_cache_bytes must be a number of bytes, got {self.entry_cache_bytes!r}") from exc
        if entry_bytes is not None and entry_bytes < 0:
            raise ConfigError(f"entry_cache_bytes must not be negative, got {entry_bytes}")
        batch_bytes = _whole(self.read_batch_bytes, "read_batch_bytes", "a number of bytes", least=1)
        retention = _days(self.retention_days, "retention_days")
        segments = _whole(self.bar_segments, "bar_segments", "a whole number", least=0)
        return replace(self, root=root_path(self.root), read_only=_tristate(self.read_only),
                       entry_cache_bytes=entry_bytes, read_batch_bytes=batch_bytes, retention_days=retention,
                       data_options=options,
                       lock_timeout=lock_timeout, history_days=history_days, live_flush_bars=flush,
                       max_future_days=future, max_body_bytes=max_body, cost_per_compute_second=costs[0],
                       cost_per_data_call=costs[1], bar_segments=segments)


def _whole(value: object, name: str, what: str, *, least: int) -> int:
    """A setting that is a whole number >= ``least`` (0: not negative; 1: positive)."""
    try:
        n: int = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be {what}, got {value!r}") from exc
    if n < least:
        raise ConfigError(f"{name} must {'be positive' if least == 1 else 'not be negative'}, got {n}")
    return n


def _days(value: object, name: str) -> float:
    """A setting that is a number of days >= 0 (one a timedelta can hold)."""
    try:
        days = float(value)  # type: ignore[arg-type]
        timedelta(days=days)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{name} must be a number of days, got {value!r}") from exc
    if not days >= 0:
        raise ConfigError(f"{name} must not be negative, got {days}")
    return days


def root_path(root: str | os.PathLike[str]) -> Path:
    """The local directory of a store root: a path, or a ``file://`` URL; any other URL is a ConfigError (before
    anything is created on disk)."""
    text = os.fspath(root)
    match = _URL_ROOT.match(text)
    if match is None:
        return Path(text).expanduser()
    scheme = match["scheme"].lower()
    if scheme != "file":
        raise ConfigError(f"store root {text!r}: {scheme}:// roots are not supported; a store root is a local "
                          "directory (team mode, a store in object storage, is not yet supported)")
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise ConfigError(f"store root {text!r}: a file:// root must be a local absolute path (file:///path)")
    return Path(unquote(parts.path))


def _options(value: object) -> str | None:
    """``data_options`` as a JSON object's text: given as a dict (keyword, TOML table) or as that text."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"data_options must be a JSON object, got {value!r}: {exc}") from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"data_options must be an object of fsspec storage options, got {value!r}")
    return json.dumps(value)


def _tristate(value: object) -> bool | None:
    """``read_only`` from a keyword, TOML or the environment: a bool, or None for "decide from the root"."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    for result, words in ((True, ("1", "true", "yes", "on")), (False, ("0", "false", "no", "off")),
                          (None, ("", "auto"))):
        if text in words:
            return result
    raise ConfigError(f"read_only must be true, false or auto, got {value!r}")
