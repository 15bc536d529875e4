"""Private servers for failure tests: a redis-server and a PostgreSQL cluster on free loopback ports, that a test
kills, freezes, stops and restarts without touching the shared servers."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql


def skip_or_fail(reason: str) -> None:
    """Skip, except under CI=true where a missing server is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: required)")
    pytest.skip(reason)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took, fails after ``timeout``."""
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)  # polling interval, not synchronisation
    return time.monotonic() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A redis-server subprocess on a free loopback port, that a test can kill, freeze and restart."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.extra = extra
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and return once it answers PING."""
        if shutil.which("redis-server") is None:
            skip_or_fail("redis-server is not installed: the tests that start, kill and restart Redis cannot run")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=0.5)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "redis-server exited at start"
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(up, 10.0, f"redis-server on port {self.port}")
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)  # a frozen process must run to die cleanly
        self.proc.kill()
        self.proc.wait()

    def freeze(self, frozen: bool) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class PrivatePostgres:
    bindir: Path
    root: Path
    port: int
    prefix: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str, check: bool = True) -> int:
        done = subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), *args],
                              check=check, capture_output=True, timeout=60)
        return done.returncode

    def running(self) -> bool:
        return self._pg_ctl("status", check=False) == 0

    def start(self) -> None:
        """Start it; returns once it accepts connections (pg_ctl -w)."""
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-l", str(self.root / "log"), "-w", "-t", "30", "-o", opts, "start")

    def stop(self) -> None:
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def discard(self) -> None:
        """Stop it if it runs, whatever state a test left it in (never raises): for teardown."""
        self._pg_ctl("-m", "immediate", "stop", check=False)


def private_postgres() -> Iterator[PrivatePostgres]:
    """A throwaway PostgreSQL cluster on a free port, owned by the ``postgres`` OS user when we are root; the body
    of a fixture (``yield from private_postgres()``)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        skip_or_fail("no initdb under /usr/lib/postgresql/*/bin: cannot start a private PostgreSQL")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="pitstore-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            user = None
        if user is None or shutil.which("runuser") is None:
            shutil.rmtree(root)
            skip_or_fail("running as root without a 'postgres' user or runuser: cannot start a private PostgreSQL")
        assert user is not None
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    bindir = Path(found[-1]).parent
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres",
                    "-N", "-E", "UTF8", "--locale=C"], check=True, capture_output=True, timeout=120)
    server = PrivatePostgres(bindir, root, free_port(), prefix)
    server.start()
    try:
        yield server
    finally:
        server.discard()
        shutil.rmtree(root, ignore_errors=True)


def drop_schema(url: str, schema: str) -> None:
    """Drop a PostgreSQL schema and everything in it (a test's own namespace)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
