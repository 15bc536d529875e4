"""API keys: stored only as SHA-256 hashes, compared in constant time, each with a scope.

Keys are 32 random bytes (``psk_`` + URL-safe base64), so a plain SHA-256 is as good as a slow hash here: there
is nothing to brute-force. Scopes are ordered: ``read`` < ``write`` (push) < ``admin`` (invalidate).
A key file (``<root>/api_keys.json``, written by ``pitstore keys create``) and the ``api_keys`` setting
(``PITSTORE_API_KEYS="read:<sha256>,admin:<sha256>"``) are merged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pitstore.errors import ConfigError

__all__ = ["KEY_FILE", "SCOPES", "KeyRing", "create_key", "hash_key", "parse_key_setting", "read_key_file"]

SCOPES = ("read", "write", "admin")
KEY_FILE = "api_keys.json"
_PREFIX = "psk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_setting(value: str | None) -> list[tuple[str, str]]:
    """``"read:<hex>,admin:<hex>"`` -> [(scope, hash)]; a malformed entry is a ConfigError."""
    out = []
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        scope, _, digest = item.partition(":")
        if scope not in SCOPES or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"api_keys: expected '<read|write|admin>:<sha256 hex>' entries, got {item[:20]!r}...")
        out.append((scope, digest))
    return out


def create_key(root: Path, scope: str, name: str = "") -> str:
    """A new key of ``scope``: its hash is added to the root's key file; the key itself is returned once."""
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    key = _PREFIX + secrets.token_urlsafe(32)
    path = root / KEY_FILE
    entries = read_key_file(path)
    entries.append({"scope": scope, "sha256": hash_key(key), "name": name,
                    "created": datetime.now(UTC).isoformat(timespec="seconds")})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return key


def read_key_file(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
        parse_key_setting(",".join(f"{e['scope']}:{e['sha256']}" for e in entries))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a valid key file ({exc})") from exc
    return list(entries)


@dataclass(frozen=True)
class KeyRing:
    """The configured key hashes with their scopes; empty means no authentication."""

    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def load(cls, root: Path, setting: str | None) -> KeyRing:
        pairs = parse_key_setting(setting)
        pairs += [(e["scope"], e["sha256"]) for e in read_key_file(root / KEY_FILE)]
        return cls(tuple((scope, bytes.fromhex(digest)) for scope, digest in pairs))

    def __bool__(self) -> bool:
        return bool(self.keys)

    def scope_of(self, key: str) -> str | None:
        """The scope of ``key``, or None. Every stored hash is compared (constant time each), so the time
        taken depends neither on where a match is nor on how much of a prefix matches."""
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for scope, stored in self.keys:
            if hmac.compare_digest(digest, stored) and found is None:
                found = scope
        return found

    @staticmethod
    def allows(scope: str | None, needed: str) -> bool:
        return scope is not None and SCOPES.index(scope) >= SCOPES.index(needed)
