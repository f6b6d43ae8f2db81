"""Server tests start the real server on loopback (``rawclient.running``) and talk to it
over real websockets with the frame-level client in ``rawclient.py``, which signs protocol
v2 state events and envelopes itself and keeps a verified copy of each space's log. Async
tests run under pytest-asyncio's auto mode (pyproject.toml).

Storage and relay tests run on both backends: a module with
``pytestmark = pytest.mark.usefixtures("backend")`` runs each test once on SQLite and once
on a fresh PostgreSQL database (``tests/pgserver.py``); ``running`` picks it up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server import rawclient
from tests.server.backends import BACKENDS, Backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: Any) -> Iterator[Backend]:
    """The storage backend of this run of the test; relays from ``running`` use it."""
    database = cluster = None
    if request.param == "postgresql":
        database = request.getfixturevalue("postgres_url")
        cluster = request.getfixturevalue("postgres_server").cluster
    monkeypatch.setattr(rawclient, "DATABASE", database)
    chosen = Backend(request.param, tmp_path, database, cluster)
    yield chosen
    chosen.close()
