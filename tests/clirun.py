"""The pitstore CLI run in-process, for the tests of its commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from pitstore.cli import app

runner = CliRunner()


def run(*args: str | Path, code: int = 0) -> str:
    """Invoke the CLI in-process; assert the exit code and return everything it printed."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def run_json(*args: str | Path) -> Any:
    """Invoke the CLI and parse its stdout as JSON."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
