"""Shared by the benchmark scripts: writing their printed text under bench/results/."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def write_results(path: Path | None, lines: Sequence[str]) -> None:
    """Write the printed lines to ``path`` (nothing when None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
