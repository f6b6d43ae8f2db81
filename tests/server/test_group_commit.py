"""A relay on PostgreSQL commits off its event loop (``spacenb.server.pgcommit``): while
one batch waits for the database, the relay keeps reading and the next batch fills, and
nobody is answered before their batch is committed. Quotas are charged in the batch's
transaction, so two relays never grant a user more than the quota between them.

The slow database is a real one: a transaction of the test holds the space's counter
row, so the relay's commit waits for it as it would for a busy disk or another relay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from spacenb.protocol import frames
from spacenb.server.limits import Limits
from spacenb.server.postgres import PostgresStorage
from tests.server.rawclient import RawClient, user
from tests.server.relays import relays

DEADLINE = 60.0  # "it must eventually happen", never a speed bound


async def eventually(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not condition():
        assert loop.time() < end, f"never happened: {what}"
        await asyncio.sleep(0.01)


async def send_all(client: RawClient, envelopes: list[Any]) -> list[int]:
    """Send every envelope without waiting (all in flight at once); their request ids."""
    ids = []
    for envelope in envelopes:
        rid = next(client._ids)
        await client.send_text(frames.Send(id=rid, envelope=envelope).to_json())
        ids.append(rid)
    return ids


async def test_a_batch_fills_while_a_commit_waits_for_the_database(tmp_path, postgres_url):
    async with relays(tmp_path, postgres_url, 1) as (relay,):
        alice = await user(relay, "alice")
        info, ring = await alice.create_space(name="slow")
        core = relay.relay.core
        committer = relay.relay.cluster.committer  # type: ignore[union-attr]
        commits, committed = committer.commits, committer.committed
        with psycopg.connect(postgres_url, autocommit=True) as blocker:
            blocker.execute("BEGIN")
            blocker.execute("SELECT 1 FROM spaces WHERE space_id = %s FOR UPDATE", (info.space_id,))
            envelopes = [alice.seal(ring, f"message {i}") for i in range(10)]
            first = await send_all(alice, envelopes[:1])
            await eventually(lambda: core.committing, "the first commit started")
            rest = await send_all(alice, envelopes[1:])
            # this test runs on the relay's own event loop: that it gets here at all, and
            # that the relay read and staged the nine, shows the loop was not blocked
            await eventually(lambda: committer.staged == 9, "the next batch filled")
            assert core.committing and committer.commits == commits
            with pytest.raises(TimeoutError):  # nobody is answered before the commit
                await asyncio.wait_for(alice.ws.recv(), 0.3)
            blocker.execute("COMMIT")
        answers = [await alice.next_frame(DEADLINE) for _ in envelopes]
        assert [a.id for a in answers] == first + rest
        assert all(isinstance(a, frames.Response) for a in answers), answers
        handles = [int(a.result["handle"]) for a in answers]  # type: ignore[union-attr]
        assert handles == sorted(set(handles))
        # two transactions: the one that waited, and the nine that filled meanwhile
        assert (committer.commits - commits, committer.committed - committed) == (2, 10)
        page = await alice.call(
            frames.HistoryRequest, space_id=info.space_id, before=None, limit=20
        )
        assert [m.handle for m in page.items] == handles


async def test_two_relays_never_grant_more_than_the_quota(tmp_path, postgres_url):
    quota = 5
    async with relays(tmp_path, postgres_url, 2, limits=Limits(max_messages_per_user=quota)) as (
        a,
        b,
    ):
        on_a = await user(a, "alice")
        info, ring = await on_a.create_space(name="quota")
        on_b = await user(b, "alice", identity=on_a.identity)
        await on_b.sync(info.space_id)
        batches = [
            [c.seal(ring, f"{n} {i}") for i in range(4)] for n, c in (("a", on_a), ("b", on_b))
        ]
        sent = await asyncio.gather(
            send_all(on_a, batches[0]), send_all(on_b, batches[1])
        )  # fmt: skip
        answers = [
            [await c.next_frame(DEADLINE) for _ in ids]
            for c, ids in zip((on_a, on_b), sent, strict=True)
        ]
        flat = [x for side in answers for x in side]
        granted = [x for x in flat if isinstance(x, frames.Response)]
        refused = [x.code for x in flat if isinstance(x, frames.ErrorFrame)]
        assert len(granted) == quota and refused == ["quota_exceeded"] * (8 - quota), flat
    stored = PostgresStorage(postgres_url)
    try:
        assert stored.message_usage("alice")[0] == quota
        page, _ = stored.history(info.space_id, None, 20)
        handles = {int(g.result["handle"]) for g in granted}  # type: ignore[union-attr]
        assert {m.handle for m in page} == handles
    finally:
        stored.close()


async def test_one_envelope_sent_through_two_relays_at_once_is_stored_once(tmp_path, postgres_url):
    """A resend may reach another relay while the first attempt's batch still commits:
    both batches wait on the space's counter row, and the second finds the signature the
    first stored (PROTOCOL.md, "Requests": ``send`` is idempotent by signature)."""
    async with relays(tmp_path, postgres_url, 2) as (a, b):
        on_a = await user(a, "alice")
        info, ring = await on_a.create_space(name="twice")
        on_b = await user(b, "alice", identity=on_a.identity)
        await on_b.sync(info.space_id)
        sealed = on_a.seal(ring, "one message")
        cores = [srv.relay.core for srv in (a, b)]
        with psycopg.connect(postgres_url, autocommit=True) as blocker:
            blocker.execute("BEGIN")
            blocker.execute("SELECT 1 FROM spaces WHERE space_id = %s FOR UPDATE", (info.space_id,))
            await asyncio.gather(send_all(on_a, [sealed] * 3), send_all(on_b, [sealed] * 3))
            await eventually(lambda: all(c.committing for c in cores), "both relays commit")
            blocker.execute("COMMIT")
        answers = [await c.next_frame(DEADLINE) for c in (on_a, on_b) for _ in range(3)]
        assert all(isinstance(x, frames.Response) for x in answers), answers
        handles = {int(x.result["handle"]) for x in answers}  # type: ignore[union-attr]
        assert len(handles) == 1
    stored = PostgresStorage(postgres_url)
    try:
        page, _ = stored.history(info.space_id, None, 20)
        assert [m.handle for m in page] == list(handles)
        assert stored.message_usage("alice")[0] == 1
    finally:
        stored.close()
