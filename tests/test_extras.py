"""Optional extras: ``import pitstore`` and the embedded store load no server driver, and a mode whose extra is
missing says which one to install (a MissingDependencyError), in a fresh interpreter each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DRIVERS = ["psycopg", "redis", "fastapi", "uvicorn", "starlette", "httpx", "prometheus_client", "tenacity",
           "dask", "distributed", "fsspec", "s3fs", "tables", "h5py", "selenium",
           "pytest", "_pytest", "hypothesis"]  # pitstore.testing's suites import pytest only when a test does


def _python(code: str) -> str:
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_embedded_store_loads_no_server_driver(tmp_path: Path) -> None:
    loaded = json.loads(_python(f"""
import json, sys
import pitstore
from pitstore import Store, standard_features
from pitstore.testing import synthetic_bars
with Store.open({str(tmp_path / "s")!r}) as store:
    store.ingest(synthetic_bars(2, 60))
    store.backfill(standard_features())
    store.get_online(["S0000"], "daily_core")
    store.get_historical(synthetic_bars(2, 60).select("symbol", "ts"), "daily_core")
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""))
    assert set(loaded) & set(DRIVERS) == set()


@pytest.mark.parametrize(("blocked", "setting", "extra"), [
    ("psycopg", "postgres_url='postgresql://127.0.0.1/test'", "postgres"),
    ("psycopg", "catalog_url='postgresql://127.0.0.1/test'", "postgres"),
    ("redis", "online_url='redis://127.0.0.1:6379/0'", "redis"),
])
def test_a_mode_without_its_extra_names_the_install(tmp_path: Path, blocked: str, setting: str, extra: str) -> None:
    out = _python(f"""
import sys
sys.modules[{blocked!r}] = None  # as if not installed: importing it raises ImportError
from pitstore import Store, MissingDependencyError
try:
    with Store.open({str(tmp_path / "s")!r}, {setting}) as store:
        store.get_online(["S0000"], "daily_core")
except MissingDependencyError as exc:
    print("missing:", exc)
""")
    assert out.startswith("missing:") and f"pip install 'pitstore[{extra}]'" in out, out
