"""The floor of bench_server: a bare ASGI app that answers ``GET /v1/online?symbols=...`` with pre-encoded bytes.

It does what no server can skip: uvicorn's HTTP handling (same settings as ``pitstore serve``), one dict look-up
keyed by the ``symbols`` value, and a response with the same headers and body pitstore sends. No routing,
validation, store read, JSON encoding, request id or metrics: the gap to it is what those cost.

The bodies come from a JSON file ``{"symbols value": "body", ...}`` (written by bench_server from pitstore's own
answers). Run: ``python bench/floor_app.py BODIES.json --port P``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Message = MutableMapping[str, Any]

_BODIES: dict[bytes, bytes] = {}
_NOT_FOUND = b'{"error": "NotFoundError"}'


def load(path: Path) -> None:
    _BODIES.update({k.encode(): v.encode() for k, v in json.loads(path.read_text()).items()})


def _symbols(query: bytes) -> bytes:
    for part in query.split(b"&"):
        if part.startswith(b"symbols="):
            return part[8:].replace(b"%2C", b",")
    return b""


async def app(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Message]],
              send: Callable[[Message], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":  # answer uvicorn's startup and shutdown
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if not _BODIES:
                    load(Path(os.environ["FLOOR_BODIES"]))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = _BODIES.get(_symbols(scope["query_string"]))
    status = 200 if body is not None else 404
    body = body if body is not None else _NOT_FOUND
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("bodies", type=Path, help="JSON file of {symbols value: response body}")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    os.environ["FLOOR_BODIES"] = str(args.bodies.resolve())
    import uvicorn

    # The keyword arguments of ``pitstore serve`` (pitstore.cli.service.serve), one worker.
    uvicorn.run("floor_app:app", app_dir=str(Path(__file__).resolve().parent), host=args.host, port=args.port,
                workers=1, log_level=args.log_level, timeout_graceful_shutdown=30, access_log=False)


if __name__ == "__main__":
    main()
