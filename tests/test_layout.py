"""The folder layout follows DESIGN §3's tiers and data flows down it: a package imports the shared kernel
(the top-level modules) and the packages before it in ``ORDER``. The imports that still go up are listed in
``KNOWN_UPWARD`` (docs/decisions.md, 2026-12-04); a new one fails here, so the list can only shrink."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pitstore"

# Top to bottom: where data comes from, where it is kept, how it is read, then the shells around the Store.
ORDER = (
    "storage", "catalog", "sources", "features", "cache", "offline", "history", "online", "live", "scale",
    "ops", "testing", "store", "server", "client", "cli",
)  # fmt: skip

KNOWN_UPWARD = {
    ("catalog", "cache"),  # cache.lock's process locks guard catalog files too
    ("catalog", "features"),  # versions records a registration's VersionInfo
    ("catalog", "online"),  # versions drops a retired version's online rows
    ("catalog", "sources"),  # the catalogs list a bar snapshot's segment files
    ("sources", "cache"),  # ingest takes the per-symbol key locks
    ("sources", "features"),  # the spacing check reads a FeatureSet's timeframe
    ("sources", "offline"),  # bar snapshots and legacy imports are written with the entry-file helpers
    ("features", "cache"),  # on-demand features compute through the compute cache
    ("cache", "offline"),  # the entry-file helpers encode cache results
    ("history", "online"),  # the recent-history read reports an outage like the online reads
    ("online", "live"),  # serving and the router answer from the pushed, unflushed rows
    ("sources", "store"),  # the legacy import is typed against the Store it fills (TYPE_CHECKING only)
    ("ops", "store"),  # migrate copies one Store into another
    ("server", "cli"),  # the server loads a feature set by the CLI's module:name rule
}


def _package(module: str) -> str | None:
    """The tier package of ``pitstore.X[.Y]``; None for the shared kernel (top-level modules)."""
    parts = module.split(".")
    if parts[0] != "pitstore" or len(parts) < 2:
        return None
    if parts[1] == "store" or (SRC / parts[1]).is_dir():
        return parts[1]
    return None


def _imports(path: Path) -> set[str]:
    """Every pitstore module ``path`` imports, at any depth (``from pitstore import x`` counts as pitstore.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pitstore":
                found.update(f"pitstore.{alias.name}" for alias in node.names)
            elif node.module.startswith("pitstore."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("pitstore."))
    return found


def _upward_edges() -> dict[tuple[str, str], list[str]]:
    rank = {name: i for i, name in enumerate(ORDER)}
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        source = _package(".".join(rel.parts))
        if source is None:
            continue
        for target in map(_package, _imports(path)):
            if target is not None and target != source and rank[target] > rank[source]:
                edges.setdefault((source, target), []).append(str(path.relative_to(SRC)))
    return edges


def test_every_package_has_a_place_in_the_order() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()} | {"store"}
    assert packages == set(ORDER)


def test_the_kernel_imports_no_tier() -> None:
    kernel = [p for p in SRC.glob("*.py") if p.stem not in {"__init__", "__main__", "store"}]
    assert kernel
    leaks = {p.name: sorted(t for t in _imports(p) if _package(t)) for p in kernel}
    assert {name: targets for name, targets in leaks.items() if targets} == {}


def test_no_new_upward_import() -> None:
    edges = _upward_edges()
    new = {edge: files for edge, files in edges.items() if edge not in KNOWN_UPWARD}
    assert new == {}, f"imports against the tier order (move the code down, or record why): {new}"
    # A fixed edge leaves the list, so it cannot come back unnoticed.
    assert set(edges) == KNOWN_UPWARD
