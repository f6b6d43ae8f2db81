"""Messages: send, handles, history pages, edit, delete (a state event), ephemeral
signals, presence, and envelopes bound to the state log's head."""

from __future__ import annotations

import dataclasses

import pytest

from spacenb.clock import FixedClock
from spacenb.exceptions import (
    ChannelNotFoundError,
    IntegrityError,
    KeyUnavailableError,
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    StaleStateError,
)
from spacenb.protocol import frames
from spacenb.protocol.envelope import Message, open_envelope
from spacenb.protocol.keys import decode_public_key
from spacenb.server.limits import Limits
from tests.server.rawclient import RawClient, member, running, two_members, user

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and PostgreSQL


def opened(client: RawClient, ring, envelope) -> Message:
    return open_envelope(
        envelope, ring.key(envelope.epoch), decode_public_key(client.identity.signing_key, "sig")
    )


def body_of(client: RawClient, ring, envelope) -> object:
    return opened(client, ring, envelope).body


async def test_send_is_stored_then_pushed_to_every_subscriber(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        envelope = alice.seal(ring, {"text": "hi"})
        assert (envelope.head_seq, envelope.head) == (1, alice.logs[info.space_id].head)
        handle = (await alice.call(frames.Send, envelope=envelope)).handle
        for client in (alice, bob):  # the sender too
            pushed = await client.event("message")
            assert (pushed.handle, pushed.envelope) == (handle, envelope)
            message = opened(alice, ring, pushed.envelope)
            assert message.body == {"text": "hi"}
            assert (message.sid, message.rev) == (alice.sid, 0)
        page = await bob.call(frames.HistoryRequest, space_id=info.space_id, before=None, limit=10)
        assert [(m.handle, m.envelope) for m in page.items] == [(handle, envelope)]
        assert page.next_cursor is None


async def test_envelopes_bound_to_an_older_head_still_count(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        sid = info.space_id
        await alice.invite(sid, "carol")  # the log moves on; bob did not look
        assert bob.logs[sid].head_seq == 1
        handle = await bob.send(ring, "from an older head")
        (stored,) = (
            await alice.call(frames.HistoryRequest, space_id=sid, before=None, limit=5)
        ).items
        assert (stored.handle, stored.envelope.head_seq) == (handle, 1)
        # even the genesis is a head a member may be bound to
        genesis = alice.logs[sid].hash_at(0)
        assert await alice.send(ring, "at genesis", head_seq=0, head=genesis) > handle


async def test_envelope_bound_to_a_head_the_relay_does_not_have(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        sid = info.space_id
        state = alice.logs[sid]
        with pytest.raises(StaleStateError):  # a head beyond the log
            await alice.send(ring, "from the future", head_seq=state.head_seq + 1, head=b"\1" * 32)
        with pytest.raises(StaleStateError):
            await alice.send(ring, "far ahead", head_seq=2**40, head=state.head)
        for seq in (0, state.head_seq):  # a seq the log has, with another hash: a fork
            with pytest.raises(ProtocolError, match="head"):
                await alice.send(ring, "forked", head_seq=seq, head=b"\1" * 32)
        with pytest.raises(ProtocolError, match="head"):  # the hash of another event
            await alice.send(ring, "shifted", head_seq=0, head=state.head)
        signal = alice.seal(ring, "psst", kind="eph", head_seq=0, head=b"\2" * 32)
        with pytest.raises(ProtocolError, match="head"):  # signals are bound too
            await alice.call(frames.SendEphemeral, envelope=signal)
        handle = await alice.send(ring, "good")
        with pytest.raises(ProtocolError, match="head"):
            edit = alice.seal(ring, "edited", head_seq=1, head=b"\3" * 32)
            await alice.call(frames.Edit, handle=handle, envelope=edit)
        # a head that was tampered with after signing fails the signature instead
        good = alice.seal(ring, "x")
        moved = dataclasses.replace(good, head_seq=0, head=state.hash_at(0))
        with pytest.raises(IntegrityError):
            await alice.call(frames.Send, envelope=moved)
        page = await alice.call(frames.HistoryRequest, space_id=sid, before=None, limit=10)
        assert [m.handle for m in page.items] == [handle]
        await bob.event("message", handle=handle)
        await bob.no_event("message")
        await bob.no_event("ephemeral")


async def test_a_signature_that_does_not_verify_is_neither_stored_nor_pushed_nor_charged(
    tmp_path,
):
    """The relay verifies every envelope itself (RELIABILITY.md, "Why the relay verifies
    every message"): a member's garbage never reaches storage, history, other members or
    its quota, and an edit with a bad signature leaves the stored message as it was."""
    limits = Limits.unlimited().replace(max_messages_per_user=2)
    async with running(tmp_path, limits=limits) as srv:
        alice, bob, info, ring = await two_members(srv)
        good = alice.seal(ring, "kept")
        garbage = dataclasses.replace(alice.seal(ring, "junk"), signature=b"\1" * 64)
        for _ in range(5):  # more than the quota: none of it is counted
            with pytest.raises(IntegrityError):
                await alice.call(frames.Send, envelope=garbage)
        handle = (await alice.call(frames.Send, envelope=good)).handle
        with pytest.raises(IntegrityError):
            await alice.call(frames.Edit, handle=handle, envelope=garbage)
        with pytest.raises(IntegrityError):
            bad_signal = alice.seal(ring, "psst", kind="eph")
            await alice.call(
                frames.SendEphemeral,
                envelope=dataclasses.replace(bad_signal, signature=garbage.signature),
            )
        await alice.send(ring, "second, within the quota")
        page = await alice.call(
            frames.HistoryRequest, space_id=info.space_id, before=None, limit=10
        )
        first, second = page.items  # what the relay stores: the two good messages
        assert first.handle == handle and first.envelope.signature == good.signature
        assert second.envelope.signature != garbage.signature
        await bob.event("message", handle=handle)
        await bob.event("message")
        await bob.no_event("message")
        await bob.no_event("edited")
        await bob.no_event("ephemeral")


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
        forged = dataclasses.replace(bob.seal(ring, "x"), subject="other")
        with pytest.raises(IntegrityError):
            await bob.call(frames.Send, envelope=forged)
        with pytest.raises(IntegrityError):  # a signature that does not verify
            await alice.call(frames.Send, envelope=dataclasses.replace(good, signature=b"\0" * 64))
        with pytest.raises(ProtocolError, match="kind"):
            await alice.call(frames.Send, envelope=alice.seal(ring, "x", kind="eph"))
        with pytest.raises(KeyUnavailableError):  # no epoch 1 in a static space
            await alice.call(frames.Send, envelope=alice.seal(ring, "x", epoch=1, key=b"\2" * 32))
        carol = await user(srv, "carol")
        await carol.sync(info.space_id)
        with pytest.raises(PermissionDeniedError, match="not a member"):
            await carol.call(frames.Send, envelope=carol.seal(ring, "x", key=b"\2" * 32))
        page = await alice.call(
            frames.HistoryRequest, space_id=info.space_id, before=None, limit=10
        )
        assert page.items == ()


async def test_messages_follow_the_epoch_of_the_log(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv, policy="rotate")
        sid = info.space_id
        before = alice.logs[sid].head_seq
        await alice.rotate(sid, ring)
        assert ring.current_epoch == 1
        # the old epoch, or the new one bound to a head before the rotation: refused
        with pytest.raises(KeyUnavailableError, match="epoch 1"):
            await alice.send(ring, "old key", epoch=0)
        with pytest.raises(KeyUnavailableError):
            await alice.send(ring, "new key, old head", head_seq=before)
        handle = await alice.send(ring, "new key, new head")
        # bob, still at the old head with the old key, must catch up first
        with pytest.raises(KeyUnavailableError):
            await bob.send(ring, "behind", epoch=0)
        keys = (await bob.event("keys", space_id=sid)).keys
        assert [k.epoch for k in keys] == [1]
        bring = await bob.keyring(sid)
        assert await bob.send(bring, "caught up") > handle
        # an edit is held to the same rule
        with pytest.raises(KeyUnavailableError):
            await alice.call(frames.Edit, handle=handle, envelope=alice.seal(ring, "e", epoch=0))


async def test_history_pages_walk_everything_once(tmp_path):
    async with running(tmp_path, clock=FixedClock()) as srv:
        alice, bob, info, ring = await two_members(srv)
        sent = [await alice.send(ring, i) for i in range(23)]
        seen: list[int] = []
        before = None
        while True:
            page = await bob.call(
                frames.HistoryRequest, space_id=info.space_id, before=before, limit=5
            )
            handles = [m.handle for m in page.items]
            assert handles == sorted(handles)
            seen = handles + seen
            if page.next_cursor is None:
                break
            assert page.next_cursor == handles[0]
            before = page.next_cursor
        assert seen == sent
        exact = await bob.call(frames.HistoryRequest, space_id=info.space_id, before=None, limit=23)
        assert len(exact.items) == 23 and exact.next_cursor is None
        with pytest.raises(LimitExceededError):
            await bob.call(frames.HistoryRequest, space_id=info.space_id, before=None, limit=1001)
        with pytest.raises(ProtocolError, match="limit"):
            await bob.call(frames.HistoryRequest, space_id=info.space_id, before=None, limit=0)
        carol = await user(srv, "carol")
        with pytest.raises(PermissionDeniedError):
            await carol.call(frames.HistoryRequest, space_id=info.space_id, before=None, limit=5)


async def test_edit_by_author_only(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        sid = info.space_id
        handle = await alice.send(ring, "first")
        original = opened(alice, ring, (await bob.event("message")).envelope)
        with pytest.raises(PermissionDeniedError, match="author"):
            await bob.call(frames.Edit, handle=handle, envelope=bob.seal(ring, "hijack"))
        with pytest.raises(NotFoundError, match="no message at handle") as info:
            await alice.call(frames.Edit, handle=handle + 1, envelope=alice.seal(ring, "?"))
        assert not isinstance(info.value, ChannelNotFoundError)
        with pytest.raises(ProtocolError, match="kind"):
            await alice.call(frames.Edit, handle=handle, envelope=alice.seal(ring, "?", kind="eph"))
        fixed = alice.seal(ring, "fixed", seq=original.seq, rev=1)
        assert (await alice.call(frames.Edit, handle=handle, envelope=fixed)).handle == handle
        edited = await bob.event("edited")
        assert edited.handle == handle and edited.envelope == fixed
        message = opened(alice, ring, edited.envelope)
        assert (message.body, message.seq, message.rev) == ("fixed", original.seq, 1)
        (stored,) = (
            await bob.call(frames.HistoryRequest, space_id=sid, before=None, limit=5)
        ).items
        assert body_of(alice, ring, stored.envelope) == "fixed"


async def test_delete_by_author_or_owner_only(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        sid = info.space_id
        carol, _ = await member(srv, alice, sid, "carol")
        await alice.set_role(sid, "carol", "editor")
        mine = await alice.send(ring, "alice's")
        bobs = await bob.send(ring, "bob's")
        carols = await carol.send(ring, "carol's")
        # neither a viewer nor an editor may delete someone else's message
        with pytest.raises(PermissionDeniedError, match="author or the owner"):
            await bob.delete(sid, mine, author="alice")
        with pytest.raises(PermissionDeniedError, match="author or the owner"):
            await carol.delete(sid, bobs, author="bob")
        # nor pass it off as their own, nor may the owner name the wrong author
        with pytest.raises(PermissionDeniedError, match="another author"):
            await bob.delete(sid, mine, author="bob")
        with pytest.raises(PermissionDeniedError, match="another author"):
            await alice.delete(sid, bobs, author="alice")
        with pytest.raises(NotFoundError, match="no message at handle") as info:
            await alice.delete(sid, carols + 1)
        assert not isinstance(info.value, ChannelNotFoundError)
        with pytest.raises(ProtocolError, match="handle"):
            await alice.delete(sid, 0)
        head = (await alice.sync(sid)).head_seq
        # the author deletes its own; the owner deletes anyone's
        await bob.delete(sid, bobs)
        await alice.delete(sid, carols, author="carol")
        for handle, author in ((bobs, "bob"), (carols, "carol")):
            event = await alice.state_event("delete", handle=handle)
            assert event.fields()["author"] == author
        assert (await alice.sync(sid)).head_seq == head + 2
        page = await bob.call(frames.HistoryRequest, space_id=sid, before=None, limit=5)
        assert [m.handle for m in page.items] == [mine]
        with pytest.raises(ProtocolError, match="already deleted"):
            await alice.delete(sid, bobs, author="bob")
        with pytest.raises(NotFoundError):  # nothing left to edit
            await bob.call(frames.Edit, handle=bobs, envelope=bob.seal(ring, "back?"))
        # a handle is never reused, even after deleting the newest message
        assert await alice.send(ring, "next") > carols


async def test_ephemeral_reaches_others_and_is_never_stored(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        other = await user(srv, "alice", identity=alice.identity)  # alice's second connection
        await other.call(frames.Subscribe, space_id=info.space_id)
        signal = alice.seal(ring, {"typing": True}, kind="eph", subject="typing")
        assert await alice.call(frames.SendEphemeral, envelope=signal) == frames.Ok()
        for client in (bob, other):
            assert (await client.event("ephemeral")).envelope == signal
        await alice.no_event("ephemeral")  # only the sending connection is skipped
        with pytest.raises(ProtocolError, match="kind"):
            await alice.call(frames.SendEphemeral, envelope=alice.seal(ring, "x"))
        with pytest.raises(PermissionDeniedError, match="source"):
            await bob.call(frames.SendEphemeral, envelope=signal)
        page = await bob.call(frames.HistoryRequest, space_id=info.space_id, before=None, limit=10)
        assert page.items == ()


async def test_presence_follows_subscriptions_and_disconnects(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="chat")
        sid = info.space_id
        first = await alice.call(frames.Subscribe, space_id=sid)
        assert (first.peers, first.epoch, first.head_seq) == (("alice",), 0, 0)
        mine = await alice.event("presence")
        assert (mine.joined, mine.left) == (("alice",), ())
        bob, _ = await member(srv, alice, sid, "bob")
        subscribed = await bob.call(frames.Subscribe, space_id=sid)
        assert (subscribed.peers, subscribed.head_seq) == (("alice", "bob"), 1)
        arrived = await alice.event("presence", joined=("bob",))
        assert (arrived.space_id, arrived.left) == (sid, ())
        # subscribing twice on one connection changes nothing
        await bob.call(frames.Subscribe, space_id=sid)
        await alice.call(frames.Ping)
        await alice.no_event("presence")
        # a second connection of bob does not change who is online
        bob2 = await user(srv, "bob", identity=bob.identity)
        await bob2.call(frames.Subscribe, space_id=sid)
        await bob.call(frames.UnsubscribeRequest, space_id=sid)
        await alice.no_event("presence")
        await bob2.close()
        gone = await alice.event("presence")
        assert (gone.joined, gone.left) == ((), ("bob",))
        assert (await alice.call(frames.Subscribe, space_id=sid)).peers == ("alice",)
        # leaving the space takes bob's other connection offline too
        await bob.call(frames.Subscribe, space_id=sid)
        assert (await alice.event("presence")).joined == ("bob",)
        await bob.leave(sid)
        assert (await alice.event("presence")).left == ("bob",)
        assert srv.relay.online(sid) == ("alice",)
