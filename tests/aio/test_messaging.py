"""Sending, receiving, editing, deleting, ephemeral signals and history."""

from __future__ import annotations

import pytest

from spacenb.exceptions import PermissionDeniedError, ProtocolError

from .conftest import Inbox, wait_until


async def two_members(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    return a, b


async def test_send_loops_back_and_reaches_members(connect):
    a, b = await two_members(connect)
    at_a, at_b = Inbox(), Inbox()
    a.on_message(at_a)
    b.on_message(at_b)
    handle = await a.send_message(
        {"text": "hello"}, channel="chat", content_type="application/json"
    )
    (ev,) = await at_b.wait(1)
    assert ev.handle == handle
    assert ev.sender == "alice" and ev.channel == "chat" and ev.epoch == 0
    assert ev.content_type == "application/json"
    assert ev.message.body == {"text": "hello"}
    (mine,) = await at_a.wait(1)
    assert mine.handle == handle and mine.message.id == ev.message.id


async def test_handles_increase_and_unsubscribe_stops_delivery(connect):
    a, b = await two_members(connect)
    inbox = Inbox()
    unsubscribe = b.on_message(inbox)
    handles = [await a.send_message(i) for i in range(5)]
    assert handles == sorted(handles) and len(set(handles)) == 5
    await inbox.wait(5)
    assert [e.message.body for e in inbox.items] == [0, 1, 2, 3, 4]
    unsubscribe()
    await a.send_message("after")
    seen = Inbox()
    b.on_message(seen)
    await a.send_message("later")
    await seen.wait(1)
    assert [e.message.body for e in inbox.items] == [0, 1, 2, 3, 4]


async def test_payload_must_be_json(connect):
    a, _b = await two_members(connect)
    with pytest.raises(ProtocolError):
        await a.send_message({"x": object()})


async def test_edit_keeps_handle_and_gets_a_new_id(connect):
    a, b = await two_members(connect)
    sent, edited = Inbox(), Inbox()
    b.on_message(sent)
    b.on_message_edited(edited)
    handle = await a.send_message({"contents": "helo"}, channel="chat")
    (first,) = await sent.wait(1)
    await a.edit_message(handle, {"contents": "hello", "edited": True})
    (ev,) = await edited.wait(1)
    assert ev.handle == handle and ev.channel == "chat"
    assert ev.message.body == {"contents": "hello", "edited": True}
    assert ev.message.id != first.message.id
    page = await b.history()
    assert [m.message.body for m in page.messages] == [{"contents": "hello", "edited": True}]


async def test_delete_removes_from_history(connect):
    a, b = await two_members(connect)
    deleted = Inbox()
    b.on_message_deleted(deleted)
    keep = await a.send_message("keep")
    gone = await a.send_message("gone")
    await a.delete_message(gone)
    (ev,) = await deleted.wait(1)
    assert ev.handle == gone
    page = await b.history()
    assert [m.handle for m in page.messages] == [keep]


async def test_only_the_author_edits_or_deletes(connect):
    a, b = await two_members(connect)
    handle = await a.send_message("mine")
    with pytest.raises(PermissionDeniedError):
        await b.edit_message(handle, "yours now")
    with pytest.raises(PermissionDeniedError):
        await b.delete_message(handle)
    page = await a.history()
    assert [m.message.body for m in page.messages] == ["mine"]


async def test_the_owner_deletes_a_message_it_read_in_history(connect):
    """The owner keeps no per-message record of others' messages: the author its
    deletion names comes from what its member core verified."""
    a, b = await two_members(connect)
    deleted = Inbox()
    b.on_message_deleted(deleted)
    theirs = await b.send_message("bob's")
    page = await a.history()
    assert [(m.handle, m.sender) for m in page.messages] == [(theirs, "bob")]
    await a.delete_message(theirs)
    (ev,) = await deleted.wait(1)
    assert ev.handle == theirs
    assert (await b.history()).messages == ()


async def test_ephemeral_reaches_others_and_is_never_stored(connect):
    a, b = await two_members(connect)
    at_a, at_b = Inbox(), Inbox()
    a.on_ephemeral(at_a)
    b.on_ephemeral(at_b)
    await a.send_ephemeral("typing", {"isTyping": True})
    (ev,) = await at_b.wait(1)
    assert (ev.sender, ev.subject, ev.data) == ("alice", "typing", {"isTyping": True})
    assert at_a.items == []
    assert (await b.history()).messages == ()


async def test_ephemeral_is_a_no_op_when_disconnected(connect):
    a, _b = await two_members(connect)
    await a.disconnect()
    await a.send_ephemeral("typing", True)  # must not raise


async def test_history_pages_walk_everything_once(connect):
    a, b = await two_members(connect)
    sent = [await a.send_message(i) for i in range(23)]
    seen: list[int] = []
    cursor = None
    while True:
        page = await b.history(before=cursor, limit=5)
        assert [m.handle for m in page.messages] == sorted(m.handle for m in page.messages)
        seen[:0] = [m.handle for m in page.messages]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sent
    assert [m.message.body for m in (await b.history(limit=100)).messages] == list(range(23))


async def test_history_limit_is_checked(connect):
    a, _b = await two_members(connect)
    with pytest.raises(ProtocolError):
        await a.history(limit=0)


async def test_presence_and_peers(connect):
    a, b = await two_members(connect)
    await wait_until(lambda: set(a.peers()) >= {"alice", "bob"})
    assert a.is_connected() and b.is_connected()
    await b.disconnect()
    await wait_until(lambda: "bob" not in a.peers())
    assert not b.is_connected()


async def test_raw_frame_handler_sees_unhandled_frames(connect):
    a, _b = await two_members(connect)
    raw = Inbox()
    a.client.events.on("channel:raw_frame", raw)
    a.client.connection._dispatch('{"t":"evt","ev":"from-the-future","x":1}')
    (frame,) = await raw.wait(1)
    assert "from-the-future" in frame
