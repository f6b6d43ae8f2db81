"""Attackers for the hostile-load tests (aimed at a relay in a subprocess,
``relayproc.RelayProcess``), and a sampler of that relay's memory.

Each attacker is a coroutine that runs until a deadline and returns what it did. They
speak the wire protocol directly (``tests.server.rawclient``) or through the async client;
sockets that are not a real user's come from other loopback addresses (127.0.x.y), so the
relay's per-address caps see them as other hosts would be seen.

``python -m tests.reliability.hostile URL APP_KEY SPACE_ID SECONDS OUT.json`` runs the
soak test's attackers together in their own process (so that they do not share the
honest clients' CPU) and writes their figures to ``OUT.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from spacenb.exceptions import SpacenbError, StaleStateError
from spacenb.protocol import frames
from spacenb.protocol.keys import IdentityKeys
from tests.server.rawclient import RawClient

from .relayproc import RelayProcess

_SOCKET_ERRORS = (ConnectionClosed, InvalidHandshake, OSError, TimeoutError, EOFError)


class RssSampler:
    """Samples a relay's resident memory every ``every`` seconds while it runs."""

    def __init__(self, relay: RelayProcess, every: float = 0.25) -> None:
        self.relay = relay
        self.every = every
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            self.samples.append(self.relay.rss_bytes())
            await asyncio.sleep(self.every)

    @property
    def peak(self) -> int:
        return max(self.samples)


def mib(value: float) -> float:
    return round(value / 2**20, 1)


# --------------------------------------------------------------------------- attackers


async def idle_socket(url: str, address: str) -> ClientConnection:
    """A websocket that reads its hello and never signs in."""
    ws = await connect(url, local_addr=(address, 0), compression=None, open_timeout=30,
                       ping_interval=None)  # fmt: skip
    await asyncio.wait_for(ws.recv(), 30)
    return ws


async def idle_sockets(
    url: str, count: int, until: float, *, addresses: int = 40, delay: float = 5.0
) -> dict[str, int]:
    """Hold ``count`` websockets that never sign in, from ``addresses`` addresses; each one
    the relay closes is opened again 0 to 2 × ``delay`` seconds later (so they do not all
    come back at once)."""
    stats = {"opened": 0, "closed_by_relay": 0, "refused": 0}

    async def hold(i: int) -> None:
        address = f"127.0.2.{1 + i % addresses}"
        while time.monotonic() < until:
            try:
                ws = await idle_socket(url, address)
            except _SOCKET_ERRORS:
                stats["refused"] += 1
            else:
                stats["opened"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ws.wait_closed(), max(until - time.monotonic(), 0))
                if ws.state.name == "CLOSED":
                    stats["closed_by_relay"] += 1
                ws.transport.abort()
            await asyncio.sleep(random.uniform(0, 2 * delay))

    await asyncio.gather(*(hold(i) for i in range(count)))
    return stats


async def non_reader(
    url: str,
    app_key: str,
    username: str,
    space_id: str,
    *,
    requests: int = 10,
    address: str = "127.0.0.1",
    identity: IdentityKeys | None = None,
) -> RawClient:
    """A member (it joins) that subscribes, stops reading from its socket, and asks for
    ``requests`` pages of history, of 1000 messages each."""
    client = await RawClient.open(url, local_addr=(address, 0))
    await client.auth(app_key, username, identity)
    for _attempt in range(50):  # others join at the same moment: sign the add again
        try:
            await client.join(space_id)
            break
        except StaleStateError:
            await asyncio.sleep(random.uniform(0, 0.1))
    await client.call(frames.Subscribe, space_id=space_id)
    client.ws.transport.pause_reading()
    for i in range(requests):
        request = frames.HistoryRequest(id=10_000 + i, space_id=space_id, before=None, limit=1000)
        await client.send_text(request.to_json())
    return client


async def non_readers(
    url: str,
    app_key: str,
    space_id: str,
    count: int,
    until: float,
    *,
    requests: int = 2,
    again: bool = True,
) -> dict[str, int]:
    """``count`` members that never read, each subscribed and asking for ``requests``
    pages of history; one the relay closes (dropped, or its pings unanswered) comes back."""
    stats = {"connections": 0, "closed_by_relay": 0}

    async def one(i: int) -> None:
        identity = IdentityKeys.generate()
        while time.monotonic() < until:
            try:
                client = await non_reader(
                    url, app_key, f"nonreader{i}", space_id, requests=requests,
                    address=f"127.0.4.{1 + i}", identity=identity,
                )  # fmt: skip
            except (*_SOCKET_ERRORS, SpacenbError) as exc:
                why = f"failed: {type(exc).__name__}"
                stats[why] = stats.get(why, 0) + 1
                await asyncio.sleep(0.5)
                continue
            stats["connections"] += 1
            while time.monotonic() < until and client.ws.transport.get_write_buffer_size() < 1:
                # Still open? (A write fails once the relay has closed the connection; the
                # socket is never read, so only a write can tell.)
                await asyncio.sleep(1.0)
                with contextlib.suppress(*_SOCKET_ERRORS):
                    await client.send_text('{"t":"req","id":1,"op":"ping"}')
                if client.ws.transport.is_closing():
                    break
            if client.ws.transport.is_closing() and time.monotonic() < until:
                stats["closed_by_relay"] += 1
            client.ws.transport.abort()
            if not again:
                return

    await asyncio.gather(*(one(i) for i in range(count)))
    return stats


async def oversized_requests(url: str, app_key: str, count: int, until: float) -> dict[str, int]:
    """``count`` requests over the frame limit, spread until ``until``: nine in ten of
    1.5 MiB on one signed-in connection (answered ``too_large``, the connection kept), one
    in ten of 3 MiB, each on a connection of its own (which the relay closes, 1009)."""
    stats = {"sent": 0, "too_large": 0, "closed": 0}
    pad = "x" * (3 << 19)
    gap = max(until - time.monotonic(), 1.0) / count * 0.8  # done before ``until``
    identity = IdentityKeys.generate()
    client: RawClient | None = None
    closers: list[asyncio.Task[None]] = []

    async def too_big() -> None:
        with contextlib.suppress(*_SOCKET_ERRORS, SpacenbError):
            ws = await RawClient.open(url, local_addr=("127.0.5.2", 0))
            await ws.auth(app_key, "oversized", identity)
            with contextlib.suppress(TimeoutError):  # the relay stops reading at 2 MiB
                big = '{"t":"req","id":1,"op":"ping","p":"' + pad * 2 + '"}'
                await asyncio.wait_for(ws.send_text(big), 5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.ws.wait_closed(), 5)
            stats["closed"] += ws.ws.close_code == 1009
            ws.ws.transport.abort()

    next_at = time.monotonic()
    for i in range(count):  # all of them, even if the last ones come after ``until``
        stats["sent"] += 1
        if i % 10 == 9:
            closers.append(asyncio.create_task(too_big()))
        else:
            try:
                if client is None:
                    client = await RawClient.open(url, local_addr=("127.0.5.1", 0))
                    await client.auth(app_key, "oversized", identity)
                await client.send_text('{"t":"req","id":1,"op":"ping","p":"' + pad + '"}')
                answer = await client.next_frame(timeout=10)
                stats["too_large"] += getattr(answer, "code", "") == "too_large"
            except (*_SOCKET_ERRORS, SpacenbError):
                client = None
        next_at += gap
        await asyncio.sleep(max(next_at - time.monotonic(), 0))
    await asyncio.gather(*closers)
    if client is not None:
        await client.close()
    return stats


async def flooder(
    url: str, app_key: str, space_id: str, rate: float, until: float
) -> dict[str, int]:
    """A member sending small messages twice as fast as its rate limit lets it, four at
    a time (so that once its burst is spent it sends at the limit); refused sends are
    counted, not retried."""
    stats = {"accepted": 0, "rate_limited": 0, "connects": 0}
    identity = IdentityKeys.generate()
    while time.monotonic() < until:
        try:
            client = await RawClient.open(url, local_addr=("127.0.3.1", 0))
            await client.auth(app_key, "flooder", identity)
        except (*_SOCKET_ERRORS, SpacenbError):
            await asyncio.sleep(0.2)  # made room for newer sockets: try again
            continue
        stats["connects"] += 1
        try:
            joined = await client.join(space_id)
            keys = joined.keys or (await client.event("keys", timeout=30)).keys
            ring = await client.keyring(space_id, keys)
            gap, next_at, ids = 4 / (rate * 2), time.monotonic(), iter(range(10**9))
            while time.monotonic() < until:
                batch = [frames.Send(id=next(ids) + 1, envelope=client.seal(ring, {"flood": n}))
                         for n in range(4)]  # fmt: skip
                for request in batch:
                    await client.send_text(request.to_json())
                for _request in batch:
                    answer = await client.next_frame(timeout=30)
                    code = getattr(answer, "code", None)
                    stats["accepted" if code is None else "rate_limited"] += 1
                next_at += gap
                await asyncio.sleep(max(next_at - time.monotonic(), 0))
        except (*_SOCKET_ERRORS, SpacenbError):
            pass
        finally:
            await client.close()
    return stats


async def soak_attackers(
    url: str, app_key: str, space_id: str, seconds: float, rate: float
) -> dict[str, Any]:
    """Every soak attacker at once, for ``seconds``."""
    until = time.monotonic() + seconds
    results = await asyncio.gather(
        flooder(url, app_key, space_id, rate, until),
        non_readers(url, app_key, space_id, 20, until),
        idle_sockets(url, 1000, until),
        oversized_requests(url, app_key, 1000, until),
    )
    return dict(zip(("flooder", "non_readers", "idle_sockets", "oversized"), results, strict=True))


if __name__ == "__main__":
    url, app_key, space_id, seconds, rate, out = sys.argv[1:7]
    # On one machine the attackers stand for other hosts: they must not take the relay's
    # or the honest members' CPU (they would measure the machine, not the relay).
    os.nice(10)
    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
    figures = asyncio.run(soak_attackers(url, app_key, space_id, float(seconds), float(rate)))
    Path(out).write_text(json.dumps(figures, indent=2))
