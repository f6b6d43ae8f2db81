"""Fixtures of the reliability suite.

Every test starts its own relay on 127.0.0.1 (a free port, a data directory under
``tmp_path``) and stops it at the end; clients and MITM proxies made through these
fixtures are closed too. ``figures`` collects what the suite tried (cases, faults,
messages checked); with ``SPACENB_RELIABILITY_FIGURES=path`` set they are written there as
JSON at the end of the session, for RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.server.app import RunningServer, start_server
from spacenb.sync.runner import Runner

from .evil import EvilRelay
from .helpers import Mitm, no_errors_logged, sign_in

StartRelay = Callable[..., Awaitable[RunningServer]]
Connect = Callable[..., Awaitable[aio.AsyncClient]]
DirClient = Callable[..., Awaitable[aio.AsyncClient]]


class Figures:
    """Named counters and values the tests report (cases tried, faults survived...)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.values: dict[str, Any] = {}

    def add(self, name: str, count: int = 1) -> None:
        self.counts[name] += count

    def set(self, name: str, value: Any) -> None:
        self.values[name] = value


@pytest.fixture(autouse=True)
def no_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test here also checks that nothing logged an error while it ran."""
    yield
    no_errors_logged(caplog.get_records("call"))


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    found = Figures()
    yield found
    path = os.environ.get("SPACENB_RELIABILITY_FIGURES")
    if path:
        report = {"counts": dict(sorted(found.counts.items())), "values": found.values}
        Path(path).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def loop_thread() -> Iterator[Runner]:
    """A private event loop in a daemon thread, for hypothesis tests: the test itself is
    synchronous (so hypothesis drives it) and runs each example's coroutine there."""
    runner = Runner("spacenb-reliability")
    yield runner
    runner.close(timeout=10.0)


@pytest.fixture
async def start_relay(tmp_path: Path) -> AsyncIterator[StartRelay]:
    """``await start_relay(**options)``: an in-process relay (no shard stores unless
    ``shards`` is given), data in ``tmp_path/relayN``."""
    servers: list[RunningServer] = []

    async def start(**options: Any) -> RunningServer:
        options.setdefault("shards", 0)
        options.setdefault("data_dir", tmp_path / f"relay{len(servers)}")
        server = await start_server(**options)
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def relay(start_relay: StartRelay) -> RunningServer:
    """One in-process relay without shard stores."""
    return await start_relay()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``await connect(server, username, url=None)``: a signed-in async client with an
    in-memory keystore (``url`` routes it through a proxy)."""
    clients: list[aio.AsyncClient] = []

    async def make(server: RunningServer, username: str, url: str = "") -> aio.AsyncClient:
        client = await sign_in(url or server.url, server.app_key, username)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def mitm() -> AsyncIterator[Callable[[str], Awaitable[Mitm]]]:
    """``await mitm(upstream_url)``: a malicious-relay proxy in front of ``upstream``."""
    proxies: list[Mitm] = []

    async def make(upstream: str) -> Mitm:
        proxy = Mitm(upstream)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.stop()


# --------------------------------------------------------------------------- a malicious relay


@pytest.fixture
async def server(start_relay: StartRelay) -> RunningServer:
    return await start_relay()


@pytest.fixture
async def evil(server: RunningServer) -> AsyncIterator[EvilRelay]:
    proxy = await EvilRelay(server.url).start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def dir_client(tmp_path: Path) -> AsyncIterator[DirClient]:
    """``await dir_client(server, username, url, **options)``: a client whose keystore
    is a directory (under ``tmp_path``), so it remembers pins, marks and log heads across
    a restart (``options`` go to ``aio.connect``); every client made here is closed at
    the end."""
    made: list[aio.AsyncClient] = []

    async def make(
        server: RunningServer, username: str, url: str = "", **options: Any
    ) -> aio.AsyncClient:
        client = await aio.connect(
            url or server.url,
            app_key=server.app_key,
            username=username,
            keystore=tmp_path / "keystores",
            **options,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()
