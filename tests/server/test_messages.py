"""Messages: send, handles, history pages, edit, delete, ephemeral signals, presence."""

from __future__ import annotations

import pytest

from spacenb.clock import FixedClock
from spacenb.exceptions import (
    ChannelNotFoundError,
    IntegrityError,
    KeyUnavailableError,
    LimitExceededError,
    PermissionDeniedError,
    ProtocolError,
)
from spacenb.protocol import frames
from spacenb.protocol.envelope import open_envelope, seal_envelope
from spacenb.protocol.keys import decode_public_key
from tests.server.rawclient import RawClient, running, user


async def two_members(srv, **options):
    """alice's channel with bob admitted by the keeper; both subscribed."""
    alice = await user(srv, "alice")
    info, ring = await alice.create_space(name="chat", **options)
    bob = await user(srv, "bob")
    await bob.call(frames.Join, space_id=info.space_id)
    await bob.event("keys")
    for client in (alice, bob):
        await client.call(frames.Subscribe, space_id=info.space_id)
    return alice, bob, info, ring


def body_of(client: RawClient, ring, envelope) -> object:
    return open_envelope(
        envelope, ring.key(envelope.epoch), decode_public_key(client.identity.signing_key, "sig")
    ).body


async def test_send_is_stored_then_pushed_to_every_subscriber(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        handle = await alice.send(ring, {"text": "hi"})
        for client in (alice, bob):  # the sender too
            pushed = await client.event("message")
            assert pushed.handle == handle
            assert body_of(alice, ring, pushed.envelope) == {"text": "hi"}
        page = await bob.call(frames.History, space_id=info.space_id, before=None, limit=10)
        assert [m.handle for m in page.items] == [handle] and page.next_cursor is None


async def test_handles_strictly_increase_with_a_stopped_clock(tmp_path):
    clock = FixedClock()
    async with running(tmp_path, clock=clock) as srv:
        alice, _, _, ring = await two_members(srv)
        handles = [await alice.send(ring, i) for i in range(5)]
        start = clock.now_us()
        assert handles == [start + i for i in range(5)]
        clock.advance(-10)  # even a clock going backwards
        assert await alice.send(ring, "later") == handles[-1] + 1


async def test_send_refusals(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        good = alice.seal(ring, "x")
        with pytest.raises(PermissionDeniedError, match="source"):
            await bob.call(frames.Send, envelope=good)  # bob relaying alice's envelope
        forged = frames.Envelope(**{**_fields(bob.seal(ring, "x")), "subject": "other"})
        with pytest.raises(IntegrityError):
            await bob.call(frames.Send, envelope=forged)
        with pytest.raises(ProtocolError, match="kind"):
            await alice.call(frames.Send, envelope=alice.seal(ring, "x", kind="eph"))
        with pytest.raises(KeyUnavailableError):
            await alice.call(frames.Send, envelope=_sealed(alice, ring.space_id, epoch=1))
        carol = await user(srv, "carol")
        with pytest.raises(PermissionDeniedError, match="not a member"):
            await carol.call(frames.Send, envelope=_sealed(carol, ring.space_id))
        page = await alice.call(frames.History, space_id=info.space_id, before=None, limit=10)
        assert page.items == ()


def _fields(envelope) -> dict:
    return {f: getattr(envelope, f) for f in envelope.__dataclass_fields__}


def _sealed(client, space_id: str, *, epoch: int = 0):
    """A correctly signed envelope under a made-up key (the relay cannot tell)."""
    envelope, _ = seal_envelope(
        client.identity, b"\2" * 32, source=client.username, target=space_id,
        subject="default", epoch=epoch, content_type=None, body="x",
    )  # fmt: skip
    return envelope


async def test_history_pages_walk_everything_once(tmp_path):
    async with running(tmp_path, clock=FixedClock()) as srv:
        alice, bob, info, ring = await two_members(srv)
        sent = [await alice.send(ring, i) for i in range(23)]
        seen: list[int] = []
        before = None
        while True:
            page = await bob.call(frames.History, space_id=info.space_id, before=before, limit=5)
            handles = [m.handle for m in page.items]
            assert handles == sorted(handles)
            seen = handles + seen
            if page.next_cursor is None:
                break
            assert page.next_cursor == handles[0]
            before = page.next_cursor
        assert seen == sent
        exact = await bob.call(frames.History, space_id=info.space_id, before=None, limit=23)
        assert len(exact.items) == 23 and exact.next_cursor is None
        with pytest.raises(LimitExceededError):
            await bob.call(frames.History, space_id=info.space_id, before=None, limit=1001)
        with pytest.raises(ProtocolError, match="limit"):
            await bob.call(frames.History, space_id=info.space_id, before=None, limit=0)
        carol = await user(srv, "carol")
        with pytest.raises(PermissionDeniedError):
            await carol.call(frames.History, space_id=info.space_id, before=None, limit=5)


async def test_edit_and_delete_by_author_only(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        sid = info.space_id
        handle = await alice.send(ring, "first")
        with pytest.raises(PermissionDeniedError, match="author"):
            await bob.call(frames.Edit, handle=handle, envelope=bob.seal(ring, "hijack"))
        with pytest.raises(PermissionDeniedError, match="author"):
            await bob.call(frames.Delete, space_id=sid, handle=handle)
        with pytest.raises(ChannelNotFoundError):
            await alice.call(frames.Edit, handle=handle + 1, envelope=alice.seal(ring, "?"))
        result = await alice.call(frames.Edit, handle=handle, envelope=alice.seal(ring, "fixed"))
        assert result.handle == handle
        edited = await bob.event("edited")
        assert edited.handle == handle and body_of(alice, ring, edited.envelope) == "fixed"
        (stored,) = (await bob.call(frames.History, space_id=sid, before=None, limit=5)).items
        assert body_of(alice, ring, stored.envelope) == "fixed"
        await alice.call(frames.Delete, space_id=sid, handle=handle)
        assert (await bob.event("deleted")).handle == handle
        assert (await bob.call(frames.History, space_id=sid, before=None, limit=5)).items == ()
        with pytest.raises(ChannelNotFoundError):
            await alice.call(frames.Delete, space_id=sid, handle=handle)
        # a handle is never reused, even after deleting the newest message
        assert await alice.send(ring, "next") > handle


async def test_ephemeral_reaches_others_and_is_never_stored(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        signal = alice.seal(ring, {"typing": True}, kind="eph", subject="typing")
        assert await alice.call(frames.SendEphemeral, envelope=signal) == frames.Ok()
        got = await bob.event("ephemeral")
        assert got.envelope == signal
        await alice.no_event("ephemeral")
        with pytest.raises(ProtocolError, match="kind"):
            await alice.call(frames.SendEphemeral, envelope=alice.seal(ring, "x"))
        page = await bob.call(frames.History, space_id=info.space_id, before=None, limit=10)
        assert page.items == ()


async def test_presence_follows_subscriptions_and_disconnects(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="chat")
        sid = info.space_id
        first = await alice.call(frames.Subscribe, space_id=sid)
        assert first.peers == ("alice",) and first.epoch == 0
        mine = await alice.event("presence")
        assert (mine.joined, mine.left) == (("alice",), ())
        bob = await user(srv, "bob")
        await bob.call(frames.Join, space_id=sid)
        await bob.event("keys")
        assert (await bob.call(frames.Subscribe, space_id=sid)).peers == ("alice", "bob")
        arrived = await alice.event("presence", joined=("bob",))
        assert (arrived.space_id, arrived.left) == (sid, ())
        # subscribing twice on one connection changes nothing
        await bob.call(frames.Subscribe, space_id=sid)
        await alice.call(frames.Ping)
        await alice.no_event("presence")
        # a second connection of bob does not change who is online
        bob2 = await user(srv, "bob", identity=bob.identity)
        await bob2.call(frames.Subscribe, space_id=sid)
        await bob.call(frames.Unsubscribe, space_id=sid)
        await alice.no_event("presence")
        await bob2.close()
        gone = await alice.event("presence")
        assert (gone.joined, gone.left) == ((), ("bob",))
        assert (await alice.call(frames.Subscribe, space_id=sid)).peers == ("alice",)
