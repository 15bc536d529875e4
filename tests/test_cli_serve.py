"""`pitstore materialize` and `pitstore warm` load the online tier of an existing store."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

import pitstore
from pitstore import Store, standard_features
from pitstore.cli import app

runner = CliRunner()


def _store(root: Path) -> None:
    with Store.open(root) as s:
        s.ingest(pitstore.testing.synthetic_bars(n_symbols=3, n_bars=80))
        s.backfill(standard_features())


def test_materialize_then_warm_write_the_online_tier(tmp_path: Path) -> None:
    _store(tmp_path)
    result = runner.invoke(app, ["materialize", "daily_core", "--symbols", "S0000,S0001", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "2 latest rows" in result.output
    with Store.open(tmp_path) as s:
        rows = s.serving.online.get_latest("daily_core@1", ["S0000", "S0001", "S0002"])
        assert [r is not None for r in rows] == [True, True, False]
        want = s.read("daily_core", ["S0001"]).row(-1)[2:]
        assert rows[1] is not None and tuple(rows[1].values) == tuple(want)
    result = runner.invoke(app, ["warm", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "3 rows" in result.output


def test_materialize_of_an_unknown_set_is_a_clean_error(tmp_path: Path) -> None:
    _store(tmp_path)
    result = runner.invoke(app, ["materialize", "nope", "--root", str(tmp_path)])
    assert result.exit_code != 0
    assert "nope" in result.output
