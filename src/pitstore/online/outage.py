"""Outage warnings: a tier that is down is logged once per interval and kind, not once per request."""

from __future__ import annotations

import logging
import time

__all__ = ["warn_outage"]

_WARN_SECONDS = 10.0
_warned: dict[str, float] = {}


def warn_outage(logger: logging.Logger, kind: str, msg: str, *args: object) -> None:
    """``logger.warning(msg, *args)``, unless a warning of ``kind`` was logged in the last 10 seconds."""
    now = time.monotonic()
    if _warned.get(kind, -_WARN_SECONDS) + _WARN_SECONDS <= now:
        _warned[kind] = now
        logger.warning(msg, *args)
