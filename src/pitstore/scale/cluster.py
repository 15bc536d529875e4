"""Which Dask cluster a call runs on: ``scheduler=None`` (this process's current Client, else a temporary
LocalCluster of one single-threaded worker process per core), an address (``"tcp://host:8786"``) or a Client.

dask and distributed are untyped: their objects are ``Any`` here and everywhere in :mod:`pitstore.scale`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module
from typing import Any

__all__ = ["client_for", "dask", "distributed"]

# The typing boundary: distributed's partial annotations would leak untyped calls into strict code.
distributed: Any = import_module("distributed")
dask: Any = import_module("dask")


def _current() -> Any | None:
    try:
        return distributed.get_client()
    except ValueError:  # no Client in this process
        return None


@contextmanager
def client_for(scheduler: Any) -> Iterator[Any]:
    """A connected Client for ``scheduler``; one opened here (and its cluster) is closed on exit."""
    if scheduler is not None and not isinstance(scheduler, str):
        yield scheduler  # the caller's Client: theirs to close
        return
    current = _current() if scheduler is None else None
    if current is not None:
        yield current
        return
    if scheduler is None:
        # One process per core, one thread each, polars held to that thread: the work is parallel across
        # processes; polars' own pool per worker would oversubscribe the cores (measured: 3x the compute time).
        cluster = distributed.LocalCluster(threads_per_worker=1, processes=True, dashboard_address=":0",
                                           env={"POLARS_MAX_THREADS": "1"})
        client = distributed.Client(cluster)
    else:
        cluster, client = None, distributed.Client(scheduler)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
