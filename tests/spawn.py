"""Real processes for concurrency tests: spawned, started together behind a barrier."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def run_processes(target: Callable[..., None], args: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(*a, barrier, results)`` in one spawned process per ``a``; returns what they put on
    ``results``, in the order they finished, once every process has exited with code 0."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(args)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, results)) for a in args]
    try:
        for p in procs:
            p.start()
        out = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        return out
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
