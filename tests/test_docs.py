"""The documentation agrees with the code: one configuration table for every setting and variable, and no
markdown file links outside the repository."""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

import pytest

from pitstore.config import Settings

REPO = Path(__file__).resolve().parents[1]
CONFIG_DOC = REPO / "docs" / "configuration.md"
ENV = re.compile(r"\bPITSTORE_[A-Z0-9_]+\b")
CODE = re.compile(r"`([^`]+)`")
# A value each setting accepts from the environment, different from its default.
SAMPLES = {
    "root": "/tmp/pitstore-env-root", "lock_timeout": "7.5", "online_url": "memory://",
    "redis_url": "redis://127.0.0.1:6399/3", "online_namespace": "ns-env", "postgres_url": "postgresql://h/db",
    "history_days": "7", "live_flush_bars": "7", "max_future_days": "2.5", "api_keys": "read:" + "0" * 64,
    "max_body_bytes": "4096", "cost_per_compute_second": "0.5", "cost_per_data_call": "0.25", "read_only": "true",
    "entry_cache_bytes": "1048576", "read_batch_bytes": "65536", "retention_days": "30", "bar_segments": "4",
    "catalog_url": "postgresql://h/catalog", "catalog_schema": "cat_env",
    "data_url": "s3://bucket/prefix", "data_options": '{"endpoint_url": "http://127.0.0.1:9000"}',
}


def _rows() -> list[tuple[str | None, list[str], str]]:
    """(setting or None, environment variables, default cell) of every row of every table in configuration.md."""
    rows = []
    for line in CONFIG_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 4 or cells[0] in ("setting", "---"):
            continue
        names = CODE.findall(cells[0])
        rows.append((names[0] if names else None, CODE.findall(cells[1]), cells[2]))
    return rows


def _env_in(root: Path) -> set[str]:
    return {m for path in root.rglob("*.py") for m in ENV.findall(path.read_text())}


def test_every_setting_has_one_row_and_every_row_is_a_setting() -> None:
    """The Settings fields and the table's setting names are the same set, each named once, with its default."""
    named = [name for name, _, _ in _rows() if name is not None]
    assert sorted(named) == sorted({f.name for f in fields(Settings)})
    assert len(named) == len(set(named))
    defaults = Settings()
    for name, _, default in _rows():
        value = getattr(defaults, name) if name else None
        if value is not None:
            assert str(value) in default, f"{name}: default {value!r} not in the table's {default!r}"
        elif name:
            assert "none" in default, f"{name}: no default, the table says {default!r}"


def test_every_pitstore_variable_of_the_code_is_in_the_table() -> None:
    """Each PITSTORE_* string in src/ (and the tests' own) is a row, and each variable in the table is read by
    the code."""
    documented = {env for _, envs, _ in _rows() for env in envs}
    in_src = _env_in(REPO / "src")
    assert in_src - documented == set(), "PITSTORE_* variables of src/ missing from docs/configuration.md"
    settings_env = {f"PITSTORE_{f.name.upper()}" for f in fields(Settings)}
    in_code = in_src | _env_in(REPO / "tests") | settings_env | {"FEATURE_STORE_PATH"}
    assert documented - in_code == set(), "docs/configuration.md documents variables no code reads"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_setting_is_read_from_its_documented_variable(name: str, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    """Setting the variable the table names changes the setting (the env-built names are really read)."""
    monkeypatch.chdir(tmp_path)  # no pitstore.toml
    for key in [k for k in os.environ if k.startswith("PITSTORE_") or k == "FEATURE_STORE_PATH"]:
        monkeypatch.delenv(key)
    rows = {setting: envs for setting, envs, _ in _rows() if setting}
    assert rows[name], f"{name}: the table gives no environment variable"
    for env in rows[name]:
        monkeypatch.setenv(env, SAMPLES[name])
        value = getattr(Settings.load(), name)
        assert value != getattr(Settings(), name) and str(value) == str(type(value)(SAMPLES[name])), (env, value)
        monkeypatch.delenv(env)


def test_every_field_has_a_sample() -> None:
    """A new setting needs a row in the table and a sample here."""
    assert set(SAMPLES) == {f.name for f in fields(Settings)}


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|href=\"([^\"]+)\"")
PARENT_PATH = re.compile(r"(?<![\w/.])((?:\.\./)+[\w./-]*)")


def _markdown_files() -> list[Path]:
    skip = {".git", ".venv", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache", "build", "dist"}
    return sorted(p for p in REPO.rglob("*.md") if not skip & set(p.relative_to(REPO).parts))


def _outside(doc: Path, target: str) -> bool:
    target = target.split("#", 1)[0]
    if not target or (re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("file:")):
        return False  # an anchor, or a web address
    if target.startswith(("/", "file:", "~")):
        return True  # an absolute path is this machine's, never the repository's
    return not (doc.parent / target).resolve().is_relative_to(REPO)


def test_no_markdown_file_points_outside_the_repository() -> None:
    """Links, and ../ paths in the text, of every markdown file resolve inside the repository root."""
    files = _markdown_files()
    assert REPO / "README.md" in files
    bad = []
    for doc in files:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            targets = [a or b for a, b in LINK.findall(line)] + PARENT_PATH.findall(line)
            bad += [f"{doc.relative_to(REPO)}:{n}: {t}" for t in targets if _outside(doc, t)]
    assert bad == []


def test_relative_links_resolve() -> None:
    """Every relative link of a markdown file names a file of the repository."""
    missing = []
    for doc in _markdown_files():
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for a, b in LINK.findall(line):
                target = (a or b).split("#", 1)[0]
                if target and not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not (doc.parent / target).exists():
                    missing.append(f"{doc.relative_to(REPO)}:{n}: {target}")
    assert missing == []


def test_the_link_check_catches_a_path_outside(tmp_path: Path) -> None:
    """The check itself: ../shared/DESIGN.md from the README is outside, docs/../README.md is inside."""
    assert _outside(REPO / "README.md", "../shared/DESIGN.md")
    assert _outside(REPO / "README.md", "/work/shared/DESIGN.md")
    assert not _outside(REPO / "docs" / "design.md", "../README.md")
    assert not _outside(REPO / "README.md", "https://example.com/x")
    assert PARENT_PATH.findall("see `../shared/DESIGN.md` and ./x") == ["../shared/DESIGN.md"]
