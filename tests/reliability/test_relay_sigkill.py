"""One relay of three SIGKILLed in the middle of a burst: nothing acknowledged is lost or
doubled, and every member, those of the dead relay included, ends up with all of it.

Three relays serve one PostgreSQL database as one service: one in this process (it makes
the service key), two as ``spacenb serve --database`` processes. Six members, two on each
relay, each knowing all three URLs (its own first); three of them send 5,000 messages in
all, a few in flight each. Once about a third are acknowledged, one relay process is
SIGKILLed: its members' connections drop, they fail over to another relay and catch up
by handle; its sender's unacknowledged sends fail and it goes on through the new relay.

What must hold, for every acknowledged message: it is in history exactly once, history
is in strictly increasing handle order, and every member received it live or by catch-up,
exactly once. A message whose acknowledgement was lost with the relay may or may not be
stored, but never twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

from spacenb import aio
from spacenb.exceptions import ConnectionLostError
from spacenb.server.app import start_server

from .relayproc import RelayProcess

TOTAL = 5_000
SENDERS = 3
IN_FLIGHT = 4
LIMITS = ("message_rate=100000", "message_burst=100000", "max_connections_per_address=10000")


async def eventually(check: Any, timeout: float, what: str) -> None:
    """Wait (a deadline, not a speed bound) until ``check()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.2)


async def test_sigkill_one_relay_of_three_mid_burst(tmp_path: Path, postgres_url: str) -> None:
    from spacenb.server.limits import Limits

    limits = Limits().replace(message_rate=100_000.0, message_burst=100_000,
                              max_connections_per_address=10_000)  # fmt: skip
    first = await start_server(tmp_path / "relay0", shards=0, database=postgres_url,
                               limits=limits)  # fmt: skip
    assert first.service_key is not None
    procs = [
        RelayProcess(tmp_path / f"relay{i}", database=postgres_url,
                     service_key=first.service_key, limits=LIMITS)
        for i in (1, 2)
    ]  # fmt: skip
    clients: list[aio.AsyncClient] = []
    try:
        for proc in procs:
            await proc.start(timeout=120.0)
        urls = [first.url, *[p.url for p in procs]]
        app_key = first.app_key
        owner = await aio.connect(urls, app_key=app_key, username="owner", keystore=":memory:")
        clients.append(owner)
        await owner.space.create_channel("burst")
        received: dict[str, Counter[str]] = {}
        spaces = []
        for i in range(6):
            home = i % 3  # two members on each relay, their own relay first
            order = urls[home:] + urls[:home]
            client = await aio.connect(order, app_key=app_key, username=f"m{i}",
                                       keystore=":memory:")  # fmt: skip
            clients.append(client)
            space = await client.space.join_channel("burst", timeout=60.0)
            got: Counter[str] = Counter()
            received[f"m{i}"] = got
            space.on_message(lambda event, got=got: got.update([event.message.body["id"]]))
            spaces.append(space)
        senders = spaces[:SENDERS]  # m0 on relay 0, m1 on relay 1 (the victim), m2 on relay 2
        acked: list[str] = []
        failed: list[str] = []
        victim = procs[0]
        killed = asyncio.Event()

        async def lane(sender: int, lane_no: int, count: int) -> None:
            for n in range(count):
                body_id = f"s{sender}l{lane_no}n{n}"
                while True:
                    try:
                        await senders[sender].send_message({"id": body_id})
                    except ConnectionLostError:
                        failed.append(body_id)
                        body_id += "r"  # a new message: the lost one may be stored
                        await asyncio.sleep(0.1)
                        continue
                    acked.append(body_id)
                    break

        async def killer() -> None:
            await eventually(lambda: len(acked) >= TOTAL // 3, 300, "burst did not start")
            victim.kill()
            killed.set()

        per_lane = TOTAL // (SENDERS * IN_FLIGHT)
        lanes = [lane(s, n, per_lane + (1 if s * IN_FLIGHT + n < TOTAL % (SENDERS * IN_FLIGHT)
                                         else 0))
                 for s in range(SENDERS) for n in range(IN_FLIGHT)]  # fmt: skip
        await asyncio.gather(killer(), *lanes)
        assert killed.is_set() and len(acked) == TOTAL

        expected = set(acked)
        for name, got in received.items():
            await eventually(lambda got=got: expected <= set(got), 300,
                             f"{name} is missing messages")  # fmt: skip
        await asyncio.sleep(1.0)  # anything late and doubled would arrive by now
        for name, got in received.items():
            assert max(got.values()) == 1, f"{name} got a message twice"
        # history, read through a relay that stayed up: every acknowledged message once,
        # in strictly increasing handle order
        reader = spaces[0]
        handles: list[int] = []
        ids: list[str] = []
        before = None
        while True:
            page = await reader.history(before=before, limit=500)
            handles = [m.handle for m in page.messages] + handles
            ids = [m.message.body["id"] for m in page.messages] + ids
            if page.next_cursor is None:
                break
            before = page.next_cursor
        assert handles == sorted(set(handles))
        counts = Counter(ids)
        assert max(counts.values()) == 1
        assert expected <= set(counts)
        assert set(counts) - expected <= set(failed)  # the rest were sent, unacknowledged
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        for proc in procs:
            proc.stop()
        await first.stop()
