"""schemathesis against the /openapi.json of a running `pitstore serve`: every operation fuzzed (valid and
invalid inputs), no response is a 5xx and every response conforms to the schema (status, content type, body,
headers). ``positive_data_acceptance`` is left out: a schema cannot say which symbols and feature sets exist,
so a well-formed unknown name is rightly a 404."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from server_proc import Server

from pitstore import Store, standard_features
from pitstore.testing import synthetic_bars


def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with Store.open(root) as store:
        store.ingest(synthetic_bars(3, 200))
        store.backfill(standard_features())
        store.materialize(standard_features())
    st = Path(sys.executable).parent / "st"
    if not st.exists():
        pytest.fail("schemathesis is not installed: `make test` installs it with the test extra")
    server = Server(root)
    try:
        done = subprocess.run(
            [str(st), "run", f"{server.url}/openapi.json", "--checks", "all", "--exclude-checks",
             "positive_data_acceptance", "--max-examples", "30", "--generation-deterministic", "--no-color"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        server.stop()
    summary = done.stdout[-3000:]
    assert done.returncode == 0, summary
    assert " passed" in summary and "failure" not in summary.split("Test cases:")[-1], summary
