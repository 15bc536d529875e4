"""PITSTORE_REDIS_URL (the redis_url setting) names the online tier when online_url is not set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pitstore.config import Settings
from pitstore.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no pitstore.toml
    for key in [k for k in os.environ if k.startswith("PITSTORE_") or k == "FEATURE_STORE_PATH"]:
        monkeypatch.delenv(key)


def test_redis_url_alone_is_the_online_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable of the design is not read and then ignored: alone, it is the online URL."""
    monkeypatch.setenv("PITSTORE_REDIS_URL", "redis://127.0.0.1:6379/2")
    assert Settings.load().online_url == "redis://127.0.0.1:6379/2"
    assert Settings.load(redis_url="rediss://h:6380/0").online_url == "rediss://h:6380/0"


def test_online_url_wins_over_redis_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """online_url set anywhere (keyword, environment, pitstore.toml) is used; redis_url does not override it."""
    monkeypatch.setenv("PITSTORE_REDIS_URL", "redis://127.0.0.1:6379/2")
    assert Settings.load(online_url="memory://").online_url == "memory://"
    (tmp_path / "pitstore.toml").write_text('online_url = "sqlite://"\n')
    assert Settings.load().online_url == "sqlite://"
    monkeypatch.setenv("PITSTORE_ONLINE_URL", "memory://")
    assert Settings.load().online_url == "memory://"


def test_without_redis_url_the_default_stays() -> None:
    assert Settings.load().online_url == "sqlite://"
    assert Settings.load().redis_url is None


@pytest.mark.parametrize("bad", ["sqlite://", "127.0.0.1:6379", "http://h"])
def test_redis_url_must_be_a_redis_url(bad: str) -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        Settings.load(redis_url=bad)
