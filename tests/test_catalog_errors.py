"""A catalog that cannot be read raises the error tree's BackendError, naming the file, never sqlite3's own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pitstore import Store, standard_features
from pitstore.errors import BackendError
from pitstore.testing import synthetic_bars


def test_catalog_reads_wrap_driver_errors(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s") as store:
        store.ingest(synthetic_bars(2, 30))
        store.register(standard_features())
        assert store.symbols() == ["S0000", "S0001"]
        with sqlite3.connect(store.root / "catalog.sqlite") as other:  # damage behind the store's back
            other.execute("DROP TABLE bar_entries")
            other.execute("DROP TABLE feature_set_versions")
        for read in (store.symbols, store.stats, lambda: store.versions("daily_core"), store.registry.names):
            with pytest.raises(BackendError, match=r"catalog\.sqlite: cannot read") as err:
                read()
            assert isinstance(err.value.__cause__, sqlite3.OperationalError)
