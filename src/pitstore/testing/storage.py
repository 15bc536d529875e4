"""The data-backend conformance suite: what every :class:`pitstore.storage.Storage` does, the same way.

A backend's test class subclasses :class:`StorageConformance` and provides the ``storage`` fixture (a new, empty
backend per test) and ``damage(storage, path, data)`` (overwrite a stored file behind the backend's back, as a
failing disk or a stray writer would). Nothing here knows the backend. Imports pytest: for test modules only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pytest

from pitstore.datahash import file_hash
from pitstore.offline.entries import check_file, file_facts, put_entry, read_entries
from pitstore.storage import Storage

Damage = Callable[[Storage, str, bytes], None]


class StorageConformance:
    """Every operation of :class:`pitstore.storage.Storage`, atomic publication and damage detection included."""

    @pytest.fixture
    def storage(self) -> Storage:
        raise NotImplementedError("a backend's test class provides the storage fixture (a new, empty backend)")

    @pytest.fixture
    def damage(self) -> Damage:
        raise NotImplementedError("a backend's test class provides damage(storage, path, data)")

    def test_put_then_read_size_and_buffer(self, storage: Storage) -> None:
        storage.put("bars/s_A/one.parquet", b"hello")
        storage.put("bars/s_A/empty.parquet", b"")
        assert storage.read("bars/s_A/one.parquet") == b"hello"
        assert storage.read_buffer("bars/s_A/one.parquet").to_pybytes() == b"hello"
        assert storage.size("bars/s_A/one.parquet") == 5
        assert storage.size("bars/s_A/empty.parquet") == 0 and storage.read("bars/s_A/empty.parquet") == b""

    def test_missing_files(self, storage: Storage) -> None:
        assert storage.size("bars/nope.parquet") is None
        with pytest.raises(FileNotFoundError):
            storage.read("bars/nope.parquet")
        storage.delete("bars/nope.parquet")  # nothing to do, no error
        assert list(storage.list("bars")) == []

    def test_read_many_keeps_order(self, storage: Storage) -> None:
        paths = [f"features/fs/v1/s_{i}/{i}.parquet" for i in range(12)]
        for i, p in enumerate(paths):
            storage.put(p, bytes([i]) * (i + 1))
        assert storage.read_many(list(reversed(paths))) == [bytes([i]) * (i + 1) for i in reversed(range(12))]
        assert storage.read_many([]) == []
        with pytest.raises(FileNotFoundError):
            storage.read_many([paths[0], "features/fs/v1/gone.parquet"])

    def test_delete(self, storage: Storage) -> None:
        storage.put("cache/s_A/k.parquet", b"x")
        storage.delete("cache/s_A/k.parquet")
        assert storage.size("cache/s_A/k.parquet") is None and list(storage.list("cache")) == []

    def test_list_is_recursive_under_a_prefix_with_sizes_and_times(self, storage: Storage) -> None:
        t0 = time.time()
        storage.put("bars/s_A/1.parquet", b"12")
        storage.put("bars/s_B/2.parquet", b"123")
        storage.put("barsx/s_C/3.parquet", b"1")  # another prefix that merely starts alike
        storage.put("features/fs/v1/s_A/4.parquet", b"1234")
        got = sorted(storage.list("bars"))
        assert [(o.path, o.size) for o in got] == [("bars/s_A/1.parquet", 2), ("bars/s_B/2.parquet", 3)]
        # Object stores stamp whole seconds, with their own clock: a generous window, still catching 0 or garbage.
        assert all(t0 - 120 <= o.mtime <= time.time() + 120 for o in got)
        assert [o.path for o in storage.list("features")] == ["features/fs/v1/s_A/4.parquet"]

    def test_list_skips_hidden_directories(self, storage: Storage) -> None:
        storage.put("cache/.locks/k.lock", b"")
        storage.put("cache/s_A/.k.parquet.0badc0de.tmp", b"half")  # a hidden file is listed (gc removes it)
        assert [o.path for o in storage.list("cache")] == ["cache/s_A/.k.parquet.0badc0de.tmp"]

    def test_a_reader_never_sees_part_of_a_file(self, storage: Storage) -> None:
        """Readers racing a writer of a new file find it missing or complete, never partial."""
        body = bytes(range(256)) * 4096  # 1 MiB
        seen: set[int] = set()

        def read() -> None:
            for _ in range(40):
                n = storage.size("bars/s_A/big.parquet")
                if n is not None:
                    seen.add(n)
                    assert storage.read("bars/s_A/big.parquet") == body

        with ThreadPoolExecutor(2) as pool:
            reader = pool.submit(read)
            pool.submit(storage.put, "bars/s_A/big.parquet", body).result()
            reader.result()
        assert seen <= {len(body)}

    def test_entries_round_trip_with_their_facts(self, storage: Storage) -> None:
        a = pl.DataFrame({"symbol": ["A"] * 3, "x": [1.0, 2.0, float("nan")]})
        b = pl.DataFrame({"symbol": ["B"] * 2, "x": [None, 5.0]})
        pa_, size, digest = put_entry(storage, "features/fs/v1/s_A", a)
        pb, _, _ = put_entry(storage, "features/fs/v1/s_B", b)
        assert pa_ != put_entry(storage, "features/fs/v1/s_A", a)[0]  # every write is a fresh name
        assert (size, digest) == file_facts(storage, pa_) == (len(storage.read(pa_)), file_hash(storage.read(pa_)))
        got = read_entries(storage, [pb, pa_])
        assert got is not None and got.equals(pl.concat([b, a]))
        only = read_entries(storage, [pa_], ["x"])
        assert only is not None and only.columns == ["x"] and only.height == 3
        assert check_file(storage, pa_, size, digest) is None

    def test_check_file_finds_missing_truncated_and_changed(self, storage: Storage, damage: Damage) -> None:
        path, size, digest = put_entry(storage, "bars/s_A", pl.DataFrame({"x": list(range(100))}))
        body = storage.read(path)
        damage(storage, path, body[:-3])
        assert check_file(storage, path, size, digest) == f"{size - 3} bytes, the catalog says {size}"
        flipped = bytearray(body)
        flipped[size // 2] ^= 0xFF
        damage(storage, path, bytes(flipped))
        assert check_file(storage, path, size, digest) == "content does not match its hash"
        storage.delete(path)
        assert check_file(storage, path, size, digest) == "file is missing"
        assert check_file(storage, path, None, None) == "file is missing"
