"""Who may hold a connection (spacenb/server/connections.py): a sign-in deadline, the
oldest not-signed-in connections closed to make room (in all and per address), caps on
signed-in connections per address and per user. Clients come from several loopback
addresses (127.0.0.x) so that per-address caps behave as they would across hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from spacenb.exceptions import ConnectionLimitError, LimitExceededError
from spacenb.protocol import frames
from spacenb.protocol.keys import IdentityKeys
from spacenb.server import Limits
from tests.server.rawclient import RawClient, running, user


async def waiting_socket(url: str, address: str = "127.0.0.1") -> ClientConnection:
    """A websocket that reads its hello and never signs in."""
    ws = await connect(url, local_addr=(address, 0), compression=None, open_timeout=30)
    await asyncio.wait_for(ws.recv(), 30)
    return ws


async def closed(ws: ClientConnection, timeout: float = 10.0) -> bool:
    """Whether the relay closes ``ws`` within ``timeout`` seconds."""
    try:
        await asyncio.wait_for(ws.wait_closed(), timeout)
    except TimeoutError:
        return False
    return True


async def signs_in_and_sends(url: str, app_key: str, username: str, **options: Any) -> int:
    """A real user signs in from ``127.0.0.1``, creates a channel and sends: its handle."""
    client = await RawClient.open(url)
    try:
        await client.auth(app_key, username)
        _info, ring = await client.create_space(name=f"{username}'s room", **options)
        return await client.send(ring, "made it")
    finally:
        await client.close()


async def test_a_connection_that_does_not_sign_in_in_time_is_closed(tmp_path):
    async with running(tmp_path, limits=Limits(sign_in_timeout=0.3)) as srv:
        idle = await waiting_socket(srv.url)
        port = int(srv.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        signed_in = await user(srv, "alice")
        assert await closed(idle)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # no handshake at all: closed
        writer.close()
        await asyncio.sleep(0.4)
        assert await signed_in.call(frames.Ping) == frames.Ok()  # past the deadline: kept
        assert srv.relay.guard.waiting == 0 and srv.relay.guard.closed_waiting == 2


async def test_the_oldest_waiting_connections_make_room(tmp_path):
    """Beyond the caps, a connection that has not signed in is closed: past an address's
    cap, its oldest; past the cap in all, the oldest of the address holding the most."""
    limits = Limits(max_unauthenticated_per_address=5, max_unauthenticated=8)
    async with running(tmp_path, limits=limits) as srv:
        crowd = [await waiting_socket(srv.url, "127.0.0.2") for _ in range(20)]
        assert all([await closed(ws) for ws in crowd[:15]])
        assert not any([await closed(ws, 0.2) for ws in crowd[15:]])
        others = [await waiting_socket(srv.url, f"127.0.0.{3 + i % 2}") for i in range(6)]
        # 11 waiting, 8 allowed: the 3 oldest go, all of them from 127.0.0.2
        assert all([await closed(ws) for ws in crowd[15:18]])
        assert not any([await closed(ws, 0.2) for ws in [*crowd[18:], *others]])
        # room for a newcomer is made by the address holding the most (127.0.0.3 and .4
        # hold three each, .2 two): its oldest, others[0]; the newcomer signs in
        assert await signs_in_and_sends(srv.url, srv.app_key, "alice") > 0
        assert await closed(others[0])
        assert not any([await closed(ws, 0.2) for ws in [*crowd[18:], *others[1:]]])
        assert srv.relay.guard.waiting == 7


async def test_signed_in_connections_are_capped_per_address_and_per_user(tmp_path):
    limits = Limits(max_connections_per_address=3, max_connections_per_user=2)
    async with running(tmp_path, limits=limits) as srv:
        alice = IdentityKeys.generate()
        first = [await user(srv, "alice", identity=alice) for _ in range(2)]
        extra = await RawClient.open(srv.url)
        with pytest.raises(ConnectionLimitError, match="max_connections_per_user") as info:
            await extra.auth(srv.app_key, "alice", alice)
        assert isinstance(info.value, LimitExceededError)
        assert (await extra.auth(srv.app_key, "bob")).created  # the same socket, another user
        with pytest.raises(ConnectionLimitError, match="max_connections_per_address"):
            await user(srv, "carol")
        await first[0].close()
        await asyncio.sleep(0.1)
        assert (await user(srv, "carol")).username == "carol"


async def test_two_thousand_sockets_that_never_sign_in_lock_nobody_out(tmp_path):
    """With the default limits, 2,000 websockets that never sign in (from one address and
    from ten) cost the relay at most the caps, and a real user still signs in and sends."""
    async with running(tmp_path) as srv:
        guard = srv.relay.guard
        crowd: list[ClientConnection] = []

        async def one(i: int) -> None:
            address = "127.0.0.2" if i < 1000 else f"127.0.1.{i % 10}"
            # (one closed before its hello arrived made room for a newer one)
            with contextlib.suppress(ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
                crowd.append(await waiting_socket(srv.url, address))

        for start in range(0, 2000, 100):
            await asyncio.gather(*(one(i) for i in range(start, start + 100)))
            assert guard.waiting <= srv.relay.limits.max_unauthenticated
        assert await signs_in_and_sends(srv.url, srv.app_key, "alice") > 0
        assert guard.closed_waiting >= 2000 - srv.relay.limits.max_unauthenticated
        for ws in crowd:
            ws.transport.abort()
