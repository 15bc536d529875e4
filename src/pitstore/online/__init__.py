"""The online tier: the latest feature vector per (feature set version, symbol), behind one interface.

>>> from pathlib import Path
>>> store = open_online("memory://", root=Path("."))
>>> store.put_latest("daily_core@1", ["ret_5d", "rsi_14"], [("AAPL", 1_700_000_000_000_000, [0.01, None])])
1
>>> store.get_latest("daily_core@1", ["AAPL", "MSFT"])
[OnlineRow(ts=1700000000000000, values=(0.01, None)), None]
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from pitstore.deps import missing
from pitstore.errors import ConfigError
from pitstore.online.base import InputRow, OnlineRow, OnlineStore
from pitstore.online.memory import MemoryOnlineStore
from pitstore.online.sqlite import SqliteOnlineStore

__all__ = ["InputRow", "MemoryOnlineStore", "OnlineRow", "OnlineStore", "SqliteOnlineStore", "open_online"]

_URL_FORMS = '"memory://", "sqlite://", "sqlite:///abs/path.sqlite" or "redis://host:port/db"'


def open_online(url: str, *, root: Path, **options: Any) -> OnlineStore:
    """Open the online store at ``url``; ``"sqlite://"`` is the file ``root/online.sqlite``. ``options`` go to
    the backend (memory: max_items; sqlite: max_rows, busy_timeout; redis: namespace, socket_timeout,
    breaker_seconds, max_pending)."""
    scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    if scheme == "memory" and sep and not rest:
        _check_options(MemoryOnlineStore, options, url)
        return MemoryOnlineStore(**options)
    if scheme == "sqlite" and sep and (not rest or rest.startswith("/")):
        _check_options(SqliteOnlineStore, options, url)
        return SqliteOnlineStore(Path(rest) if rest else Path(root) / "online.sqlite", **options)
    if scheme in ("redis", "rediss") and sep:
        try:  # redis-py only when used
            from pitstore.online.redis import RedisOnlineStore
        except ImportError as exc:
            raise missing("redis", "an online tier on Redis", exc) from exc
        _check_options(RedisOnlineStore, options, url)
        return RedisOnlineStore(url, **options)
    raise ConfigError(f"unsupported online store URL {url!r}: expected {_URL_FORMS}")


def _check_options(cls: type, options: dict[str, Any], url: str) -> None:
    accepted = {p.name for p in inspect.signature(cls).parameters.values() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"unknown option(s) for {url!r}: {', '.join(unknown)} (accepted: {', '.join(sorted(accepted))})"
        )
