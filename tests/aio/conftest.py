from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.server.app import start_server
from spacenb.server.handlers import Route


@pytest.fixture
async def server(tmp_path) -> AsyncIterator[Any]:
    srv = await start_server(data_dir=tmp_path / "relay", shards=3, shards_needed=2)
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def connect(server) -> AsyncIterator[Callable[..., Awaitable[aio.AsyncClient]]]:
    clients: list[aio.AsyncClient] = []

    async def make(username: str, **kwargs: Any) -> aio.AsyncClient:
        kwargs.setdefault("keystore", ":memory:")
        url = kwargs.pop("url", server.url)
        client = await aio.connect(url, app_key=server.app_key, username=username, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class Inbox:
    """Collects events from handlers."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.items.append(event)

    async def wait(self, count: int = 1, timeout: float = 10.0) -> list[Any]:
        await wait_until(lambda: len(self.items) >= count, timeout)
        return self.items


@contextlib.asynccontextmanager
async def relay_on(
    tmp_path: Path, table: Mapping[str, Route], **options: Any
) -> AsyncIterator[Callable[[str], Awaitable[aio.AsyncClient]]]:
    """A relay whose request table is ``table`` (a handler replaced to misbehave or to
    watch), and ``connect(username)`` for it; both closed on exit."""
    server = await start_server(tmp_path / "relay", shards=0, table=table, **options)
    clients: list[aio.AsyncClient] = []

    async def connect(username: str) -> aio.AsyncClient:
        client = await aio.connect(
            server.url, app_key=server.app_key, username=username, keystore=":memory:"
        )
        clients.append(client)
        return client

    try:
        yield connect
    finally:
        for client in clients:
            await client.close()
        await server.stop()
