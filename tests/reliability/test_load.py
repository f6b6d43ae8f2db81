"""Load: thirty clients joining and sending at once, for two rounds against one relay (a
subprocess, so its memory can be read from /proc).

Within a round, clients join three channels one after another while the others keep
sending. No send fails, nothing is rejected, and every receiver is delivered, in order and
once, every stored message of its channel from the first one it saw to the end (messages
stored before or while it joined are its history, not its live feed). The relay's
resident memory after the second round stays within a bound of the first.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import spacenb.aio as aio

from .conftest import Figures
from .helpers import Inbox, all_history, live_feed_checked, sign_in
from .relayproc import RelayProcess

CLIENTS = 30
CHANNELS = 3
ROUND_SECONDS = 5.0
JOIN_SPREAD = 2.0  # seconds over which a round's clients arrive
SEND_EVERY = 0.15  # seconds between one client's messages (on average)
RSS_GROWTH_LIMIT = 8 << 20  # bytes the relay may grow between the end of round 1 and 2


@dataclass
class Member:
    client: aio.AsyncClient
    space: aio.AsyncSpace
    delivered: Inbox = field(default_factory=Inbox)
    rejected: Inbox = field(default_factory=Inbox)
    sent: int = 0


async def run_round(relay: RelayProcess, number: int, channels: list[str]) -> dict[str, int]:
    """One round: clients join over ``JOIN_SPREAD`` s and send until ``ROUND_SECONDS``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ROUND_SECONDS
    rng = random.Random(number)
    members: list[Member] = []

    async def take_part(i: int) -> None:
        await asyncio.sleep(i * JOIN_SPREAD / CLIENTS)
        client = await sign_in(relay.url, relay.app_key, f"round{number}-user{i}")
        space = await client.space.join_channel(channels[i % CHANNELS])
        member = Member(client, space)
        space.on_message(member.delivered)
        space.on_rejected(member.rejected)
        members.append(member)
        while loop.time() < deadline:
            await space.send_message({"from": i, "n": member.sent})
            member.sent += 1
            await asyncio.sleep(rng.uniform(0, 2 * SEND_EVERY))

    try:
        await asyncio.gather(*(take_part(i) for i in range(CLIENTS)))
        checked = 0
        for name in channels:
            group = [m for m in members if m.space.name == name]
            stored = [e.handle for e in await all_history(group[0].space)]
            for member in group:
                checked += await live_feed_checked(member.delivered, stored)
                assert not member.rejected.items
        return {
            "clients": len(members),
            "messages": sum(m.sent for m in members),
            "deliveries_checked": checked,
        }
    finally:
        for member in members:
            await member.client.close()


async def test_thirty_clients_lose_nothing_and_relay_memory_is_stable(
    tmp_path: Path, figures: Figures
) -> None:
    relay = RelayProcess(tmp_path / "relay")
    await relay.start()
    try:
        host = await sign_in(relay.url, relay.app_key, "host")
        channels = [f"hall{c}" for c in range(CHANNELS)]
        for name in channels:
            space = await host.space.create_channel(name)
            await space.disconnect()
        rss = []
        for number in range(2):
            result = await run_round(relay, number, channels)
            assert result["clients"] == CLIENTS
            await asyncio.sleep(0.5)  # let the relay finish closing the round's connections
            rss.append(relay.rss_bytes())
            for key, value in result.items():
                figures.add(f"load.{key}", value)
        await host.close()
        figures.set("load.relay_rss_mib_after_rounds", [round(r / 2**20, 1) for r in rss])
        assert rss[1] - rss[0] < RSS_GROWTH_LIMIT, f"relay memory grew {rss[0]} -> {rss[1]}"
    finally:
        relay.stop()


pytestmark = pytest.mark.timeout(180)


async def test_joining_during_a_burst_leaves_no_gap(
    start_relay: Any, connect: Any, mitm: Any, figures: Figures
) -> None:
    """A receiver joins while a sender keeps messages in flight, and its look-ups of the
    sender's public key are slow (the MITM holds those answers back): from the first
    message it is delivered, it still gets every later one, once and in order."""
    server = await start_relay()
    proxy = await mitm(server.url)

    def hold_back_user_keys(frame: dict[str, Any]) -> dict[str, Any] | None:
        if frame.get("t") == "res" and "users" in frame.get("result", {}):
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, lambda: asyncio.ensure_future(proxy.inject(frame)))
            return None
        return frame

    proxy.rewrite = hold_back_user_keys
    sender = await connect(server, "sender")
    channel = await sender.space.create_channel("busy")
    stop = asyncio.Event()

    async def flood() -> None:
        n = 0
        while not stop.is_set():
            await asyncio.gather(*(channel.send_message(n + i) for i in range(4)))
            n += 4

    flooding = asyncio.create_task(flood())
    await asyncio.sleep(0.05)
    receiver = await connect(server, "receiver", url=proxy.url)
    space = await receiver.space.join_channel("busy")
    inbox = Inbox()
    space.on_message(inbox)
    await asyncio.sleep(0.5)
    stop.set()
    await flooding
    stored = [e.handle for e in await all_history(channel)]
    figures.add("load.join_race_deliveries_checked", await live_feed_checked(inbox, stored))
