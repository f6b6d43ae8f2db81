"""Durability: the relay is SIGKILLed (twice) in the middle of a burst and restarted on
the same data directory and port.

Several senders keep many messages in flight each. Every message whose ``send_message``
returned a handle must be in history exactly once, at that handle; the clients reconnect
by themselves; a receiver that was live throughout catches up with no gap and no
duplicate (the handles it was delivered equal the history's, in order).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.exceptions import ConnectionLostError, SpacenbTimeoutError
from tests.faults import drop_connection

from .conftest import Connect, Figures, StartRelay
from .helpers import Inbox, all_history, sign_in, wait_until
from .relayproc import RelayProcess

SENDERS = 4
PER_SENDER = 800
IN_FLIGHT = 32  # per sender
KILL_AFTER = (900, 2000)  # acknowledged messages before each SIGKILL


class Burst:
    """The senders' state: what was acknowledged, and how many attempts failed."""

    def __init__(self) -> None:
        self.acked: dict[int, dict[str, int]] = {}  # handle → body
        self.failed = 0

    async def send_all(self, index: int, space: aio.AsyncSpace) -> None:
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def one(body: dict[str, int]) -> None:
            try:
                while True:
                    try:
                        handle = await space.send_message(body)
                    except (ConnectionLostError, SpacenbTimeoutError):
                        self.failed += 1  # the client gave up resending (not seen so far)
                        await asyncio.sleep(0.05)
                        continue
                    assert handle not in self.acked
                    self.acked[handle] = body
                    return
            finally:
                slots.release()

        async with asyncio.TaskGroup() as tasks:
            for n in range(PER_SENDER):
                await slots.acquire()
                tasks.create_task(one({"s": index, "n": n}))


async def connect(relay: RelayProcess, name: str) -> aio.AsyncClient:
    client = await sign_in(relay.url, relay.app_key, name)
    client.connection.max_backoff = 0.5  # reconnect soon after the restart
    return client


async def test_acknowledged_messages_survive_sigkill(tmp_path: Path, figures: Figures) -> None:
    relay = RelayProcess(tmp_path / "relay")
    await relay.start()
    clients: list[aio.AsyncClient] = []
    try:
        owner = await connect(relay, "owner")
        clients.append(owner)
        channel = await owner.space.create_channel("ledger")
        await channel.disconnect()  # the owner only reads history at the end
        receiver = await connect(relay, "receiver")
        clients.append(receiver)
        live = await receiver.space.join_channel("ledger")
        delivered = Inbox()
        live.on_message(delivered)
        senders = []
        for i in range(SENDERS):
            client = await connect(relay, f"sender{i}")
            clients.append(client)
            space = await client.space.join_channel("ledger")
            await space.disconnect()  # senders send; only the receiver listens
            senders.append(space)
        burst = Burst()

        async def killer() -> None:
            for kills, threshold in enumerate(KILL_AFTER, 1):
                await wait_until(lambda t=threshold: len(burst.acked) >= t, 120)
                relay.kill()
                await asyncio.sleep(0.2)
                await relay.start()
                # every client, busy or idle, reconnects by itself before the next kill
                await wait_until(lambda k=kills: all(c.connection.reconnects >= k
                                                     for c in clients), 60)  # fmt: skip

        await asyncio.gather(killer(), *(burst.send_all(i, s) for i, s in enumerate(senders)))

        history = await all_history(live)
        handles = [m.handle for m in history]
        assert handles == sorted(set(handles)), "history is in strictly increasing handle order"
        stored: dict[int, Any] = {m.handle: m.message.body for m in history}
        assert {h: stored.get(h) for h in burst.acked} == burst.acked, "an acked message is lost"
        assert len({m.message.id for m in history}) == len(history), "a message stored twice"
        bodies = [(b["s"], b["n"]) for b in burst.acked.values()]
        assert sorted(bodies) == [(s, n) for s in range(SENDERS) for n in range(PER_SENDER)]
        # A send whose answer died with the relay is sent again by the client as a resend,
        # answered with its handle if it was stored (PROTOCOL.md, "Requests"): nothing
        # is in history unacknowledged.
        unacked = len(history) - len(burst.acked)
        assert unacked == 0

        await wait_until(lambda: len(delivered.items) >= len(history), 60)
        assert [e.handle for e in delivered.items] == handles, "the live receiver has a gap"

        figures.add("durability.sigkills", len(KILL_AFTER))
        figures.add("durability.messages_acked", len(burst.acked))
        figures.add("durability.attempts_lost_with_the_relay", burst.failed)
        figures.add("durability.stored_but_unacked", unacked)
        figures.add("durability.deliveries_checked", len(delivered.items))
    finally:
        for client in clients:
            await client.close()
        relay.stop()


async def test_a_drop_during_catch_up_loses_nothing(
    start_relay: StartRelay, connect: Connect, mitm: Any, figures: Figures
) -> None:
    """bob's connection drops; while he is away five messages are stored; he reconnects,
    and the connection drops again while he catches up, after a new message was pushed to
    him. Once back, he has every message, once, in order."""
    server = await start_relay()
    proxy = await mitm(server.url)
    alice = await connect(server, "alice")
    bob = await connect(server, "bob", url=proxy.url)
    general = await alice.space.create_channel("general")
    bobs = await bob.space.join_channel("general")
    inbox = Inbox()
    bobs.on_message(inbox)
    await general.send_message(0)
    await inbox.wait(1)
    held: list[dict[str, Any]] = []
    phase = ["hold bob's sign-in"]
    failing: list[asyncio.Future[None]] = []

    async def fail_the_catch_up() -> None:
        handle = await general.send_message(6)  # pushed to bob behind his catch-up
        await wait_until(lambda: any(f.get("handle") == handle for f in proxy.seen))
        await asyncio.sleep(0.2)  # the push is on bob's socket
        await proxy.drop_clients()

    def rewrite(frame: dict[str, Any]) -> dict[str, Any] | None:
        if phase[0] == "hold bob's sign-in" and frame.get("ev") == "hello":
            held.append(frame)
            return None
        if phase[0] == "fail the catch-up" and "items" in frame.get("result", {}):
            phase[0] = "let it be"
            failing.append(asyncio.ensure_future(fail_the_catch_up()))
            return None  # the history page is lost with the connection
        return frame

    proxy.rewrite = rewrite
    await drop_connection(bob.connection)
    await wait_until(lambda: bool(held))
    for n in range(1, 6):
        await general.send_message(n)  # stored while bob is away
    phase[0] = "fail the catch-up"
    await proxy.inject(held[0])
    await wait_until(lambda: len(inbox.items) >= 7, 30)
    assert [e.message.body for e in inbox.items] == list(range(7))
    assert bob.connection.reconnects == 2
    await failing[0]
    figures.add("durability.drops_during_catch_up", 1)


async def test_a_catch_up_refused_for_good_is_not_retried(
    start_relay: StartRelay, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """bob is removed while his connection is down: when it comes back, his catch-up is
    refused (he is no longer a member). That is final: it is not tried again and again."""
    server = await start_relay()
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    general = await alice.space.create_channel("general")
    await bob.space.join_channel("general")
    caplog.set_level(logging.INFO, logger="spacenb")
    await drop_connection(bob.connection)
    await alice.space.remove_member(general.id, "bob")
    await wait_until(lambda: bob.connection.reconnects == 1 and bob.connection.is_open)
    await asyncio.sleep(2.5)  # a retry would come after 1 s
    failures = [r for r in caplog.records if "catching up" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
