"""``send`` is idempotent by signature (PROTOCOL.md, "Requests"): the same envelope sent
again, one after the other, all at once (one group commit) or after the space moved on, is
stored once and answered with the one handle; it is not pushed, charged or rate-counted
again; a deleted message's resend does not bring it back; an edit's resend is applied once.
Each test runs on SQLite and on PostgreSQL (the ``backend`` fixture); on PostgreSQL the
relay commits on its group-commit thread (``spacenb.server.pgcommit``)."""

from __future__ import annotations

import pytest

from spacenb.exceptions import (
    ChannelNotFoundError,
    KeyUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    QuotaExceededError,
    RateLimitedError,
)
from spacenb.protocol import frames
from spacenb.server.limits import Limits
from tests.server.rawclient import RawClient, running, two_members
from tests.server.records import created, envelope

pytestmark = pytest.mark.usefixtures("backend")


async def all_at_once(client: RawClient, sent: list[frames.Send]) -> list[frames.Response]:
    """Write every request before reading any answer (one event-loop turn of the relay,
    so one message batch); their answers, in order."""
    for request in sent:
        await client.send_text(request.to_json(next(client._ids)))
    answers = [await client.next_frame() for _ in sent]
    assert all(isinstance(a, frames.Response) for a in answers), answers
    return answers  # type: ignore[return-value]


async def history(client: RawClient, space_id: str) -> list[frames.StoredMessage]:
    page = await client.call(frames.HistoryRequest, space_id=space_id, before=None, limit=100)
    return list(page.items)


# --------------------------------------------------------------------------- storage


def test_storage_stores_a_signature_once(backend):
    storage = backend.open()
    space, other = created(storage), created(storage, "other")
    first = envelope(space.id)
    handle = storage.add_message(first, 10)
    assert storage.add_message(first, 20) == handle  # in the same open batch
    storage.commit()
    assert storage.add_message(first, 30) == handle  # after its commit
    storage.commit()
    assert storage.message_handle(space.id, first.signature) == handle
    # the same signature in another space is another message
    elsewhere = envelope(other.id, signature=first.signature)
    assert storage.add_message(elsewhere, 40) != handle
    storage.commit()
    assert [m.handle for m in storage.history(space.id, None, 10)[0]] == [handle]
    assert storage.message_usage("alice") == (2, 32)
    # an edit records its signature too, and the original's stays
    edited = envelope(space.id, text=b"e")
    assert storage.replace_message(handle, edited)
    assert storage.add_message(first, 50) == handle
    assert storage.add_message(edited, 50) == handle
    storage.commit()
    assert [m.envelope for m in storage.history(space.id, None, 10)[0]] == [edited]
    assert storage.message_handle(space.id, edited.signature) == handle
    assert storage.message_handle(space.id, b"x" * 64) is None


# --------------------------------------------------------------------------- the relay


async def test_a_resent_envelope_is_stored_pushed_and_charged_once(tmp_path):
    limits = Limits(max_messages_per_user=2)
    async with running(tmp_path, limits=limits) as srv:
        alice, bob, info, ring = await two_members(srv)
        sid = info.space_id
        sealed = alice.seal(ring, "once")
        handle = (await alice.call(frames.Send, envelope=sealed)).handle
        assert (await bob.event("message")).handle == handle
        for _ in range(3):
            assert (await alice.call(frames.Send, envelope=sealed)).handle == handle
        await bob.no_event("message")
        assert [m.handle for m in await history(bob, sid)] == [handle]
        # charged once: one message of the quota of two is left
        second = await alice.send(ring, "second")
        assert second > handle
        assert (await alice.call(frames.Send, envelope=sealed)).handle == handle  # still
        with pytest.raises(QuotaExceededError):
            await alice.send(ring, "third")


async def test_the_same_envelope_in_one_batch_is_stored_once(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        sealed = alice.seal(ring, "twice at once")
        other = alice.seal(ring, "another")
        sent = [frames.Send(frames.UNSENT, envelope=e) for e in (sealed, sealed, other, sealed)]
        answers = await all_at_once(alice, sent)
        handles = [int(a.result["handle"]) for a in answers]
        assert handles[0] == handles[1] == handles[3] != handles[2]
        assert [m.handle for m in await history(bob, info.space_id)] == sorted(set(handles))
        pushed = [(await bob.event("message")).handle for _ in range(2)]
        assert sorted(pushed) == sorted(set(handles))
        await bob.no_event("message")


async def test_a_resend_takes_no_rate_token(tmp_path):
    async with running(tmp_path, limits=Limits(message_rate=0.001, message_burst=2)) as srv:
        alice, _, _, ring = await two_members(srv)
        sealed = alice.seal(ring, "first")
        handle = (await alice.call(frames.Send, envelope=sealed)).handle
        for _ in range(3):
            assert (await alice.call(frames.Send, envelope=sealed)).handle == handle
        await alice.send(ring, "second")  # the burst's second token
        with pytest.raises(RateLimitedError):
            await alice.send(ring, "third")


async def test_a_resend_after_a_rotation_still_gets_its_handle(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv, policy="rotate")
        sid = info.space_id
        sealed = alice.seal(ring, "before the rotation")
        handle = (await alice.call(frames.Send, envelope=sealed)).handle
        never = alice.seal(ring, "never sent")
        await alice.rotate(sid, ring)
        assert (await alice.call(frames.Send, envelope=sealed)).handle == handle
        with pytest.raises(KeyUnavailableError):  # one not stored is refused, as before
            await alice.call(frames.Send, envelope=never)
        assert [m.handle for m in await history(bob, sid)] == [handle]


async def test_a_deleted_message_does_not_come_back_with_a_resend(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        sid = info.space_id
        sealed = alice.seal(ring, "regretted")
        handle = (await alice.call(frames.Send, envelope=sealed)).handle
        await alice.delete(sid, handle)
        assert (await alice.call(frames.Send, envelope=sealed)).handle == handle
        assert await history(bob, sid) == []
        await bob.event("message", handle=handle)
        await bob.no_event("message")


async def test_an_edit_resent_is_applied_once(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv)
        sid = info.space_id
        first = alice.seal(ring, "first", seq=7)
        handle = (await alice.call(frames.Send, envelope=first)).handle
        other = await alice.send(ring, "other")
        fixed = alice.seal(ring, "fixed", seq=7, rev=1)
        again = alice.seal(ring, "fixed again", seq=7, rev=2)
        for edit in (fixed, fixed, again, fixed):  # the late resend of rev 1 changes nothing
            assert (await alice.call(frames.Edit, handle=handle, envelope=edit)).handle == handle
        assert [e.envelope for e in [await bob.event("edited") for _ in range(2)]] == [
            fixed,
            again,
        ]
        await bob.no_event("edited")
        stored = {m.handle: m.envelope for m in await history(bob, sid)}
        assert stored[handle] == again
        # the original envelope is this message's already: resent, it changes nothing
        assert (await alice.call(frames.Send, envelope=first)).handle == handle
        # one message's envelope cannot become another's edit
        with pytest.raises(ProtocolError, match="stored already"):
            await alice.call(frames.Edit, handle=other, envelope=fixed)
        assert {m.handle: m.envelope for m in await history(bob, sid)} == stored


async def test_a_resend_is_answered_with_its_handle_or_not_found_and_never_stored(tmp_path):
    async with running(tmp_path) as srv:
        alice, bob, info, ring = await two_members(srv, policy="rotate")
        sid = info.space_id
        sealed = alice.seal(ring, "stored")
        handle = (await alice.call(frames.Send, envelope=sealed)).handle
        lost = alice.seal(ring, "never stored")
        with pytest.raises(NotFoundError, match="not stored") as refused:
            await alice.call(frames.Send, envelope=lost, resend=True)
        assert not isinstance(refused.value, ChannelNotFoundError)
        await alice.rotate(sid, ring)
        assert (await alice.call(frames.Send, envelope=sealed, resend=True)).handle == handle
        with pytest.raises(NotFoundError):
            await alice.call(frames.Send, envelope=lost, resend=True)
        with pytest.raises(PermissionDeniedError):  # still only the author's own
            await bob.call(frames.Send, envelope=sealed, resend=True)
        assert [m.handle for m in await history(bob, sid)] == [handle]
        await bob.event("message", handle=handle)
        await bob.no_event("message")
