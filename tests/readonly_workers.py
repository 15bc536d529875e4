"""Processes for the read-only store tests: run as a script, they print one JSON document on stdout.

``python readonly_workers.py reads ROOT WORKDIR [--nobody]``: every read API and CLI read command, then every
write API (each must raise ReadOnlyStoreError); ``--nobody`` first drops root to the user ``nobody``, so that
``os.access`` decides the store is read-only exactly as it would for a researcher reading someone else's copy.
``python readonly_workers.py watch ROOT N_SYMBOLS FINAL_BARS [--nobody]``: reads the bars of a store another
process is ingesting into until they reach FINAL_BARS, checking that every snapshot is consistent.
``python readonly_workers.py write ROOT N_SYMBOLS FINAL_BARS START``: that other process.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Everything is imported before privileges are dropped: the interpreter's own files may not be readable then.
import polars as pl
import pyarrow  # noqa: F401
import rich.markdown
import rich.table  # noqa: F401
from typer.testing import CliRunner

from pitstore import FeatureSet, ReadOnlyStoreError, Store, ret, sma, standard_features
from pitstore.cli import app
from pitstore.offline.entries import read_entries
from pitstore.testing import synthetic_bars

LATE = datetime(2030, 1, 1, tzinfo=UTC)
EXTRA = FeatureSet("ro_extra", [ret(1), sma(3)], timeframe="1d")  # never stored: backfilling it is a write
STORED = FeatureSet("ro_stored", [sma(3)], timeframe="1d")  # backfilled by the owner: get_indicators reads it


def bars(n_symbols: int, n_bars: int) -> pl.DataFrame:
    """The writer's bars: the same seed every time, so a prefix of them is known to both processes."""
    return synthetic_bars(n_symbols, n_bars, start=datetime(2021, 1, 1, tzinfo=UTC), seed=11)


def cache_probe(raw: pl.DataFrame, config: dict[str, int]) -> pl.DataFrame:
    return pl.DataFrame({"n": [raw.height + config["n"]]})


def drop_root() -> None:
    nobody = pwd.getpwnam("nobody")
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


def _try(out: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    try:
        out[name] = fn()
    except Exception as exc:  # reported, so the test shows every failing read at once
        out[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=4)}


def _cli(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, list(args))
    return {"code": result.exit_code, "output": result.output}


def reads(root: Path, work: Path, **open_args: Any) -> dict[str, Any]:
    """A full round of reads, then every write refused; JSON-ready results."""
    out: dict[str, Any] = {}
    store = Store.open(root, **open_args)
    syms = store.symbols()
    # As of each symbol's last bar: the as-of row, within the set's TTL (later it would read stale).
    entities = pl.DataFrame({"symbol": syms, "ts": [store.bars(s)["ts"][-1] for s in syms]})
    _try(out, "read_only", lambda: store.read_only)
    _try(out, "symbols", lambda: syms)
    _try(out, "read", lambda: store.read("daily_core").height)
    _try(out, "read_range", lambda: store.read("daily_core:ret_5d", syms[:1], datetime(2021, 3, 1, tzinfo=UTC),
                                               LATE).height)
    _try(out, "historical", lambda: store.get_historical(entities, "daily_core")["status"].to_list())
    _try(out, "historical_known", lambda: store.get_historical(entities, "daily_core", as_known_at=LATE).height)
    _try(out, "features", lambda: store.get_features(syms[0], LATE, "daily_core").ts is not None)
    _try(out, "online", lambda: [v.status for v in store.get_online(syms, "daily_core")])
    _try(out, "online_frame", lambda: store.get_online(syms, "daily_core:ret_5d", output="polars").height)
    _try(out, "versions", lambda: [v.version for v in store.versions("daily_core")])
    _try(out, "resolve", lambda: store.resolve("daily_core:ret_5d").version)
    _try(out, "bars", lambda: store.bars(syms[0]).height)
    _try(out, "newest_rows", lambda: sorted(store.newest_rows()))
    _try(out, "indicators", lambda: store.get_indicators(syms[0], "sma_3").height)
    _try(out, "cache_hit", lambda: store.get_or_compute(syms[0], store.bars(syms[0]), {"n": 1}, cache_probe)
         ["n"].to_list())
    _try(out, "verify", lambda: store.verify().ok)
    _try(out, "stats", lambda: {k: v for k, v in store.stats().items() if k in ("read_only", "catalog_mode",
                                                                                "bar_entries_live")})
    writes: dict[str, Callable[[], Any]] = {
        "ingest": lambda: store.ingest(bars(1, 5)),
        "backfill": lambda: store.backfill(EXTRA),
        "register": lambda: store.register(standard_features()),
        "push": lambda: store.push(bars(1, 1), EXTRA),
        "materialize": lambda: store.materialize("daily_core"),
        "warm": lambda: store.warm(),
        "gc": lambda: store.gc(),
        "gc_dry_run": lambda: store.gc(dry_run=True),
        "repair": lambda: store.verify(repair=True),
        "cache_miss": lambda: store.get_or_compute(syms[0], store.bars(syms[0]), {"n": 2}, cache_probe),
        "compute_feature": lambda: store.compute_feature("rsi", syms[0], params={"n": 21}),
        "clear": lambda: store.clear(),
        "invalidate": lambda: store.invalidate(),
        "cleanup": lambda: store.cleanup_old_entries(0),
    }
    for name, fn in writes.items():
        try:
            fn()
            out[f"write:{name}"] = "not refused"
        except ReadOnlyStoreError as exc:
            out[f"write:{name}"] = {"refused": str(exc), "root": str(exc.root), "operation": exc.operation}
        except Exception as exc:
            out[f"write:{name}"] = f"{type(exc).__name__}: {exc}"
    store.close()
    r = str(root)
    out["cli:stats"] = _cli("stats", "--root", r, "--json")
    out["cli:sets"] = _cli("sets", "--root", r)
    out["cli:get"] = _cli("get", "daily_core:ret_5d", "--symbols", ",".join(syms), "--root", r)
    out["cli:get_json"] = _cli("get", "daily_core:ret_5d", "--symbols", syms[0], "--json", "--root", r)
    out["cli:ingest"] = _cli("ingest", str(work / "more.parquet"), "--root", r)
    out["cli:keys"] = _cli("keys", "create", "--root", r)
    return out


def watch(root: Path, n_symbols: int, final: int) -> dict[str, Any]:
    """Read the live bars of every symbol (one catalog query: one snapshot) until each has ``final`` bars;
    every snapshot must give all symbols the same count (the writer ingests them in one transaction) and bars
    equal to the writer's prefix. Returns the counts seen."""
    store = Store.open(root, **({} if os.geteuid() != 0 else {"read_only": True}))
    print("open", flush=True)
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        entries = store.catalog.live_bars()
        counts = {e.n_rows for e in entries}
        assert len(entries) in (0, n_symbols), entries
        if entries:
            assert len(counts) == 1, f"torn snapshot: {sorted(counts)}"
            (n,) = counts
            df = read_entries(root, [e.path for e in entries])
            assert df is not None
            want = prefix(n_symbols, final, n)
            assert df.equals(want.select(df.columns)), f"bars differ at {n}"
            hist = store.get_historical(pl.DataFrame({"symbol": [entries[0].symbol], "ts": [LATE]}), "daily_core")
            assert hist.height == 1
            if not seen or seen[-1] != n:
                seen.append(n)
            if n == final:
                break
        time.sleep(0.01)  # poll pace, not synchronisation: the test is what the reader sees at any moment
    result = {"seen": seen, "read_only": store.read_only, "mode": store.catalog.mode}
    store.close()
    return result


def prefix(n_symbols: int, final: int, n: int) -> pl.DataFrame:
    """The first ``n`` of each symbol's ``final`` bars."""
    return bars(n_symbols, final).group_by("symbol", maintain_order=True).head(n)


def write(root: Path, n_symbols: int, final: int, start: int) -> None:
    """The writer: open the store, say so, wait for a line on stdin, then ingest one more bar of every symbol at
    a time up to ``final`` (each ingest one transaction over all symbols); keep the store open until told."""
    with Store.open(root) as store:
        print("open", flush=True)
        sys.stdin.readline()  # the reader is open too: start
        for n in range(start + 1, final + 1):
            store.ingest(prefix(n_symbols, final, n))
        print("done", flush=True)
        sys.stdin.readline()


def main(argv: list[str]) -> None:
    if "--nobody" in argv:
        argv.remove("--nobody")
        drop_root()
    kind, root = argv[0], Path(argv[1])
    if kind == "reads":
        result = reads(root, Path(argv[2]))
    elif kind == "write":
        write(root, int(argv[2]), int(argv[3]), int(argv[4]))
        return
    else:
        result = watch(root, int(argv[2]), int(argv[3]))
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
