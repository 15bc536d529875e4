"""Compute functions and child-process entry points of the compute-cache tests.

Children import this module by its name (``cache_workers``, see :func:`command`), never run it as
``__main__``: a compute's fingerprint includes the module of the helpers it calls, so the test process and
its children must see the very same functions to share keys.

Every compute appends one line per event (``start``/``end`` with the pid) to ``<config["log"]>/<config["name"]>.log``
through ``O_APPEND``: a count of computations that survives processes and kills. A compute started with
``CACHE_TEST_GATE=<path>`` in its environment blocks until that file exists (a stuck compute, released by the
test); the environment is not part of the key, so a gated and an ungated process share the key.

Orders come as JSON lines on stdin; answers are lines on stdout (``ready``, ``started``, ``done <digest>``,
``report <json>``, ``key <hex>``, ``held``, ``released``).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

TESTS_DIR = Path(__file__).resolve().parent
GATE_ENV = "CACHE_TEST_GATE"
GATE_MAX_WAIT_S = 120.0  # a gated compute gives up after this long (the test failed to release it)


def command() -> list[str]:
    """argv of a child running :func:`serve`."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); "
            "import cache_workers; cache_workers.serve()"]


# --- data and computes -------------------------------------------------------------------------------------


def make_raw(symbol: str, n: int = 200, seed: int = 1) -> pl.DataFrame:
    """Deterministic bars of one symbol (the same in every process)."""
    from pitstore.testing import synthetic_bars

    bars = synthetic_bars(1, n, seed=seed)
    return bars.with_columns(pl.lit(symbol).alias("symbol"))


def log_event(config: dict[str, Any], event: str) -> None:
    """Append one line to the key's log file (O_APPEND: atomic for short lines, across processes)."""
    path = Path(config["log"]) / f"{config['name']}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{event} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def log_lines(log_dir: Path, name: str) -> list[str]:
    path = log_dir / f"{name}.log"
    return path.read_text().splitlines() if path.exists() else []


def starts(log_dir: Path, name: str) -> int:
    """How many computations of ``name`` started (in any process)."""
    return sum(1 for line in log_lines(log_dir, name) if line.startswith("start "))


def wait_for_gate() -> None:
    gate = os.environ.get(GATE_ENV)
    if not gate:
        return
    deadline = time.monotonic() + GATE_MAX_WAIT_S
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was never opened")
        time.sleep(0.01)  # polling the gate file: the compute models a stuck peer


def summarise(raw: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
    """The value of :func:`slow_summary` (pure)."""
    return raw.select(
        pl.col("symbol").first(),
        (pl.col("close").sum() * config["k"]).alias("close_sum"),
        pl.col("ts").max().alias("last_ts"),
        pl.len().alias("n"),
    )


def slow_summary(raw: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
    """A costly compute: logs, waits ``config["sleep"]`` seconds (the cost), returns a small frame."""
    log_event(config, "start")
    wait_for_gate()
    time.sleep(config.get("sleep", 0.0))  # the modelled cost of the computation, not a synchronisation
    out = summarise(raw, config)
    log_event(config, "end")
    return out


def heavy_frame(raw: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
    """The value of :func:`heavy` (pure): ``config["rows"]`` rows, large enough to take a while to write."""
    rng = np.random.default_rng(config["trial"])
    base = float(raw["close"].sum())
    return pl.DataFrame({"i": np.arange(config["rows"], dtype=np.int64), "x": rng.random(config["rows"]) + base})


def heavy(raw: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
    """A compute with a large result: its publish (encode, write, fsync) takes a noticeable part of the run."""
    log_event(config, "start")
    time.sleep(config.get("sleep", 0.0))  # the modelled cost of the computation
    out = heavy_frame(raw, config)
    log_event(config, "end")
    return out


# A lambda whose code holds a set constant (CPython folds `in {...}` into a frozenset), and a function defined
# without a source file (exec, as in a REPL or `python -c`) whose code holds a nested code object.
set_lambda = lambda raw, config: raw if config.get("m", "alpha") in {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"} else raw.head(0)  # noqa: E501, E731
_NO_SOURCE: dict[str, Any] = {}
exec("def no_source(raw, config):\n    return raw.select([c for c in raw.columns if c != 'volume'])\n", _NO_SOURCE)
no_source = _NO_SOURCE["no_source"]

COMPUTES = {"slow_summary": slow_summary, "heavy": heavy, "set_lambda": set_lambda, "no_source": no_source}


def digest(frame: pl.DataFrame) -> str:
    """A hash of a polars result's values, independent of pitstore (compares results across processes)."""
    assert isinstance(frame, pl.DataFrame), type(frame)
    return hashlib.sha256(frame.write_csv().encode()).hexdigest()


# --- the parent's handle on a child ----------------------------------------------------------------------


class Child:
    """A child running :func:`serve`. Its stdout lines are read by a thread, so the parent can wait for a line
    with a deadline; a watchdog kills a child that outlives ``timeout`` (a failure, never a synchronisation)."""

    def __init__(self, env: dict[str, str] | None = None, timeout: float = 120.0) -> None:
        self.proc = subprocess.Popen(
            command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()
        self.watchdog = threading.Timer(timeout, self.proc.kill)
        self.watchdog.daemon = True
        self.watchdog.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def line(self, timeout: float = 60.0) -> str:
        """The next stdout line, waiting at most ``timeout`` seconds."""
        try:
            got = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"child {self.proc.pid} said nothing for {timeout} s") from None
        if got is None:
            self.proc.wait()
            self._err_reader.join(5)
            raise AssertionError(f"child {self.proc.pid} exited ({self.proc.returncode}): {self.stderr[-3000:]}")
        return got

    def expect(self, wanted: str, timeout: float = 60.0) -> str:
        """Wait for the next line, which must start with ``wanted``; returns the rest of it."""
        got = self.line(timeout)
        assert got.split(" ", 1)[0] == wanted, f"child said {got!r}, expected {wanted!r}"
        return got[len(wanted):].strip()

    def send(self, order: dict[str, Any] | str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((order if isinstance(order, str) else json.dumps(order)) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> int:
        """SIGKILL; returns the exit code (-9, or 0/1 if it finished first)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.finish()

    def finish(self, timeout: float = 60.0) -> int:
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.watchdog.cancel()
        self._err_reader.join(5)
        return rc

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


def wait_until(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition()`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)  # polling interval of a condition with a deadline


def blocked_on_flock(pid: int) -> bool:
    """Whether process ``pid`` waits for an flock right now (a ``->`` line of /proc/locks)."""
    with open("/proc/locks") as f:
        return any("->" in line and " FLOCK " in line and f" {pid} " in line for line in f)


# --- the child ---------------------------------------------------------------------------------------------


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _call(store: Any, call: dict[str, Any]) -> Any:
    raw = make_raw(call["symbol"], call.get("n", 200))
    return store.get_or_compute(call["symbol"], raw, call["config"], COMPUTES[call["compute"]],
                                wait_timeout=call.get("wait_timeout"))


def serve() -> None:
    """Child main: import everything, say ``ready``, then follow the orders read from stdin."""
    from pitstore import Store
    from pitstore.cache import cache_key

    _say("ready")
    for line in sys.stdin:
        order = json.loads(line)
        op = order["op"]
        if op == "exit":
            return
        if op == "key":
            call = order["call"]
            raw = make_raw(call["symbol"], call.get("n", 200))
            _say("key " + cache_key(call["symbol"], raw, call["config"], COMPUTES[call["compute"]]).key)
            continue
        # catalog_url: a team store (PostgreSQL catalog, the cache's locks advisory locks there).
        # data_url / data_options: its data on object storage too (all children on one bucket).
        with Store.open(order["root"], catalog_url=order.get("catalog_url"), data_url=order.get("data_url"),
                        data_options=order.get("data_options")) as store:
            if op == "get":  # one call, announced: the parent may kill us at any moment after "started"
                _say("started")
                _say("done " + digest(_call(store, order["call"])))
            elif op == "many":  # wait for "go" (all children released together), then every call
                _say("waiting")
                assert sys.stdin.readline().strip() == "go"
                t0 = time.time()
                digests = [[c["config"]["name"], digest(_call(store, c))] for c in order["calls"]]
                _say("report " + json.dumps({"digests": digests, "t0": t0, "t1": time.time()}))
            elif op == "hold":  # hold a key's lock until told to let go
                with store.cache.locks.hold(order["key"]) as holding:
                    assert holding
                    _say("held")
                    sys.stdin.readline()
                _say("released")
            else:
                raise ValueError(f"unknown order {op!r}")
