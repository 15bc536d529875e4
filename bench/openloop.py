"""An open-loop HTTP/1.1 load generator: requests leave on a fixed schedule, whatever the answers do.

wrk2 (constant rate) is not packaged in Debian, so bench_server uses this for its latency-at-a-rate figures.
Request i is due at ``start + i / rate``; it goes out on the first idle keep-alive connection (or waits for one),
and its latency runs from the time it was *due* to the last byte of its answer. A server that stalls therefore
pays for every request that should have left meanwhile (no coordinated omission).

One thread, non-blocking sockets and epoll, spinning when the next request is under 2 ms away (run it on a core
of its own): the send times are exact to a few µs when the core is free. ``late`` (noticed due - due) is the
generator's own slip; ``send_lag`` (sent - due) adds the wait for an idle connection.
Prints one JSON object: latencies are nanoseconds, sorted.

Run: ``python bench/openloop.py --port P --rate 1000 --seconds 10 PATHS.json`` (a JSON list of request paths,
used in turn).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

SPIN_NS = 2_000_000  # closer than this to the next send, poll without sleeping


class _Conn:
    __slots__ = ("buf", "due", "need", "sock", "status")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf, self.due, self.need, self.status = sock, bytearray(), 0, -1, 0

    def answer_complete(self) -> bool:
        """Parse what arrived; True once the whole answer (headers + Content-Length bytes) is in."""
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(self.buf[:end]).lower()
            self.status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            self.need = end + 4 + length
        if len(self.buf) < self.need:
            return False
        del self.buf[:self.need]
        self.need = -1
        return True


def run(host: str, port: int, paths: list[str], rate: float, seconds: float, connections: int) -> dict[str, Any]:
    n = max(1, int(rate * seconds))
    requests = [f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode() for p in paths]
    conns: dict[int, _Conn] = {}
    poller = select.epoll()
    for _ in range(connections):
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conns[sock.fileno()] = _Conn(sock)
        poller.register(sock.fileno(), select.EPOLLIN)
    idle: deque[_Conn] = deque(conns.values())
    waiting: deque[int] = deque()  # due, no idle connection yet
    late: list[int] = []  # how long after its due time the generator noticed a request was due
    latency: list[int] = []
    send_lag: list[int] = []
    statuses: dict[int, int] = {}
    clock = time.perf_counter_ns
    interval = 1e9 / rate
    start = clock() + 20_000_000
    due_next = 0
    while len(latency) < n:
        now = clock()
        while due_next < n and start + int(due_next * interval) <= now:
            late.append(now - start - int(due_next * interval))
            waiting.append(due_next)
            due_next += 1
        while waiting and idle:
            i = waiting.popleft()
            conn = idle.popleft()
            conn.due = start + int(i * interval)
            conn.sock.send(requests[i % len(requests)])  # a few dozen bytes: one send
            send_lag.append(clock() - conn.due)
        if due_next < n:
            wait = start + int(due_next * interval) - clock()
            timeout = 0.0 if wait < SPIN_NS else (wait - SPIN_NS) / 1e9
        else:
            timeout = 1.0
        for fd, _ in poller.poll(timeout):
            conn = conns[fd]
            data = conn.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the server closed a connection")
            conn.buf += data
            if conn.answer_complete():  # one request in flight per connection
                latency.append(clock() - conn.due)
                statuses[conn.status] = statuses.get(conn.status, 0) + 1
                idle.append(conn)
    elapsed = (clock() - start) / 1e9
    for conn in conns.values():
        conn.sock.close()
    poller.close()
    latency.sort()
    send_lag.sort()
    late.sort()
    return {"requests": n, "rate": rate, "achieved_rate": n / elapsed, "connections": connections,
            "statuses": {str(k): v for k, v in statuses.items()}, "latency_ns": latency, "send_lag_ns": send_lag,
            "late_ns": late}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("paths", type=Path, help="JSON list of request paths, sent in turn")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    args = parser.parse_args()
    paths = json.loads(args.paths.read_text())
    json.dump(run(args.host, args.port, paths, args.rate, args.seconds, args.connections), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
