"""Names (symbols, feature-set names) as one safe, bounded file-name component.

>>> safe_name("AAPL", prefix="s_")
's_AAPL'
>>> safe_name("EUR/USD", prefix="s_")
's_EUR%2FUSD+9105c84af42600cc'
>>> safe_name("..")
'%2E.+5ec1f7e700f37c3d'

ASCII letters, digits and ``-_.=`` are kept, so plain names stay readable and keep the paths older pitstore
versions wrote; any other character becomes ``%XX`` per UTF-8 byte. A name that was encoded or shortened
gets ``+`` and a sha256 prefix of the original: ``+`` and ``%`` never survive as themselves, so two names never
map to one component (kept names have neither). Only the directory part of a path comes from here: files
inside get uuid names and are always listed through the catalog, so readers never derive a path from a name.
"""

from __future__ import annotations

import hashlib

__all__ = ["MAX_COMPONENT_BYTES", "safe_name"]

# Most file systems allow 255 bytes per component; 32 are left for what may be added to it (atomic.publish
# makes ".<name>.<8 hex>.tmp" of a file name, plus an extension such as ".parquet").
MAX_COMPONENT_BYTES = 255 - 32
_KEPT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=")
_HASH_HEX = 16  # 64 bits: a collision would only share a directory (files are uuid-named), never data


def safe_name(name: str, *, prefix: str = "") -> str:
    """``prefix`` + ``name`` as one file-name component: no ``/``, never ``.``, ``..``, empty or hidden, at most
    :data:`MAX_COMPONENT_BYTES` bytes in UTF-8; distinct names give distinct components."""
    body = "".join(c if c in _KEPT else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in name)
    if not prefix and body.startswith("."):  # ".", ".." and hidden names: the leading dot is encoded
        body = "%2E" + body[1:]
    head = prefix.encode()
    if body == name and name and len(head) + len(body) <= MAX_COMPONENT_BYTES:
        return prefix + body
    suffix = "+" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    room = MAX_COMPONENT_BYTES - len(head) - len(suffix)
    if room < 0:
        raise ValueError(f"prefix {prefix!r} leaves no room for a name")
    cut = body[:room]  # body is ASCII: characters are bytes
    if "%" in cut[-2:]:  # do not end on a broken escape (cosmetic: the hash keeps it distinct)
        cut = cut[: cut.rindex("%")]
    return prefix + cut + suffix
