"""One pipelined websocket to a shard store: requests, refusals as exceptions, closing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spacenb.aio.shardlink import ShardLink, ShardLinks
from spacenb.clock import SystemClock
from spacenb.exceptions import (
    ConnectionLostError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
)
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair
from spacenb.protocol.tickets import issue_ticket
from spacenb.server.shards import ShardStore

RELAY = IdentityKeys.from_seed(b"shard link tests: relay")
SPACE = SpaceKeyPair.from_seed(b"shard link tests: space").space_id
TICKET = issue_ticket(
    RELAY, space_id=SPACE, username="alice", expires_at_us=SystemClock().now_us() + 600_000_000
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ShardStore]:
    store = ShardStore(tmp_path, RELAY.signing_key)
    await store.start()
    yield store
    await store.stop()


@pytest.fixture
async def link(store: ShardStore) -> AsyncIterator[ShardLink]:
    assert store.url is not None
    link = await ShardLink.open(store.url)
    yield link
    await link.close()


async def test_put_get_has(link: ShardLink) -> None:
    shares = [f"share {i}".encode() for i in range(20)]
    names = tuple(hashlib.sha256(s).hexdigest() for s in shares)
    puts = [
        link.put(space_id=SPACE, ticket=TICKET, name=n, data=s)
        for n, s in zip(names, shares, strict=True)
    ]
    await asyncio.gather(*puts)  # pipelined on one socket
    assert await asyncio.gather(*(link.get(n) for n in names)) == shares
    assert await link.has((names[0], "00" * 32)) == (True, False)


async def test_refusals_are_raised(link: ShardLink) -> None:
    with pytest.raises(NotFoundError):
        await link.get("00" * 32)
    with pytest.raises(IntegrityError):
        await link.put(space_id=SPACE, ticket=TICKET, name="00" * 32, data=b"x")
    with pytest.raises(PermissionDeniedError):
        await link.put(space_id=SPACE, ticket="bad.ticket", name="00" * 32, data=b"x")


async def test_a_closed_store_fails_requests(store: ShardStore, link: ShardLink) -> None:
    await store.stop()
    with pytest.raises(ConnectionLostError):
        await link.get("00" * 32)


async def test_unreachable_store() -> None:
    with pytest.raises(ConnectionLostError, match="cannot connect"):
        await ShardLink.open("ws://127.0.0.1:9", timeout=5)


async def test_links_are_shared_and_failures_remembered(store: ShardStore) -> None:
    assert store.url is not None
    async with ShardLinks(timeout=5) as links:
        first, second = await asyncio.gather(links.link(store.url), links.link(store.url))
        assert first is second
        for _ in range(2):
            with pytest.raises(ConnectionLostError):
                await links.link("ws://127.0.0.1:9")
