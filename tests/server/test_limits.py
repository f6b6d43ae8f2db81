"""Hostile load against the relay, frame by frame: every answer fits in one frame (pages cut
by bytes and by count, with cursors), every binary field has its size, oversized requests
are refused naming the limit and the connection stays, a slow reader is dropped by the
write that overfills it, and each user's rate and storage are capped (spacenb/server/
limits.py; PROTOCOL.md, "Limits").

Big spaces and directories (100,000 members, 100,000 channels) are written straight into
storage (``crowd.py``) and read back through the real relay on loopback.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from spacenb.exceptions import (
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
)
from spacenb.protocol import frames
from spacenb.protocol.encoding import b64e
from spacenb.protocol.envelope import MAX_SEALED_BYTES
from spacenb.protocol.statelog import key_commitment
from spacenb.server import Limits
from tests.server.crowd import add_channels, add_members, crowd_name
from tests.server.rawclient import RawClient, entry, member, running, user

# A body that seals to just under the largest message (the JSON around it takes ~100 bytes).
BIG = "x" * (MAX_SEALED_BYTES - 200)


async def raw_answer(client: RawClient, request: frames.Request) -> tuple[int, dict]:  # type: ignore[type-arg]
    """Send one request; the size of its answer frame as it travelled, and the frame."""
    await client.send_text(request.to_json())
    while True:
        text = await asyncio.wait_for(client.ws.recv(), 120)  # a deadline, not a speed bound
        obj = json.loads(text)
        if obj.get("t") != "evt":
            return len(text.encode()), obj


async def test_four_large_messages_make_no_page_too_large(tmp_path):
    """A viewer's four (here six) near-256 KiB messages used to make every history page
    over 1 MiB. Pages are cut by bytes: each answer is at most one frame, holds the newest
    messages that fit, and its cursor leads through all of them, in order."""
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ring = await alice.create_space(name="c")
        bob, ring = await member(srv, alice, info.space_id, "bob")
        sent = [await bob.send(ring, BIG) for _ in range(6)]
        small = await bob.send(ring, "small")
        seen, before, sizes = [], None, []
        while True:
            size, obj = await raw_answer(
                alice,
                frames.HistoryRequest(id=1, space_id=info.space_id, before=before, limit=1000),
            )
            sizes.append(size)
            page = frames.parse_result(frames.HistoryRequest, obj["result"])
            seen[:0] = [item.handle for item in page.items]
            if page.next_cursor is None:
                break
            before = page.next_cursor
        assert seen == [*sent, small]
        assert max(sizes) <= frames.MAX_FRAME_BYTES and len(sizes) == 3, sizes  # 2 big a page
        # a count limit still applies below the byte limit
        page = await alice.call(frames.HistoryRequest, space_id=info.space_id, before=None, limit=1)
        assert [i.handle for i in page.items] == [small] and page.next_cursor == small


async def test_a_hundred_thousand_members_in_state_log_pages(tmp_path):
    """A space of 100,000 members: its log is served in pages of at most 1000 events and
    one frame, and a reader walks them all by ``since``."""
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="crowd")
        add_members(srv, info.space_id, 100_000, signed=False)
        since, pages, biggest = 0, 0, 0
        while True:
            size, obj = await raw_answer(
                alice, frames.GetStateLog(id=1, space_id=info.space_id, since=since, limit=1000)
            )
            page = frames.parse_result(frames.GetStateLog, obj["result"])
            pages, biggest = pages + 1, max(biggest, size)
            assert [e.seq for e in page.events] == list(range(since, since + len(page.events)))
            since += len(page.events)
            if since > page.head_seq:
                break
        assert (since, pages) == (100_001, 101) and biggest <= frames.MAX_FRAME_BYTES
        assert srv.relay.state(info.space_id).members[crowd_name(99_999)].role == "viewer"


async def test_state_log_pages_are_cut_by_bytes(tmp_path):
    """Events can be large (an epoch names every recipient): a page holds those that fit
    in one frame, fewer than the limit asked."""
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="big epochs", policy="rotate")
        sid = info.space_id
        add_members(srv, sid, 2500, signed=False)
        state = srv.relay.state(sid)
        recipients = sorted(state.members)
        # Epoch events naming all 2,503 members (~40 KB each), appended as the relay would
        # store them (the relay does not verify stored events again).
        events = []
        for epoch in range(1, 41):
            body = {"epoch": epoch, "recipients": recipients,
                    "key_commitment": key_commitment(sid, epoch, bytes(32))}  # fmt: skip
            event = alice.make(sid, "epoch", body, seq=state.head_seq + 1, prev=state.head)
            state.apply(event, verify=False)
            events.append(event)
        db = srv.relay.storage._db
        db.executemany("INSERT INTO state_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
            (e.space_id, e.seq, e.prev, e.kind, e.actor, e.at_us, e.body, e.signature)
            for e in events
        ])  # fmt: skip
        srv.relay.core._states.pop(sid)  # the core reads the log afresh
        size, obj = await raw_answer(
            alice, frames.GetStateLog(id=1, space_id=sid, since=2501, limit=1000)
        )
        page = frames.parse_result(frames.GetStateLog, obj["result"])
        assert size <= frames.MAX_FRAME_BYTES and page.head_seq == 2540
        assert 2 <= len(page.events) < 40 and page.events[0].seq == 2501, len(page.events)
        del ring


async def test_a_hundred_thousand_channels_in_pages(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        add_channels(srv, 100_000)
        await alice.create_space(name="secret", private=True)  # never listed
        names, after, pages = [], None, 0
        while True:
            size, obj = await raw_answer(alice, frames.ListChannels(id=1, after=after))
            page = frames.parse_result(frames.ListChannels, obj["result"])
            assert size <= frames.MAX_FRAME_BYTES and len(page.channels) <= 1000
            names += [c.name for c in page.channels]
            pages += 1
            if page.next_after is None:
                break
            after = page.next_after
        assert names == [f"channel{i:06d}" for i in range(100_000)] and pages == 100


async def test_keys_come_in_pages(tmp_path):
    """A member of a space rotated 1,200 times holds 1,201 keys: ``keys`` answers them a
    page at a time, ``join`` with the first page, and pushes never carry more than a page."""
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="rotating", policy="rotate", keeper=False)
        sid = info.space_id
        for _ in range(1200):
            await alice.rotate(sid, ring)
        first = await alice.call(frames.FetchKeys, space_id=sid)
        assert [k.epoch for k in first.keys] == list(range(1000)) and first.next_epoch == 1000
        rest = await alice.call(frames.FetchKeys, space_id=sid, since_epoch=first.next_epoch)
        assert [k.epoch for k in rest.keys] == list(range(1000, 1201)) and rest.next_epoch is None
        joined = await alice.call(frames.Join, space_id=sid, event=None)
        assert len(joined.keys) == 1000 and not joined.pending


async def test_presence_of_many_comes_in_pages(tmp_path, monkeypatch):
    """The subscribe answer names at most a page of the online members; the rest follow
    at once as presence events."""
    monkeypatch.setattr(frames, "MAX_PEERS_PAGE", 2)
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="c")
        sid = info.space_id
        others = [(await member(srv, alice, sid, f"u{i}"))[0] for i in range(4)]
        for client in others:
            await client.call(frames.Subscribe, space_id=sid)
        result = await alice.call(frames.Subscribe, space_id=sid)
        online = set(result.peers)
        assert len(result.peers) == 2
        while len(online) < 5:
            pushed = await alice.event("presence")
            online |= set(pushed.joined)
        assert online == {"alice", "u0", "u1", "u2", "u3"}


async def test_user_keys_takes_at_most_a_thousand_names(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        names = tuple(f"u{i}" for i in range(1001))
        with pytest.raises(LimitExceededError, match="at most 1000 usernames"):
            await alice.call(frames.UserKeys, usernames=names)
        assert (await alice.call(frames.UserKeys, usernames=names[:1000])).users == ()


async def test_oversized_requests_are_refused_naming_the_limit(tmp_path):
    """A request frame over 1 MiB is answered ``too_large``, naming MAX_FRAME_BYTES, and the
    connection stays; an envelope with a 256 KiB ``iv`` (or any binary field off its
    size) is a ``bad_frame`` naming the field, before anything is stored or pushed."""
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="c")
        await alice.call(frames.Subscribe, space_id=info.space_id)
        for extra in (1, 500_000):
            await alice.send_text('{"t":"req","id":5,"op":"ping","p":"' + "x" * (1 << 20) + "x"
                                  * extra + '"}')  # fmt: skip
            answer = await alice.next_frame()
            assert (answer.code, answer.id) == ("too_large", None)
            assert f"MAX_FRAME_BYTES = {frames.MAX_FRAME_BYTES}" in answer.message
        envelope = json.loads(frames.Send(id=6, envelope=alice.seal(ring, "hi")).to_json())
        envelope["envelope"]["iv"] = b64e(bytes(256 << 10))
        await alice.send_text(json.dumps(envelope))
        answer = await alice.next_frame()
        assert (answer.code, answer.id) == ("bad_frame", 6)
        assert answer.message.startswith("envelope.iv: must be exactly 12 bytes")
        await alice.no_event("message")
        assert await alice.send(ring, "still here") > 0


async def test_a_slow_reader_is_dropped_by_the_write_that_overfills_it(tmp_path):
    """After every write, no connection holds more than ``max_buffered`` bytes waiting:
    the write that took a reader past it dropped it there and then (and freed them)."""
    limits = Limits(max_buffered=256 << 10)
    async with running(tmp_path, limits=limits) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="firehose")
        bob, _ = await member(srv, alice, info.space_id, "bob")
        await bob.call(frames.Subscribe, space_id=info.space_id)
        await alice.call(frames.Subscribe, space_id=info.space_id)
        bob.ws.transport.pause_reading()
        relay = srv.relay
        connections = [s.connection for s in relay.core._by_user["bob"]]
        for _ in range(400):
            await alice.send(ring, BIG)
            await alice.event("message")
            for connection in connections:
                transport = connection.transport
                assert transport.is_closing() or (
                    transport.get_write_buffer_size() <= limits.max_buffered
                )
            if "bob" not in relay.online(info.space_id):
                break
        assert relay.online(info.space_id) == ("alice",) and relay.dropped_slow == 1


async def test_a_users_message_rate_is_a_token_bucket(tmp_path):
    limits = Limits(message_rate=0.001, message_burst=5)  # the bucket never refills here
    async with running(tmp_path, limits=limits) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="c")
        bob, bobs_ring = await member(srv, alice, info.space_id, "bob")
        for i in range(5):
            await alice.send(ring, i)
        with pytest.raises(RateLimitedError, match=r"at most 0\.001 messages per second") as info_:
            await alice.send(ring, "one too many")
        assert isinstance(info_.value, LimitExceededError)
        with pytest.raises(RateLimitedError):
            await alice.call(frames.SendEphemeral, envelope=alice.seal(ring, 1, kind="eph"))
        assert await alice.call(frames.Ping) == frames.Ok()  # not a message: not metered
        assert await bob.send(bobs_ring, "bob's own bucket") > 0


async def test_a_users_stored_messages_are_capped(tmp_path):
    """Over the quota, a send is refused (``quota_exceeded``) and nothing else changes;
    deleting gives the room back; the count survives a restart (it is read from
    storage)."""
    limits = Limits(max_messages_per_user=3, max_message_bytes_per_user=10_000)
    data = tmp_path / "relay"
    async with running(data, limits=limits) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="c")
        sid = info.space_id
        bob, bobs_ring = await member(srv, alice, sid, "bob")
        handles = [await alice.send(ring, i) for i in range(3)]
        with pytest.raises(QuotaExceededError, match="max_messages_per_user = 3"):
            await alice.send(ring, "fourth")
        with pytest.raises(QuotaExceededError, match="max_message_bytes_per_user"):
            await bob.send(bobs_ring, "y" * 11_000)
        assert await bob.send(bobs_ring, "bob has room") > 0
        await alice.delete(sid, handles[0])
        kept = await alice.send(ring, "room again")
        page = await alice.call(frames.HistoryRequest, space_id=sid, before=None, limit=10)
        assert [m.handle for m in page.items][-1] == kept
    async with running(data, limits=limits) as srv:
        alice = await user(srv, "alice", identity=alice.identity)
        await alice.sync(sid)
        with pytest.raises(QuotaExceededError):
            await alice.send(ring, "still full after a restart")


async def test_rotation_keys_may_follow_the_epoch_event(tmp_path):
    """An epoch event's keys may come in parts (a rotation of more members than one
    frame holds): the caller's own with the event, the rest by ``add_keys``, each checked
    as the log allows and pushed to its recipient."""
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="rot", policy="rotate")
        sid = info.space_id
        bob, _ = await member(srv, alice, sid, "bob")
        await bob.call(frames.Subscribe, space_id=sid)
        carol = await user(srv, "carol")
        state = await alice.sync(sid)
        epoch = ring.mint_next()
        names = alice.recipients(state)
        body = {"epoch": epoch, "recipients": names,
                "key_commitment": key_commitment(sid, epoch, ring.key(epoch))}  # fmt: skip
        keys = {n: alice.wrap(ring, epoch, entry(state, n)) for n in names}
        await alice.append_event(alice.make(sid, "epoch", body), [keys["alice"]])
        await bob.state_event("epoch")
        assert [k.epoch for k in (await bob.call(frames.FetchKeys, space_id=sid)).keys] == [0]
        outsider = alice.wrap(ring, epoch, await alice.user("carol"))
        with pytest.raises(PermissionDeniedError, match="carol"):
            await alice.call(frames.AddKeys, space_id=sid, keys=(keys["bob"], outsider))
        await carol.sync(sid)
        with pytest.raises(PermissionDeniedError, match="not a member"):
            await carol.call(frames.AddKeys, space_id=sid, keys=(keys["bob"],))
        await alice.call(frames.AddKeys, space_id=sid, keys=(keys["bob"], keys["keeper"]))
        pushed = await bob.event("keys", space_id=sid)
        assert [k.epoch for k in pushed.keys] == [epoch]
        assert (await bob.keyring(sid, pushed.keys)).key(epoch) == ring.key(epoch)


async def test_unknown_handles_are_not_found_not_missing_channels(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="c")
        with pytest.raises(NotFoundError, match="no message at handle 12345") as raised:
            await alice.delete(info.space_id, 12345)
        assert type(raised.value) is NotFoundError
        with pytest.raises(NotFoundError, match="no message at handle 1") as raised:
            await alice.call(frames.Edit, handle=1, envelope=alice.seal(ring, "x"))
        assert type(raised.value) is NotFoundError


async def test_a_frame_over_the_websocket_limit_closes_only_that_connection(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        async with connect(srv.url, max_size=None) as ws:
            await ws.recv()
            await ws.send("x" * (3 << 20))
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1009
        assert await alice.call(frames.Ping) == frames.Ok()


async def test_the_relay_never_sends_a_frame_over_the_limit(tmp_path, monkeypatch):
    """Should a page ever come out larger than a frame (here: the byte cut is switched
    off), the relay answers ``too_large`` instead of sending it."""
    monkeypatch.setattr(frames, "PAGE_BYTES", 16 * frames.MAX_FRAME_BYTES)
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="c")
        for _ in range(5):
            await alice.send(ring, BIG)
        size, obj = await raw_answer(
            alice, frames.HistoryRequest(id=1, space_id=info.space_id, before=None, limit=10)
        )
        assert obj["t"] == "err" and obj["code"] == "too_large" and size < 1000
        assert "MAX_FRAME_BYTES" in obj["message"]
        assert await alice.call(frames.Ping) == frames.Ok()
