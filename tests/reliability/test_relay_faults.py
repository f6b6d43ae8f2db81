"""Faults of a service of several relays on one PostgreSQL, performed for real on loopback
with relay processes (``spacenb serve --database``):

- SIGKILL the relay that runs the keeper: another relay takes the keeper's advisory lock
  and joins into a channel keep working, and the killed relay's users drop out of
  presence once its heartbeat expires.
- Restart PostgreSQL (``pg_ctl restart``) while members send through two relays: the
  relays reconnect, every send is acknowledged (a send cut off by the restart is sent
  again, the same envelope, and stored once), history holds exactly the acknowledged
  messages, in handle order, and each reaches the other relay's member live, once, in
  handle order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import spacenb.aio as aio
from spacenb.exceptions import SpacenbError
from tests.aio.conftest import Inbox, wait_until
from tests.pgserver import _run, find_bin_dir
from tests.reliability.helpers import all_history
from tests.reliability.relayproc import RelayProcess

pytestmark = pytest.mark.timeout(300)


@contextlib.asynccontextmanager
async def relay_processes(
    tmp_path: Path, database: str, count: int
) -> AsyncIterator[list[RelayProcess]]:
    """``count`` relay processes on one database; the first starts alone (and so holds
    the keeper lock), the others get its service key."""
    first = RelayProcess(tmp_path / "relay0", database=database)
    procs = [first]
    try:
        await first.start()
        key = (first.data_dir / "service.key").read_text().strip()
        for i in range(1, count):
            proc = RelayProcess(tmp_path / f"relay{i}", database=database, service_key=key)
            procs.append(proc)
            await proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def sign_in(relay: RelayProcess, username: str) -> aio.AsyncClient:
    return await aio.connect(
        relay.url, app_key=relay.app_key, username=username, keystore=":memory:"
    )


async def test_sigkill_the_keepers_relay_and_joins_still_work(tmp_path, postgres_url):
    async with relay_processes(tmp_path, postgres_url, 2) as (first, second):
        owner = await sign_in(second, "owner")
        lounger = await sign_in(first, "lounger")
        late: aio.AsyncClient | None = None
        try:
            lobby = await owner.space.create_channel("lobby")
            await lounger.space.join_channel("lobby")  # admitted by the keeper, relay 0
            await wait_until(lambda: "lounger" in lobby.peers(), 30)
            first.kill()  # the keeper's relay: no clean-up at all
            late = await sign_in(second, "late")
            joined = await late.space.join_channel("lobby", timeout=60)  # the new keeper
            assert joined.keyring is not None
            handle = await lobby.send_message("welcome")
            assert [m.handle for m in await all_history(joined)] == [handle]
            # the killed relay's user leaves presence when its heartbeat expires (10 s)
            await wait_until(lambda: "lounger" not in lobby.peers(), 60)
            assert set(lobby.peers()) == {"owner", "late"}
        finally:
            for client in (owner, lounger, late):
                if client is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.close(), 10)


async def _send_until(
    space: aio.AsyncSpace, stop: asyncio.Event, acked: list[int]
) -> list[BaseException]:
    """Send numbered messages until ``stop``; the errors ``send_message`` raised (it sends
    a message whose outcome is unknown again by itself, so there should be none)."""
    errors: list[BaseException] = []
    n = 0
    while not stop.is_set():
        try:
            acked.append(await asyncio.wait_for(space.send_message({"n": n}), 120))
            n += 1
        except (SpacenbError, TimeoutError) as exc:
            errors.append(exc)
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.01)
    return errors


async def test_restart_postgres_mid_run_and_nothing_acknowledged_is_lost(
    tmp_path, postgres_url, postgres_server
):
    if postgres_server.cluster is None:
        pytest.skip("the tests use an outside PostgreSQL server: it is not theirs to restart")
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    async with relay_processes(tmp_path, postgres_url, 2) as (one, two):
        alice = await sign_in(one, "alice")
        bob = await sign_in(two, "bob")
        try:
            alices = await alice.space.create_channel("steady")
            bobs = await bob.space.join_channel("steady")
            to_bob = Inbox()
            bobs.on_message(to_bob)
            stop = asyncio.Event()
            acked_a: list[int] = []
            acked_b: list[int] = []
            senders = [
                asyncio.create_task(_send_until(alices, stop, acked_a)),
                asyncio.create_task(_send_until(bobs, stop, acked_b)),
            ]
            await wait_until(lambda: len(acked_a) >= 20 and len(acked_b) >= 20, 60)
            before = len(acked_a) + len(acked_b)
            await asyncio.to_thread(
                _run, os.geteuid() == 0, bin_dir / "pg_ctl", "-D", postgres_server.cluster,
                "-l", postgres_server.cluster.parent / "log", "-m", "fast", "-w", "-t", "60",
                "restart",
            )  # fmt: skip
            await wait_until(lambda: len(acked_a) + len(acked_b) >= before + 40, 90)
            stop.set()
            errors = [e for side in await asyncio.gather(*senders) for e in side]
            # A commit cut off by the restart has no sure outcome: the client sends the
            # same envelope again until the relay answers, and the relay answers a stored
            # one with its handle (PROTOCOL.md, "Requests"). So no send is refused, and
            # history holds exactly the acknowledged messages, none twice.
            assert errors == []
            everything = sorted(acked_a + acked_b)
            assert len(set(everything)) == len(everything)
            history = await all_history(alices)
            stored = [m.handle for m in history]
            assert stored == sorted(set(stored))  # in handle order, none twice
            assert stored == everything  # each acknowledged message, and nothing else
            for author, acked in (("alice", acked_a), ("bob", acked_b)):  # each body once
                bodies = [m.message.body["n"] for m in history if m.sender == author]
                assert bodies == list(range(len(acked)))
            assert [m.handle for m in await all_history(bobs)] == stored
            # Every stored message reaches bob live, once, in handle order, and live
            # delivery across relays goes on: so does a message alice sends now. (Bob read
            # history just above; a push arriving after that read is still delivered.)
            fresh = await alices.send_message("after the restart")
            await wait_until(lambda: fresh in {e.handle for e in to_bob.items}, 60)
            delivered = [e.handle for e in to_bob.items]
            assert delivered == [*stored, fresh]
            resent = sum(c.connection.reconnects for c in (alice, bob))
            print(f"restart: {len(everything)} acknowledged, none refused ({resent} reconnects)")
        finally:
            for client in (alice, bob):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 10)
