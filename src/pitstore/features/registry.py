"""Versioning: the canonical definition of a feature set, its fingerprint, and the registry of versions.

This module is the one place where definitions become fingerprints and fingerprints become versions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pitstore.catalog.base import VersionRegistry, VersionRow
from pitstore.errors import FeatureSetNotFoundError, InvalidInputError, NotFoundError, VersionNotFoundError
from pitstore.features.base import Feature, FeatureSet
from pitstore.features.engine import ENGINE_VERSION
from pitstore.fingerprint import canonical_json, code_fingerprint, library_versions, sha256_hex

__all__ = ["FeatureRef", "Registry", "VersionInfo", "definition", "fingerprint", "parse_ref"]

_REF = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:@v?(?P<version>\d+))?(?::(?P<column>[A-Za-z0-9_.]+))?$")


def _feature_definition(f: Feature) -> dict[str, Any]:
    spec = f.spec()
    if f.kind == "expr":
        assert f.expr is not None
        spec["code"] = f.expr.meta.serialize(format="json")
    elif f.kind == "python":
        assert f.fn is not None
        spec["code"] = code_fingerprint(f.fn)
    return spec


def definition(fs: FeatureSet) -> dict[str, Any]:
    """The canonical definition of a feature set: everything that can change a stored or served number."""
    return {
        "name": fs.name,
        "timeframe": fs.timeframe,
        "ttl_seconds": fs.ttl.total_seconds() if fs.ttl is not None else None,
        "availability_lag_seconds": fs.availability_lag.total_seconds(),
        "version_tag": fs.version,
        "features": [_feature_definition(f) for f in fs.features],
        "columns": list(fs.columns),
        "engine_version": ENGINE_VERSION,
        "libraries": library_versions(),
    }


def fingerprint(fs: FeatureSet) -> str:
    """sha256 of the canonical definition. Same definition, same fingerprint, in any process.

    >>> from pitstore import FeatureSet, sma
    >>> fingerprint(FeatureSet("a", [sma(5)])) == fingerprint(FeatureSet("a", [sma(5)]))
    True
    """
    return sha256_hex(canonical_json(definition(fs)))


@dataclass(frozen=True)
class VersionInfo:
    """A registered version of a feature set."""

    name: str
    version: int
    fingerprint: str
    created_at: datetime
    definition: dict[str, Any]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.definition["columns"])

    @classmethod
    def from_row(cls, row: VersionRow) -> VersionInfo:
        return cls(row.name, row.version, row.fingerprint, datetime.fromisoformat(row.created_at),
                   json.loads(row.definition))


@dataclass(frozen=True)
class FeatureRef:
    """A resolved reference: a feature set, a concrete version, and the columns it names."""

    feature_set: str
    version: int
    columns: tuple[str, ...]

    def __str__(self) -> str:
        base = f"{self.feature_set}@{self.version}"
        return f"{base}:{self.columns[0]}" if len(self.columns) == 1 else base


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """Split ``"daily_core@2:rsi_14"`` into ``("daily_core", 2, "rsi_14")``; version and column are optional."""
    m = _REF.match(ref) if isinstance(ref, str) else None
    if m is None:
        raise InvalidInputError(
            f"invalid feature reference {ref!r}: expected 'set', 'set:column', 'set@2' or 'set@2:column'"
        )
    version = m.group("version")
    return m.group("name"), int(version) if version is not None else None, m.group("column")


class Registry:
    """Feature sets and their versions, persisted in a catalog."""

    def __init__(self, catalog: VersionRegistry) -> None:
        self._catalog = catalog

    def register(self, fs: FeatureSet) -> int:
        """Register ``fs``; returns its version (the existing one when this definition is known)."""
        if not isinstance(fs, FeatureSet):
            raise InvalidInputError(f"register() takes a FeatureSet, got {type(fs).__name__}")
        defn = definition(fs)
        text = canonical_json(defn)
        # Store readable JSON next to the canonical fingerprint: both are derived from the same dict.
        row = self._catalog.register_version(fs.name, sha256_hex(text), json.dumps(defn, sort_keys=True))
        return row.version

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, oldest first; raises FeatureSetNotFoundError when unknown."""
        rows = self._catalog.versions(name)
        if not rows:
            known = self._catalog.names()
            raise FeatureSetNotFoundError(
                f"no feature set named {name!r}" + (f"; known: {', '.join(known)}" if known else "")
            )
        return [VersionInfo.from_row(r) for r in rows]

    def get(self, name: str, version: int | None = None) -> VersionInfo:
        """One version of ``name`` (the latest when ``version`` is None)."""
        infos = self.versions(name)
        if version is None:
            return infos[-1]
        for info in infos:
            if info.version == version:
                return info
        raise VersionNotFoundError(
            f"feature set {name!r} has no version {version}; versions: {', '.join(str(i.version) for i in infos)}"
        )

    def resolve(self, ref: str) -> FeatureRef:
        """Resolve ``"name[@version][:column]"`` to a concrete version and its columns."""
        name, version, column = parse_ref(ref)
        info = self.get(name, version)
        if column is None:
            return FeatureRef(name, info.version, info.columns)
        if column not in info.columns:
            raise NotFoundError(
                f"feature set {name!r} version {info.version} has no column {column!r}; "
                f"columns: {', '.join(info.columns)}"
            )
        return FeatureRef(name, info.version, (column,))

    def names(self) -> list[str]:
        return self._catalog.names()

    def rebuild(self, name: str, version: int | None = None) -> FeatureSet:
        """The FeatureSet of a registered version (the latest when ``version`` is None), rebuilt from its stored
        definition, so a process that never registered it can compute it (e.g. ``push``). Only built-in and
        TA-Lib features can be rebuilt: expressions and Python code are stored as fingerprints, not as code.
        InvalidInputError naming the features when it cannot be rebuilt, or when the rebuilt set's fingerprint
        is not the stored one (e.g. pitstore or a library changed since it was registered)."""
        info = self.get(name, version)
        specs = info.definition["features"]
        code = [", ".join(f["outputs"]) for f in specs if f["kind"] not in ("builtin", "talib")]
        if code:
            raise InvalidInputError(f"feature set {name!r} version {info.version} cannot be rebuilt from the catalog:"
                                    f" its features {'; '.join(code)} are expressions or Python code (stored as "
                                    "fingerprints only); register() it in this process or pass it to "
                                    "push(feature_sets=...)")
        d = info.definition
        ttl = d["ttl_seconds"]
        fs = FeatureSet(name, [_rebuilt_feature(f) for f in specs], timeframe=d["timeframe"],
                        ttl=timedelta(seconds=ttl) if ttl is not None else None,
                        availability_lag=timedelta(seconds=d["availability_lag_seconds"]), version=d["version_tag"])
        if fingerprint(fs) != info.fingerprint:
            raise InvalidInputError(f"feature set {name!r} version {info.version} cannot be rebuilt from the catalog:"
                                    " its definition rebuilt here has another fingerprint (registered with other "
                                    f"pitstore or library versions: {d['engine_version']}, {d['libraries']}); "
                                    "register() it in this process")
        return fs


def _rebuilt_feature(spec: dict[str, Any]) -> Feature:
    """A built-in or TA-Lib feature from its stored spec: the catalogue builds it, the stored outputs name it."""
    from pitstore.features.catalogue import build_feature  # the catalogue's modules build on this one's users

    name = spec["func"] if spec["kind"] == "builtin" else f"talib.{spec['func']}"
    feature = build_feature(name, spec["params"])
    suffix = feature.output_suffixes[0]
    alias = spec["outputs"][0].removesuffix(f"_{suffix}" if suffix else "")
    if alias != feature.name:
        feature = feature.alias(alias)
    return feature.tagged(spec["version"]) if spec["version"] is not None else feature
