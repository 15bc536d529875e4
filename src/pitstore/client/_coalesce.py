"""Concurrent online reads of the same features go out as one request.

Fifty strategy tasks that each ask for one symbol in the same event-loop turn would otherwise make fifty
round trips, each costing the service its per-request overhead (parsing, routing, a response). Calls are
collected until the loop runs its next callbacks, then sent as one ``POST /v1/online`` with the union of
their symbols (split at the service's per-request limit); each call gets its own symbols' vectors, or the
batch's error. A call alone pays one loop turn, microseconds against a round trip of a millisecond.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pitstore.client._calls import Call, online
from pitstore.online.serving import FeatureVector
from pitstore.server.wire import MAX_SYMBOLS

__all__ = ["Coalescer"]

Send = Callable[[Call[list[FeatureVector]], float | None], Awaitable[list[FeatureVector]]]


class _Batch:
    __slots__ = ("symbols", "timeout", "waiters")

    def __init__(self) -> None:
        self.symbols: dict[str, None] = {}
        self.waiters: list[tuple[list[str], asyncio.Future[list[FeatureVector]]]] = []
        self.timeout: float | None = None  # the shortest a waiter asked for; None: the client's default


class Coalescer:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._open: dict[tuple[str, ...], _Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # kept referenced until done (asyncio holds weak refs)

    async def fetch(self, symbols: list[str], features: list[str], timeout: float | None) -> list[FeatureVector]:
        """The vectors of ``symbols`` (unique, in this order), from the request this call joins."""
        key = tuple(features)
        loop = asyncio.get_running_loop()
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch()
            loop.call_soon(self._flush, key)
        future: asyncio.Future[list[FeatureVector]] = loop.create_future()
        batch.waiters.append((symbols, future))
        batch.symbols.update(dict.fromkeys(symbols))
        if timeout is not None:
            batch.timeout = timeout if batch.timeout is None else min(batch.timeout, timeout)
        return await future

    def _flush(self, key: tuple[str, ...]) -> None:
        batch = self._open.pop(key)
        task = asyncio.get_running_loop().create_task(self._answer(batch, list(key)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, batch: _Batch, features: list[str]) -> None:
        symbols = list(batch.symbols)
        try:
            parts = await asyncio.gather(*(self._send(online(symbols[i:i + MAX_SYMBOLS], features), batch.timeout)
                                           for i in range(0, len(symbols), MAX_SYMBOLS)))
        except BaseException as exc:  # every waiter gets the batch's error (cancellation included)
            for _, future in batch.waiters:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        by_symbol = {v.symbol: v for part in parts for v in part}
        for wanted, future in batch.waiters:
            if not future.done():  # a waiter cancelled meanwhile
                future.set_result([by_symbol[s] for s in wanted])
