"""API keys: hashes only on disk, scopes ordered, and a comparison whose work does not depend on the key."""

from __future__ import annotations

import hmac
import json
from pathlib import Path

import pytest

from pitstore.errors import ConfigError
from pitstore.server import auth
from pitstore.server.auth import KeyRing, create_key, hash_key


def test_keys_are_stored_as_hashes_and_resolve_to_their_scope(tmp_path: Path) -> None:
    read, admin = create_key(tmp_path, "read", "research"), create_key(tmp_path, "admin")
    text = (tmp_path / "api_keys.json").read_text()
    assert read not in text and admin not in text and hash_key(read) in text
    assert [e["scope"] for e in json.loads(text)] == ["read", "admin"]
    ring = KeyRing.load(tmp_path, f"write:{hash_key('psk_from_env')}")
    assert ring.scope_of(read) == "read" and ring.scope_of(admin) == "admin"
    assert ring.scope_of("psk_from_env") == "write"
    assert ring.scope_of(read[:-1]) is None and ring.scope_of("") is None
    assert ring.allows("admin", "write") and ring.allows("write", "read") and not ring.allows("read", "write")
    assert not ring.allows(None, "read")


@pytest.mark.parametrize("bad", ["read:abc", "root:" + "0" * 64, "read:" + "g" * 64, "nocolon"])
def test_a_malformed_key_setting_is_a_config_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="api_keys"):
        KeyRing.load(tmp_path, bad)


def test_a_bad_scope_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scope"):
        create_key(tmp_path, "superuser")


def test_the_comparison_does_the_same_work_whatever_key_is_given(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing cannot leak a prefix: the given key is hashed first (a shared prefix of keys shares nothing of their
    digests), then compared in constant time against every stored hash, matched or not."""
    keys = [create_key(tmp_path, s) for s in ("read", "write", "admin")]
    ring = KeyRing.load(tmp_path, None)
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for given in [keys[0], keys[2], keys[0][:-1] + "x", keys[1][:20], "x" * 200, ""]:
        calls.clear()
        ring.scope_of(given)
        assert calls == [(32, 32)] * 3, given  # three stored hashes, each compared in full, every time
