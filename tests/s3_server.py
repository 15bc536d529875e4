"""A real S3-compatible server for the data-backend tests: moto's standalone server, started as a separate
process (``python -m moto.server``) on a free loopback port, once per test session. Never an in-process mock:
the store talks HTTP to it exactly as to S3. Under ``CI=true`` a missing moto is a failure, never a skip."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from servers import free_port, skip_or_fail, wait_for


class S3Server:
    """``python -m moto.server`` on a free port; ``bucket()`` makes a fresh bucket and returns its URL."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # The credentials moto accepts; passed as fsspec options so no AWS_* variable of the machine is used.
        self.options: dict[str, Any] = {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing",
                                        "client_kwargs": {"region_name": "us-east-1"},
                                        # Loopback answers in milliseconds: a stuck request fails the test fast.
                                        "config_kwargs": {"read_timeout": 20, "connect_timeout": 5,
                                                          "retries": {"max_attempts": 2}}}
        self.proc: subprocess.Popen[bytes] | None = None
        # Its request log goes to a file: a pipe nobody reads fills up and blocks every request thread.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in stop)

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        wait_for(self._up, 60, f"moto.server on port {self.port}")

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            self.log.seek(0)
            err = self.log.read().decode(errors="replace")
            pytest.fail(f"moto.server exited with {self.proc.returncode}: {err[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()

    def bucket(self) -> str:
        """A new empty bucket's URL with a prefix (``s3://<bucket>/store``)."""
        import boto3  # comes with moto

        name = f"pst-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=name)
        return f"s3://{name}/store"

    @property
    def options_json(self) -> str:
        return json.dumps(self.options)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The session's S3-compatible server process."""
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as exc:
        skip_or_fail(f"the S3 tests need moto[server] and s3fs (pip install -e '.[test]'): {exc}")
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """A fresh bucket (and prefix) of one test."""
    return s3_server.bucket()
