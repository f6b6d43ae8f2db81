"""Several relays on one PostgreSQL database, seen from clients: users, channels, keys and
messages stored through one relay are served by another; an invite link's last use raced
through two relays is redeemed exactly once; messages sent at once through two relay
processes get handles that strictly increase, each stored once.

Two relays in this process share one event loop, so they never run a transaction at the
same moment (test_postgres.py drives overlapping transactions from threads); the handle
test runs the second relay as its own ``spacenb serve`` process, as a deployment would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from spacenb.clock import FixedClock
from spacenb.exceptions import InviteError
from spacenb.protocol import frames
from spacenb.protocol.keys import decode_public_key
from spacenb.protocol.statelog import link_keys_from_token
from spacenb.protocol.tickets import verify_ticket
from spacenb.server.app import start_server
from spacenb.server.postgres import PostgresStorage
from tests.reliability.relayproc import RelayProcess
from tests.server.rawclient import RawClient, member, user
from tests.server.relays import relays


async def test_two_relays_serve_one_set_of_users_spaces_keys_and_messages(tmp_path, postgres_url):
    async with relays(tmp_path, postgres_url, 2, shards=1, shards_needed=1) as (a, b):
        alice = await user(a, "alice")
        info, ring = await alice.create_space(name="general")
        sent = [await alice.send(ring, f"through A {i}") for i in range(3)]
        bob = await user(b, "bob")
        assert (await bob.call(frames.Resolve, name="general")).space_id == info.space_id
        channels = (await bob.call(frames.ListChannels)).channels
        assert [c.name for c in channels] == ["general"]
        # relay B's keeper holds the key relay A's owner wrapped to the (one) keeper
        await bob.close()
        bob, bobs_ring = await member(b, alice, info.space_id, "bob", identity=bob.identity)
        assert bobs_ring.key(0) == ring.key(0)
        page = await bob.call(frames.HistoryRequest, space_id=info.space_id, before=None, limit=10)
        assert [m.handle for m in page.items] == sent
        later = await bob.send(bobs_ring, "through B")
        page = await alice.call(
            frames.HistoryRequest, space_id=info.space_id, before=None, limit=10
        )
        assert [m.handle for m in page.items] == [*sent, later] and later > sent[-1]
        # a shard ticket from B verifies with the relay key A holds: one service identity
        ticket = await bob.call(frames.ShardTicket, space_id=info.space_id)
        verify_ticket(
            ticket.ticket,
            decode_public_key(a.relay.core.relay_keys.signing_key, "sig"),
            space_id=info.space_id,
            now_us=ticket.expires_at_us - 1,
        )


async def test_a_one_use_link_raced_through_two_relays_is_redeemed_once(tmp_path, postgres_url):
    async with relays(tmp_path, postgres_url, 2) as (a, b):
        alice = await user(a, "alice")
        info, ring = await alice.create_space(name="club", private=True)
        sid = info.space_id
        token = await alice.create_link(sid, max_uses=1)
        guests = [await user(srv, f"guest{i}") for i, srv in enumerate((a, b, a, b))]
        for guest in guests:
            guest.links[sid] = link_keys_from_token(token)
            await guest.sync(sid)  # every one signs its add on the same head, seq 2
        adds = [g.add_event(g.logs[sid], token=token) for g in guests]
        answers = await asyncio.gather(
            *(g.request(frames.Join, space_id=sid, event=e) for g, e in zip(guests, adds,
                                                                            strict=True))
        )  # fmt: skip
        won = [g for g, r in zip(guests, answers, strict=True) if isinstance(r, frames.Response)]
        codes = [r.code for r in answers if isinstance(r, frames.ErrorFrame)]
        assert len(won) == 1 and codes == ["stale_state"] * 3
        # each loser's relay caught up when its append was refused: signing again on the
        # head it now serves finds the link used up, through either relay
        for guest in guests:
            if guest not in won:
                with pytest.raises(InviteError, match="used 1 of 1"):
                    await guest.join(sid, token)
        (winner,) = won
        keys = (await winner.event("keys")).keys
        assert (await winner.keyring(sid, keys)).key(0) == ring.key(0)
    stored = PostgresStorage(postgres_url)
    adds = [e for e in stored.state_events(sid) if e.kind == "add"]
    assert [e.actor for e in adds] == [winner.username] and adds[0].seq == 2
    stored.close()


async def test_handles_strictly_increase_across_relay_processes(tmp_path, postgres_url):
    a = await start_server(tmp_path / "a", shards=0, database=postgres_url, clock=FixedClock())
    try:
        b = RelayProcess(tmp_path / "b", database=postgres_url, service_key=a.service_key)
        await b.start()
        try:
            alice = await user(a, "alice")
            info, ring = await alice.create_space(name="burst")
            bob, bobs_ring = await member(b, alice, info.space_id, "bob")  # type: ignore[arg-type]
            await alice.sync(info.space_id)  # bound to the head where bob is a member
            count = 150

            async def burst(client: RawClient, keys: Any) -> list[int]:
                for i in range(count):
                    frame = frames.Send(id=10_000 + i, envelope=client.seal(keys, i))
                    await client.send_text(frame.to_json())
                answers = [await client.next_frame() for _ in range(count)]
                assert all(isinstance(x, frames.Response) for x in answers), answers[:3]
                return [x.result["handle"] for x in answers]  # type: ignore[union-attr]

            through_a, through_b = await asyncio.gather(burst(alice, ring), burst(bob, bobs_ring))
            for handles in (through_a, through_b):
                assert handles == sorted(handles) and len(set(handles)) == count
            everything = sorted(through_a + through_b)
            assert len(set(everything)) == 2 * count
            for reader in (alice, bob):
                page = await reader.call(
                    frames.HistoryRequest, space_id=info.space_id, before=None, limit=1000
                )
                assert [m.handle for m in page.items] == everything
                await reader.close()
        finally:
            assert b.stop() == 0, b.error_output()
    finally:
        await a.stop()
