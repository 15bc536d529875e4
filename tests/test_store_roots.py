"""Store roots given as URLs (issue #19 item 4): a local directory or file:// only; any other scheme is a
ConfigError naming it, raised before anything is created on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from clirun import run

from pitstore import ConfigError, Settings, Store


@pytest.mark.parametrize("url", ["s3://bucket/x", "gs://bucket/x", "https://example.com/store", "S3://b",
                                 "postgresql://db/store", "file://otherhost/x"])
def test_unknown_url_roots_are_config_errors_and_create_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               url: str) -> None:
    monkeypatch.chdir(tmp_path)
    scheme = url.split(":")[0].lower()
    with pytest.raises(ConfigError, match="file:///path" if scheme == "file" else f"{scheme}://.*not yet supported"):
        Store.open(url)
    if scheme != "file":  # Path folds "file://host/x" into "file:/host/x", a valid URL of the local /host/x
        with pytest.raises(ConfigError):
            Store.open(Path(url))  # folded to "s3:/bucket/x" by Path: still a URL, not a directory
    monkeypatch.setenv("PITSTORE_ROOT", url)
    with pytest.raises(ConfigError):
        Store.open()
    out = run("stats", "--root", url.replace("file://otherhost", "s3://otherhost"), code=1)
    assert "error:" in out and "Traceback" not in out
    assert list(tmp_path.iterdir()) == []


def test_file_urls_are_the_local_path(tmp_path: Path) -> None:
    with Store.open(f"file://{tmp_path}/a%20store") as store:
        assert store.root == tmp_path / "a store"
    assert (tmp_path / "a store" / "catalog.sqlite").is_file()
    assert Settings.load(root=f"file://localhost{tmp_path}/b").root == tmp_path / "b"
    with Store.open(tmp_path / "c:d") as store:  # a colon without a slash after it is a directory name
        assert store.root.name == "c:d"
