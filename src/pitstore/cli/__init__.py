"""The ``pitstore`` command line: ``init``, ``ingest``, ``backfill``, ``get``, ``stats`` and ``demo``.

It only parses arguments, calls :class:`pitstore.Store` and formats the results.
"""

from pitstore.cli.app import app

__all__ = ["app"]
