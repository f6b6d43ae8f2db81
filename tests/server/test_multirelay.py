"""Several relays on one PostgreSQL database deliver as one service, seen from real
clients (``spacenb.aio``) on loopback: what is stored through one relay reaches the
subscribers of the other live (messages, edits, deletes, state events, join requests);
a listener that lost its connection catches up with no gap and no duplicate; a later
handle never commits before an earlier one; a push that comes after the member read its
message in history is still delivered, once; signals and
presence cross relays; rate limits and quotas hold for the whole service; exactly one
relay runs the keeper, and another takes over when it stops.

The relays run in this process (one event loop); tests/reliability/test_relay_faults.py
kills relay processes and restarts PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import spacenb.aio as aio
from spacenb.exceptions import PermissionDeniedError, QuotaExceededError, RateLimitedError
from spacenb.server import RunningServer, pgcommit
from spacenb.server.limits import Limits
from tests.aio.conftest import Inbox, wait_until
from tests.server.relays import notifications_held, relays

DEADLINE = 60.0  # "it must eventually happen", never a speed bound


@contextlib.asynccontextmanager
async def clients(
    *where: tuple[RunningServer, str], keystores: Path | None = None
) -> AsyncIterator[list[aio.AsyncClient]]:
    """One signed-in client per ``(relay, username)``, closed afterwards; with
    ``keystores``, a user's clients share the user's keys (one user on two relays)."""
    opened: list[aio.AsyncClient] = []
    try:
        for srv, name in where:
            keystore = ":memory:" if keystores is None else str(keystores / name)
            opened.append(
                await aio.connect(srv.url, app_key=srv.app_key, username=name, keystore=keystore)
            )
        yield opened
    finally:
        for client in opened:
            await client.close()


async def test_messages_edits_and_deletes_reach_the_other_relay_once(tmp_path, postgres_url):
    async with (
        relays(tmp_path, postgres_url) as (a, b),
        clients((a, "alice"), (b, "bob")) as (
            alice,
            bob,
        ),
    ):
        general = await alice.space.create_channel("general")
        bobs = await bob.space.join_channel("general")  # admitted by the keeper (relay A)
        to_bob, to_alice, edited, deleted = Inbox(), Inbox(), Inbox(), Inbox()
        bobs.on_message(to_bob)
        general.on_message(to_alice)
        bobs.on_message_edited(edited)
        bobs.on_message_deleted(deleted)
        sent = [await general.send_message({"n": i}) for i in range(30)]
        back = [await bobs.send_message({"m": i}) for i in range(10)]
        await to_bob.wait(40, timeout=30)
        await to_alice.wait(40, timeout=30)
        for inbox in (to_bob, to_alice):
            assert sorted(e.handle for e in inbox.items) == sorted(sent + back)  # each once
        assert [e.message.body["n"] for e in to_bob.items if e.sender == "alice"] == list(range(30))
        await general.edit_message(sent[0], {"n": "edited"})
        await edited.wait(1, timeout=30)
        assert edited.items[0].handle == sent[0] and edited.items[0].message.body == {"n": "edited"}
        await general.delete_message(sent[1])
        await deleted.wait(1, timeout=30)
        assert deleted.items[0].handle == sent[1]
        page = await bobs.history(limit=100)
        assert [m.handle for m in page.messages] == sorted(h for h in sent + back if h != sent[1])
        assert len(to_bob.items) == 40  # nothing delivered twice, late


async def test_a_member_removed_through_one_relay_is_refused_by_the_other(tmp_path, postgres_url):
    async with (
        relays(tmp_path, postgres_url) as (a, b),
        clients((a, "alice"), (b, "carol"), (b, "dave")) as (alice, carol, dave),
    ):
        club = await alice.space.create_channel("club")
        carols = await carol.space.join_channel("club")
        daves = await dave.space.join_channel("club")
        seen = Inbox()
        daves.on_message(seen)
        await carols.send_message("before")
        await seen.wait(1, timeout=30)  # dave has it (another socket: it may come later)
        await alice.space.remove_member(club.id, "carol")
        state = b.relay.state(club.id)
        await wait_until(lambda: state is not None and "carol" not in state.members, 30)
        with pytest.raises(PermissionDeniedError):
            await carols.send_message("after")
        assert "carol" not in b.relay.online(club.id)  # dropped from the space on relay B
        await club.send_message("still here")
        await seen.wait(2, timeout=30)
        assert [e.sender for e in seen.items] == ["carol", "alice"]


async def test_join_requests_reach_the_keeper_and_the_owner_across_relays(tmp_path, postgres_url):
    async with relays(tmp_path, postgres_url) as (a, b):
        assert a.relay.cluster is not None and b.relay.cluster is not None
        await wait_until(lambda: a.relay.cluster.keeper_active, 30)  # type: ignore[union-attr]
        assert not b.relay.cluster.keeper_active
        async with clients((b, "owner"), (b, "newcomer"), (a, "asker")) as (owner, new, asker):
            await owner.space.create_channel("open")
            joined = await new.space.join_channel("open")  # the keeper runs on relay A
            assert joined.keyring is not None
            gated = await owner.space.create_channel("gated", auto_admit=False)
            requests = Inbox()
            gated.on_join_request(requests)

            async def admit(request: Any) -> None:
                await gated.admit(request.member_id, request.identity_ecdh_pub)

            gated.on_join_request(admit)
            joined = await asker.space.join_channel("gated", timeout=30)
            assert [r.member_id for r in requests.items] == ["asker"]
            assert joined.keyring is not None


async def test_a_listener_that_lost_its_connection_catches_up_once(tmp_path, postgres_url):
    async with (
        relays(tmp_path, postgres_url) as (a, b),
        clients((a, "alice"), (b, "bob")) as (
            alice,
            bob,
        ),
    ):
        general = await alice.space.create_channel("general")
        bobs = await bob.space.join_channel("general")
        received = Inbox()
        bobs.on_message(received)
        first = [await general.send_message(i) for i in range(5)]
        await received.wait(5, timeout=30)
        cluster = b.relay.cluster
        assert cluster is not None
        cluster.retry = 4.0  # the listener stays away for a second or so after the kill
        with psycopg.connect(postgres_url, autocommit=True) as db:
            killed = db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'spacenb-listener' AND datname = current_database()"
            ).fetchall()
        assert len(killed) == 2  # both relays' listeners
        await wait_until(lambda: not cluster.listening.is_set(), 30)
        during = [await general.send_message(i) for i in range(5, 25)]
        await wait_until(cluster.listening.is_set, 30)
        after = [await general.send_message(i) for i in range(25, 30)]
        await received.wait(30, timeout=30)
        assert [e.handle for e in received.items] == first + during + after
        assert [e.message.body for e in received.items] == list(range(30))
        assert cluster.reconnects >= 1


async def test_a_message_read_in_history_before_its_push_still_reaches_the_handlers(
    tmp_path, postgres_url
):
    """The PostgreSQL restart's lost push (RELIABILITY.md): relay B learns of a message
    late (its notification missed), the member reads it in history first, then the push
    comes. Reading history records the message in the replay guard; the push must still
    be delivered, once, and not taken for a duplicate."""
    async with (
        relays(tmp_path, postgres_url) as (a, b),
        clients((a, "alice"), (b, "bob")) as (
            alice,
            bob,
        ),
    ):
        general = await alice.space.create_channel("general")
        bobs = await bob.space.join_channel("general")
        received = Inbox()
        bobs.on_message(received)
        first = await general.send_message("before")
        await received.wait(1, timeout=30)
        cluster = b.relay.cluster
        assert cluster is not None
        with notifications_held(cluster) as held:
            late = await general.send_message("late")
            await wait_until(lambda: any(f" m {general.id} " in note for note in held), 30)
            page = await bobs.history(limit=10)
            assert [m.handle for m in page.messages] == [first, late]  # read before pushed
            assert [e.handle for e in received.items] == [first]
        for note in held:
            cluster._on_notification(note)
        after = await general.send_message("after")
        await received.wait(3, timeout=30)
        assert [e.handle for e in received.items] == [first, late, after]
        assert [e.message.body for e in received.items] == ["before", "late", "after"]


async def test_an_edit_read_in_history_before_its_push_reaches_the_handlers_once(
    tmp_path, postgres_url
):
    """As for a new message: relay B learns of an edit late, the member reads the new
    revision in history first, then the push comes (twice: the notification is heard
    again). ``on_message_edited`` fires exactly once, with the new body."""
    async with (
        relays(tmp_path, postgres_url) as (a, b),
        clients((a, "alice"), (b, "bob")) as (
            alice,
            bob,
        ),
    ):
        general = await alice.space.create_channel("general")
        bobs = await bob.space.join_channel("general")
        received, edited = Inbox(), Inbox()
        bobs.on_message(received)
        bobs.on_message_edited(edited)
        handle = await general.send_message("first draft")
        await received.wait(1, timeout=30)
        cluster = b.relay.cluster
        assert cluster is not None
        with notifications_held(cluster) as held:
            await general.edit_message(handle, "second draft")
            await wait_until(lambda: any(f" e {general.id} {handle}" in n for n in held), 30)
            page = await bobs.history(limit=10)
            assert [m.message.body for m in page.messages] == ["second draft"]  # read first
            assert edited.items == []
        for note in held + held:  # heard twice: pushed twice
            cluster._on_notification(note)
        await edited.wait(1, timeout=30)
        after = await general.send_message("after")  # pushed behind the edits
        await received.wait(2, timeout=30)
        assert [e.handle for e in received.items] == [handle, after]
        assert [(e.handle, e.message.body) for e in edited.items] == [(handle, "second draft")]


async def test_a_later_handle_never_commits_before_an_earlier_one(
    tmp_path, postgres_url, monkeypatch
):
    """The read-back's cursor relies on it: within a space, commits happen in handle order.
    Relay A's batch is held after it took its handle (it holds the space's counter row);
    a message sent through relay B meanwhile waits for that row, so it gets the later
    handle and commits second, and B's subscribers get both, live, in handle order."""
    holding, release = threading.Event(), threading.Event()
    columns = pgcommit._columns

    def held_columns(stored: Any) -> Any:
        if any(envelope.source == "alice" for envelope, _ in stored) and not release.is_set():
            holding.set()
            release.wait(DEADLINE)  # (on relay A's commit thread; the loops run on)
        return columns(stored)

    async with (
        relays(tmp_path, postgres_url) as (a, b),
        clients((a, "alice"), (b, "bob")) as (
            alice,
            bob,
        ),
    ):
        general = await alice.space.create_channel("general")
        bobs = await bob.space.join_channel("general")
        to_bob, to_alice = Inbox(), Inbox()
        bobs.on_message(to_bob)
        general.on_message(to_alice)
        monkeypatch.setattr(pgcommit, "_columns", held_columns)
        first = asyncio.create_task(general.send_message("first"))
        assert await asyncio.to_thread(holding.wait, DEADLINE)
        second = asyncio.create_task(bobs.send_message("second"))
        with psycopg.connect(postgres_url, autocommit=True) as db:

            def waiting() -> bool:
                (count,) = db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                ).fetchone()  # type: ignore[misc]
                return bool(count)

            await wait_until(waiting, DEADLINE)  # relay B's batch waits for the counter row
        assert not second.done()
        release.set()
        handles = [await first, await second]
        assert handles[0] < handles[1]
        for inbox in (to_bob, to_alice):
            await inbox.wait(2, timeout=DEADLINE)
            assert [e.handle for e in inbox.items] == handles
        page = await bobs.history(limit=10)
        assert [m.handle for m in page.messages] == handles


async def test_signals_and_presence_cross_relays(tmp_path, postgres_url):
    async with (
        relays(tmp_path, postgres_url) as (a, b),
        clients((a, "alice"), (b, "bob")) as (alice, bob),
    ):
        general = await alice.space.create_channel("general")
        bobs = await bob.space.join_channel("general")
        await wait_until(lambda: "alice" in bobs.peers() and "bob" in general.peers(), 30)
        assert set(b.relay.online(general.id)) == {"alice", "bob"}
        typing = Inbox()
        bobs.on_ephemeral(typing)
        await general.send_ephemeral("typing", {"who": "alice"})
        await typing.wait(1, timeout=30)
        assert typing.items[0].sender == "alice" and typing.items[0].data == {"who": "alice"}
        page = await bobs.history(limit=10)
        assert not page.messages  # never stored
        await alice.close()
        await wait_until(lambda: "alice" not in bobs.peers(), 30)
        assert b.relay.online(general.id) == ("bob",)


async def test_the_rate_limit_is_one_bucket_for_the_whole_service(tmp_path, postgres_url):
    limits = Limits(message_rate=0.01, message_burst=10)  # 10 now, then one per 100 s
    async with (
        relays(tmp_path, postgres_url, limits=limits) as (a, b),
        clients((a, "alice"), (b, "alice"), keystores=tmp_path) as (on_a, on_b),
    ):
        space = await on_a.space.create_channel("fast")
        other = await on_b.space.join_channel("fast")
        accepted = refused = 0
        for i in range(12):
            try:
                await (space if i % 2 else other).send_message(i)
                accepted += 1
            except RateLimitedError:
                refused += 1
        assert (accepted, refused) == (10, 2)


async def test_the_message_quota_is_counted_once_for_the_whole_service(tmp_path, postgres_url):
    limits = Limits.unlimited().replace(max_messages_per_user=8)
    async with (
        relays(tmp_path, postgres_url, limits=limits) as (a, b),
        clients((a, "alice"), (b, "alice"), keystores=tmp_path) as (on_a, on_b),
    ):
        space = await on_a.space.create_channel("quota")
        other = await on_b.space.join_channel("quota")
        handles = [await space.send_message(i) for i in range(5)]
        handles += [await other.send_message(i) for i in range(3)]
        with pytest.raises(QuotaExceededError, match="8 messages"):
            await other.send_message("one too many")
        with pytest.raises(QuotaExceededError):
            await space.send_message("one too many")
        await other.delete_message(handles[0])  # gives one back, service-wide
        await space.send_message("fits again")


async def test_exactly_one_relay_runs_the_keeper_and_another_takes_over(tmp_path, postgres_url):
    async with relays(tmp_path, postgres_url, count=3) as servers:
        a, b, c = servers

        def active() -> list[RunningServer]:
            return [s for s in servers if s.relay.cluster and s.relay.cluster.keeper_active]

        await wait_until(lambda: len(active()) == 1, 30)
        assert active() == [a]
        async with clients((b, "owner")) as (owner,):
            await owner.space.create_channel("lobby")
        await a.stop()
        servers.remove(a)
        await wait_until(lambda: len(active()) == 1, 30)
        async with clients((c, "late")) as (late,):
            joined = await late.space.join_channel("lobby", timeout=30)
            assert joined.keyring is not None
        assert len(active()) == 1
