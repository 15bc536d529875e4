"""The status words of every read, in one place: each read path says why a value is null with these (the rules
that decide them: :mod:`pitstore.rules`, which re-exports this module).

Every read (``get_historical``, ``get_features``, ``get_online``; DESIGN section 2):

* ``ok``: the as-of row, served.
* ``stale``: the as-of row is older than the feature set's effective TTL: values null, never served as fresh.
* ``no_data_yet``: the store has rows of the symbol, none available at or before the time asked (online: now).
* ``unknown_symbol``: the store has no rows of the symbol for that feature-set version.
* ``damaged``: the symbol's stored entry is missing, truncated or does not match its hash: values null.

Online reads (``get_online``) also:

* ``fallback``: the online tier is unreachable; a lower tier answered (what would be ``ok``).
* ``missing``: no longer given (``get_online`` says ``unknown_symbol``); kept, with its rank, for answers of
  older servers.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["DAMAGED", "FALLBACK", "MISSING", "NO_DATA_YET", "OK", "STALE", "STATUSES", "UNKNOWN_SYMBOL", "Status",
           "worse"]

OK: Final = "ok"
STALE: Final = "stale"
NO_DATA_YET: Final = "no_data_yet"
UNKNOWN_SYMBOL: Final = "unknown_symbol"
DAMAGED: Final = "damaged"
MISSING: Final = "missing"
FALLBACK: Final = "fallback"

Status = Literal["ok", "fallback", "stale", "no_data_yet", "missing", "unknown_symbol", "damaged"]

# Best to worst: a row joined from several feature sets reports the worst. ``damaged`` is worst: the store had
# the data and lost it, which no other status may hide.
STATUSES: tuple[Status, ...] = (OK, FALLBACK, STALE, NO_DATA_YET, MISSING, UNKNOWN_SYMBOL, DAMAGED)
_RANK: dict[str, int] = {s: i for i, s in enumerate(STATUSES)}


def worse(a: Status, b: Status) -> Status:
    """The worse of two statuses (see :data:`STATUSES`).

    >>> worse("ok", "stale"), worse("unknown_symbol", "no_data_yet")
    ('stale', 'unknown_symbol')
    """
    return a if _RANK[a] >= _RANK[b] else b
