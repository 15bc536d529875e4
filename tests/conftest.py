"""Shared fixtures: the real Redis and PostgreSQL servers on loopback (never mocks).

``make test`` starts them when installed (scripts/services.sh). Under ``CI=true`` an unreachable server fails
the test that needs it; elsewhere that test is skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

# The conformance suites live in the package (every backend's tests subclass them): their asserts explain failures
# as this directory's do only when rewritten, which must be asked for before they are imported.
pytest.register_assert_rewrite("pitstore.testing")

from servers import drop_schema  # noqa: E402

from pitstore.history import PostgresHistory  # noqa: E402

REDIS_URL = os.environ.get("PITSTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("PITSTORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


# A test that needs a server says so by its fixtures; it is marked for it (``pytest -m "not postgres"``).
_SERVER_MARKS = {"redis_url": "redis", "postgres_url": "postgres"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in _SERVER_MARKS:
                item.add_marker(_SERVER_MARKS[fixture])


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable: {exc}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: a missing server is a failure)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real local Redis server."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # any connection problem means: no server
        _unavailable("Redis", exc)
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the real local PostgreSQL server (database ``test``)."""
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    return POSTGRES_URL


@pytest.fixture
def history(postgres_url: str, namespace: str) -> Iterator[PostgresHistory]:
    """A PostgreSQL history tier in a schema of its own, dropped afterwards."""
    h = PostgresHistory(postgres_url, schema=namespace)
    h.migrate()
    yield h
    h.close()
    drop_schema(postgres_url, namespace)


@pytest.fixture
def namespace() -> Iterator[str]:
    """A unique name for keys, schemas or tables of one test, so parallel runs never share state."""
    yield f"pst_{uuid.uuid4().hex[:12]}"
