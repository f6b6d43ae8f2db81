"""Shared test configuration. Fixtures used by one test package live beside it; the
PostgreSQL server (``tests/pgserver.py``) is shared by every package that needs one."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.pgserver import ENV_REQUIRED, PostgresServer, unavailable_reason

# Shared machines have noisy timings: no per-example deadline. In CI the examples are
# derived from the test names, so a run is reproducible from the commit alone.
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, database=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this session: skips without one, fails instead when
    ``SPACENB_REQUIRE_POSTGRES`` is set (as in CI)."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get(ENV_REQUIRED):
            pytest.fail(f"{reason}; {ENV_REQUIRED} is set, so these tests must run")
        pytest.skip(reason)
    server = PostgresServer.from_environment()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)
