"""The data backends: the conformance suite on a local directory and on a real S3-compatible server process
(moto's standalone server), plus what only one backend has (URL parsing, verified object puts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from s3_server import S3Server, s3_server, s3_url  # noqa: F401  (fixtures)

from pitstore.errors import ConfigError
from pitstore.storage import LocalStorage, Storage, open_storage
from pitstore.storage.fsspec import FsspecStorage
from pitstore.testing.storage import StorageConformance


class TestLocal(StorageConformance):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> Storage:
        return LocalStorage(tmp_path / "data")

    @pytest.fixture
    def damage(self) -> Any:
        def write(storage: Storage, path: str, data: bytes) -> None:
            local = storage.local_path(path)
            assert local is not None
            local.write_bytes(data)

        return write

    def test_put_leaves_no_temporary(self, storage: Storage, tmp_path: Path) -> None:
        storage.put("bars/s_A/x.parquet", b"abc")
        assert [p.name for p in (tmp_path / "data" / "bars" / "s_A").iterdir()] == ["x.parquet"]


class TestS3(StorageConformance):
    @pytest.fixture
    def storage(self, s3_url: str, s3_server: S3Server) -> Storage:  # noqa: F811
        return open_storage(s3_url, Path("/nonexistent-root"), s3_server.options)

    @pytest.fixture
    def damage(self, s3_server: S3Server, s3_url: str) -> Any:  # noqa: F811
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.options)  # another client: behind its back

        def write(storage: Storage, path: str, data: bytes) -> None:
            assert isinstance(storage, FsspecStorage)
            fs.pipe_file(f"{storage.base}/{path}", data)

        return write

    def test_a_put_the_server_did_not_store_whole_is_refused_and_removed(self, storage: Storage,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """The size read back (HEAD) and the ETag (MD5 of what was sent) are checked before put returns."""
        assert isinstance(storage, FsspecStorage)
        real = storage.fs.info
        monkeypatch.setattr(storage.fs, "info", lambda p, **k: {**real(p, **k), "size": 1})
        with pytest.raises(OSError, match="stored 1 bytes of 3"):
            storage.put("bars/s_A/x.parquet", b"abc")
        monkeypatch.setattr(storage.fs, "info", lambda p, **k: {**real(p, **k), "ETag": '"' + "0" * 32 + '"'})
        with pytest.raises(OSError, match="MD5"):
            storage.put("bars/s_A/y.parquet", b"abc")
        monkeypatch.undo()
        assert storage.size("bars/s_A/x.parquet") is None and storage.size("bars/s_A/y.parquet") is None

    def test_etag_is_the_md5_of_what_was_sent(self, storage: Storage) -> None:
        """The check above is real on this server: a single-part PUT's ETag is the body's MD5."""
        import hashlib

        assert isinstance(storage, FsspecStorage)
        storage.put("bars/s_A/z.parquet", b"abc")
        etag = storage.fs.info(f"{storage.base}/bars/s_A/z.parquet")["ETag"].strip('"')
        assert etag == hashlib.md5(b"abc").hexdigest()


def test_open_storage_urls(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert isinstance(open_storage(None, root), LocalStorage) and open_storage(None, root).url == str(root)
    assert open_storage(str(tmp_path / "d"), root).url == str(tmp_path / "d")
    assert open_storage(f"file://{tmp_path}/d", root).url == str(tmp_path / "d")
    assert open_storage("memory://pst-test/x", root).url == "memory://pst-test/x"
    with pytest.raises(ConfigError, match="file://"):
        open_storage("file://host/d", root)
