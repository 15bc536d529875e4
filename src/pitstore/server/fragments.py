"""The JSON answers of ``GET /v1/online``, kept per worker as encoded fragments, one per (features, symbol).

A kept fragment is served only while both hold:

* the online tier's change token (:meth:`pitstore.online.base.OnlineStore.change_token`) is the one it was read
  under: any write by any process (push, materialize, invalidate, a fill, an eviction) drops every fragment,
  so a value written elsewhere is seen by the next request;
* now is before its own end (:meth:`pitstore.online.serving.Serving.get_online_until`): an ``ok`` vector ends at its
  TTL edge, exactly where :func:`pitstore.rules.is_stale` turns it ``stale``; misses, fallbacks and rows not
  available yet are never kept (the lower tiers decide those, without an online write).

A request is then a token read, dict look-ups and a byte join. A backend without a token (Redis) is read on
every request. The feature references are resolved on every request too (``Serving.tables``, itself cached for
a second), so a new version of a set is picked up as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import orjson

from pitstore.online.router import FeatureVector, Table

if TYPE_CHECKING:
    from pitstore.online.serving import Serving

__all__ = ["OnlineAnswers", "encode_vector", "join_rows"]

_MAX_SLOTS = 256  # distinct feature references kept (each a dict of symbols); more: start again

# (encoded vector, valid from (µs: when it was read; a clock set back reads again), until (µs, exclusive), status,
#  the whole body of a one-symbol answer)
Entry = tuple[bytes, int, int, str, bytes]


def encode_vector(v: FeatureVector) -> bytes:
    """One row of the answer: orjson writes NaN and infinities as null and datetimes in ISO 8601."""
    return orjson.dumps({"symbol": v.symbol, "ts": v.ts, "status": v.status, "values": v.values})


def join_rows(rows: Sequence[bytes]) -> bytes:
    """``{"rows": [...]}``, byte for byte what ``orjson.dumps({"rows": [...]})`` writes."""
    return b'{"rows":[' + b",".join(rows) + b"]}"


def _entry(row: bytes, since: int, until: int, status: str) -> Entry:
    return row, since, until, status, join_rows((row,))


class _Slot:
    """The fragments of one feature reference, valid for the tables it resolved to."""

    __slots__ = ("entries", "identity", "tables")

    def __init__(self, tables: list[Table]) -> None:
        self.tables = tables
        self.identity = _identity(tables)
        self.entries: dict[str, Entry] = {}


def _identity(tables: Sequence[Table]) -> tuple[object, ...]:
    return tuple((t.table_id, t.named, t.ttl_us, t.lag_us) for t in tables)


class OnlineAnswers:
    """Answers of ``GET /v1/online`` for one worker: :meth:`answer` gives the body and the status of each row."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self._token: object = object()  # equal to no token
        self._slots: dict[object, _Slot] = {}

    def answer(self, symbols: list[str], features: tuple[str, ...]) -> tuple[bytes, list[str]]:
        serving = self.serving
        token = serving.online.change_token()  # before any read: a write after it shows as a new token next time
        now = serving.clock()
        if token is None:
            vectors = serving.get_online_until(symbols, features, now)[0]
            return join_rows([encode_vector(v) for v in vectors]), [v.status for v in vectors]
        tables = serving.tables(features)
        if token != self._token or len(self._slots) > _MAX_SLOTS:
            self._slots.clear()
            self._token = token
        slot = self._slots.get(features)
        if slot is None or slot.tables is not tables:
            slot = self._rebind(features, tables, slot)
        entries = slot.entries
        if len(symbols) == 1:  # the common case, without the loop's lists
            hit = entries.get(symbols[0])
            if hit is not None and hit[1] <= now < hit[2]:
                serving.note_reads(tables, symbols)
                return hit[4], [hit[3]]
            kept: list[Entry | None] = [None]
        else:
            kept = [e if e is not None and e[1] <= now < e[2] else None for e in map(entries.get, symbols)]
            if None not in kept:
                serving.note_reads(tables, symbols)
                done = cast(list[Entry], kept)
                return join_rows([e[0] for e in done]), [e[3] for e in done]
        missing = [s for s, e in zip(symbols, kept, strict=True) if e is None]
        if len(missing) < len(symbols):
            serving.note_reads(tables, [s for s, e in zip(symbols, kept, strict=True) if e is not None])
        vectors, until = serving.get_online_until(missing, features, now)
        if serving.online.change_token() != token:
            # A write landed while reading: the kept rows and the ones just read may straddle it. Answer from
            # one read of every symbol, as without this cache, and keep nothing of it.
            vectors = serving.get_online_until(symbols, features, now)[0]
            return join_rows([encode_vector(v) for v in vectors]), [v.status for v in vectors]
        fresh = [_entry(encode_vector(v), now, end, v.status) for v, end in zip(vectors, until, strict=True)]
        for s, entry in zip(missing, fresh, strict=True):
            if entry[2] > now:
                entries[s] = entry
        it = iter(fresh)
        done = [e if e is not None else next(it) for e in kept]
        return join_rows([e[0] for e in done]), [e[3] for e in done]

    def _rebind(self, features: tuple[str, ...], tables: list[Table], slot: _Slot | None) -> _Slot:
        """The reference was resolved anew (``Serving.tables`` re-checks every second): keep its fragments
        when it still names the same tables under the same rules, else start empty."""
        if slot is not None and slot.identity == _identity(tables):
            slot.tables = tables
        else:
            slot = self._slots[features] = _Slot(tables)
        return slot
