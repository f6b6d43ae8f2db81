"""Clients that fail over: ``connect([url_a, url_b])`` signs in to one relay of a service
and, when that relay is stopped or SIGKILLed, moves to the other, signs in again,
resubscribes and catches up by handle: every message exactly once, in handle order,
including those sent while it was moving.

The relays share one PostgreSQL database (``tests/pgserver.py``). Live delivery from one
relay to members on another is not part of this tree yet, so the messages the moving
member must receive live are sent through the relay it is on at the time (carol on A
before the move, alice on B after it); alice's messages sent through B while the member
is still on A, or on its way, reach it through the catch-up from history. Nor does a relay
yet learn of state events appended through another (a join admitted through A leaves B's
cached state without the new member, which B then refuses as "not a member"), so every
join goes through B, the relay the member ends on, before it signs in to A.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.exceptions import ConnectionLostError, UsageError
from spacenb.server import RunningServer
from spacenb.server.app import start_server
from tests.reliability.relayproc import RelayProcess

from .conftest import Inbox, wait_until

BEFORE, DURING, AFTER = 4, 30, 5  # messages before the move, around it, after it


def dead_url() -> str:
    """A loopback URL nothing listens on (a port just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}"


@pytest.mark.parametrize(
    "bad", [[], (), ["http://relay:1"], ["ws://a:1", 3], ["ws://a:1", "ws://a:1"], 42]
)
async def test_a_url_list_is_checked(bad):
    with pytest.raises(UsageError, match="url"):
        await aio.connect(bad, app_key="k", username="alice", keystore=":memory:")


async def test_a_relay_that_cannot_be_reached_is_skipped_at_sign_in(server):
    urls = [dead_url(), server.url]
    client = await aio.connect(urls, app_key=server.app_key, username="alice", keystore=":memory:")
    try:
        assert client.url == server.url
        assert client.urls == tuple(urls)
    finally:
        await client.close()
    with pytest.raises(ConnectionLostError, match="none of the relays"):
        await aio.connect([dead_url(), dead_url()], app_key="k", username="bob",
                          keystore=":memory:")  # fmt: skip


@contextlib.asynccontextmanager
async def clients(app_key: str) -> AsyncIterator[Callable[..., Awaitable[aio.AsyncClient]]]:
    made: list[aio.AsyncClient] = []

    async def make(username: str, url: Any, keystore: Any = ":memory:") -> aio.AsyncClient:
        client = await aio.connect(url, app_key=app_key, username=username, keystore=keystore)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            await client.close()


async def move_under_burst(
    make: Callable[..., Awaitable[aio.AsyncClient]],
    url_a: str,
    url_b: str,
    lose_a: Callable[[], Awaitable[None]],
    keystore: Path,
) -> None:
    """bob on A (given both URLs), alice on B, carol on A; carol's messages reach bob live
    on A; A is lost while alice sends through B; bob ends on B with every message once."""
    alice = await make("alice", url_b)
    general = await alice.space.create_channel("general")
    for name in ("bob", "carol"):  # admitted through B (see the module's docstring)
        first = await make(name, url_b, keystore)
        await first.space.join_channel("general")
        await first.close()
    bob = await make("bob", [url_a, url_b], keystore)
    carol = await make("carol", url_a, keystore)
    assert bob.url == url_a
    bobs = await bob.space.join_channel("general")
    carols = await carol.space.join_channel("general")
    inbox = Inbox()
    bobs.on_message(inbox)
    expected = [f"carol {i}" for i in range(BEFORE)]
    for body in expected:
        await carols.send_message(body)
    await inbox.wait(BEFORE, 30)  # live, on A
    await carol.close()
    sent = 0

    async def burst() -> None:
        nonlocal sent
        for i in range(DURING):
            while True:
                try:
                    await general.send_message(f"alice {i}")
                    break
                except ConnectionLostError:  # alice's relay stays up; retry to be safe
                    await asyncio.sleep(0.05)
            sent += 1

    sending = asyncio.create_task(burst())
    await wait_until(lambda: sent >= DURING // 3, 30)
    await lose_a()
    await sending
    expected += [f"alice {i}" for i in range(DURING)]
    await wait_until(lambda: bob.connection.is_open and bob.url == url_b, 60)
    for i in range(AFTER):
        await general.send_message(f"after {i}")
    expected += [f"after {i}" for i in range(AFTER)]
    await inbox.wait(len(expected), 60)
    await asyncio.sleep(0.2)  # a duplicate, were there one, would have come by now
    assert [event.message.body for event in inbox.items] == expected
    handles = [event.handle for event in inbox.items]
    assert handles == sorted(set(handles))  # strictly increasing: in order, none twice
    assert bob.connection.reconnects >= 1
    page = await bobs.history(limit=100)
    assert [m.message.body for m in page.messages] == expected


async def two_relays(tmp_path: Path, database: str) -> tuple[RunningServer, RunningServer]:
    first = await start_server(tmp_path / "a", database=database, shards=0)
    try:
        second = await start_server(
            tmp_path / "b", database=database, service_key=first.service_key, shards=0
        )
    except BaseException:
        await first.stop()
        raise
    return first, second


async def test_a_member_moves_to_another_relay_when_its_relay_stops(tmp_path, postgres_url):
    relay_a, relay_b = await two_relays(tmp_path, postgres_url)
    try:
        async with clients(relay_a.app_key) as make:
            await move_under_burst(make, relay_a.url, relay_b.url, relay_a.stop, tmp_path / "ks")
    finally:
        await relay_a.stop()
        await relay_b.stop()


async def test_a_member_moves_when_its_relay_process_is_sigkilled(tmp_path, postgres_url):
    relay_b = await start_server(tmp_path / "b", database=postgres_url, shards=0)
    relay_a = RelayProcess(tmp_path / "a", database=postgres_url, service_key=relay_b.service_key)
    try:
        await relay_a.start()
        assert relay_a.app_key == relay_b.app_key

        async def sigkill() -> None:
            relay_a.kill()

        async with clients(relay_b.app_key) as make:
            await move_under_burst(make, relay_a.url, relay_b.url, sigkill, tmp_path / "ks")
    finally:
        relay_a.kill()
        await relay_b.stop()
