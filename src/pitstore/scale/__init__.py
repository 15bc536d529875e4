"""Scale-out past one machine (DESIGN.md section 3.6): backfills and point-in-time joins on a Dask cluster,
partitioned by symbol (``pip install 'pitstore[dask]'``).

The Store calls these with ``engine="dask"``; dask is imported only then, so the embedded store never needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pitstore.errors import MissingDependencyError
from pitstore.scale.results import HistoricalDataset

if TYPE_CHECKING:
    from pitstore.frames import Frame
    from pitstore.offline.backfill import BackfillReport

__all__ = ["ENGINES", "HistoricalDataset", "backfill", "get_historical"]

ENGINES = ("local", "dask")


def _missing(exc: ImportError) -> MissingDependencyError:
    return MissingDependencyError(f"engine='dask' needs its extra: pip install 'pitstore[dask]' ({exc})")


# The arguments are forwarded unchanged to the module that needs dask (its signature is the one checked there).
def backfill(*args: Any, **kwargs: Any) -> BackfillReport:
    """:func:`pitstore.scale.dask_backfill.backfill`; needs ``pip install 'pitstore[dask]'``."""
    try:
        from pitstore.scale import dask_backfill
    except ImportError as exc:
        raise _missing(exc) from exc
    return dask_backfill.backfill(*args, **kwargs)



def get_historical(*args: Any, **kwargs: Any) -> Frame | HistoricalDataset:
    """:func:`pitstore.scale.dask_join.get_historical`; needs ``pip install 'pitstore[dask]'``."""
    try:
        from pitstore.scale import dask_join
    except ImportError as exc:
        raise _missing(exc) from exc
    return dask_join.get_historical(*args, **kwargs)
