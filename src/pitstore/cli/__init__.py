"""The ``pitstore`` command line: ``init``, ``ingest``, ``backfill``, ``get``, ``stats``, ``demo``, ``features``,
``sets``, ``versions``, ``gc``, ``verify``, ``tier``, ``materialize``, ``warm``, ``cache``, ``import-hdf5``,
``serve`` and ``keys`` (``pitstore --help`` lists them with their help).

It only parses arguments, calls :class:`pitstore.Store` and formats the results.
"""

from pitstore.cli.app import app

__all__ = ["app"]
