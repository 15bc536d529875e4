"""The public API's types, as a typed caller sees them: tests/typing/check_public_api.py under mypy --strict.

A public method that returns ``Any`` (or the wrong frame family) fails here, not in a user's type checker.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pitstore

mypy_api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parent.parent
CHECKED = Path(__file__).resolve().parent / "typing" / "check_public_api.py"


def test_public_api_types_check_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    # Check the pitstore this test imports (a worktree's src on PYTHONPATH, or the installed package).
    monkeypatch.setenv("MYPYPATH", str(Path(pitstore.__file__).resolve().parent.parent))
    monkeypatch.chdir(ROOT)  # the project's mypy settings and cache (.mypy_cache, shared with `mypy src`)
    stdout, stderr, status = mypy_api.run(["--strict", "--config-file", str(ROOT / "pyproject.toml"),
                                           "--no-error-summary", os.fspath(CHECKED)])
    assert status == 0, stdout + stderr
