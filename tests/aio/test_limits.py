"""The async client against a hostile load, on a real relay on loopback: large messages
break no page and no catch-up, oversized content is refused before it is sent (the
connection stays), catch-up shrinks its pages instead of reconnecting for ever, errors say
what happened, shares come only from stores the relay names, and ``close()`` leaves no
task behind."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

import pytest

import spacenb
import spacenb.aio as aio
from spacenb.aio import files
from spacenb.exceptions import (
    ChannelNotFoundError,
    ConnectionLostError,
    InviteError,
    LimitExceededError,
    NotEnoughSharesError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    UsageError,
)
from spacenb.protocol import frames
from spacenb.protocol.envelope import MAX_SEALED_BYTES
from spacenb.protocol.filecodec import FileEncoder
from spacenb.server import Limits, start_server
from spacenb.server.handlers import REQUEST_TABLE, with_handler
from spacenb.server.shards import ShardStore
from tests.faults import drop_connection
from tests.server.crowd import add_members

from .conftest import Inbox, relay_on, wait_until
from .mitm import MitmRelay

QUARTER_MB = "q" * 250_000


async def all_history(space: aio.AsyncSpace) -> list[Any]:
    """Every message, oldest first, following the cursors."""
    found: list[Any] = []
    before = None
    while True:
        page = await space.history(before=before, limit=1000)
        found[:0] = page.messages
        if page.next_cursor is None:
            return found
        before = page.next_cursor


async def test_four_quarter_megabyte_messages_break_nothing(connect: Any) -> None:
    """A viewer's four 250 KB messages: history pages still come (fewer messages than
    asked, and a cursor), a catch-up after a reconnect finds them all without looping,
    and new messages are delivered as before."""
    alice, bob = await connect("alice"), await connect("bob")
    room = await alice.space.create_channel("room")
    bobs = await bob.space.join_channel("room")
    inbox = Inbox()
    room.on_message(inbox)
    for i in range(4):
        await bobs.send_message({"n": i, "pad": QUARTER_MB})
    await inbox.wait(4)
    page = await room.history(limit=50)
    assert 1 <= len(page.messages) < 4 and page.next_cursor is not None
    assert [m.message.body["n"] for m in await all_history(room)] == [0, 1, 2, 3]
    await drop_connection(alice.connection)
    await bobs.send_message({"n": 4, "pad": QUARTER_MB})  # while alice is away, maybe
    await inbox.wait(5)
    await bobs.send_message({"n": 5})
    await inbox.wait(6)
    await asyncio.sleep(0.3)
    assert [m.message.body["n"] for m in inbox.items] == [0, 1, 2, 3, 4, 5]
    assert alice.connection.reconnects == 1


async def test_oversized_content_is_refused_before_sending(connect: Any) -> None:
    """A 2 MB body, an edit to one, or a manifest too large for one message: each raises
    :class:`LimitExceededError` naming the limit, nothing reaches the relay, and the
    connection stays up."""
    alice = await connect("alice")
    room = await alice.space.create_channel("room")
    with pytest.raises(LimitExceededError, match="MAX_SEALED_BYTES") as info:
        await room.send_message("x" * 2_000_000)
    assert f"at most {MAX_SEALED_BYTES}" in str(info.value) and "put_file" in str(info.value)
    handle = await room.send_message("small")
    with pytest.raises(LimitExceededError, match="MAX_SEALED_BYTES"):
        await room.edit_message(handle, "y" * 300_000)
    stores = [f"ws://127.0.0.1:{9 + j}" for j in range(3)]
    encoder = FileEncoder(3000, k=2, n=3, stores=stores, segment_size=1)
    for i in range(3000):
        encoder.encode_segment(i, b"z")
    manifest = encoder.manifest().to_dict()
    with pytest.raises(LimitExceededError, match="MAX_SEALED_BYTES"):
        await room.send_message({"file": manifest})
    assert alice.connection.is_open and alice.connection.reconnects == 0
    assert [m.message.body for m in (await room.history()).messages] == ["small"]


async def test_catch_up_asks_for_smaller_pages_when_refused(tmp_path: Path) -> None:
    """A relay that refuses big pages (``too_large``): the catch-up halves its page until
    it is taken, delivers what was missed once, and does not reconnect again."""
    asked: list[int] = []
    picky_now: list[bool] = []  # refuse big pages from the drop on
    history = REQUEST_TABLE["history"].handler

    def picky(core: Any, session: Any, request: frames.HistoryRequest) -> Any:
        if picky_now:
            asked.append(request.limit)
            if request.limit > 10:
                raise LimitExceededError("pages of at most 10 messages here")
        return history(core, session, request)

    async with relay_on(tmp_path, with_handler("history", picky)) as connect:
        alice, bob = await connect("alice"), await connect("bob")
        room = await alice.space.create_channel("room")
        bobs = await bob.space.join_channel("room")
        inbox = Inbox()
        room.on_message(inbox)
        await bobs.send_message(0)
        await inbox.wait(1)
        picky_now.append(True)
        await drop_connection(alice.connection)
        for i in range(1, 30):
            await bobs.send_message(i)
        await inbox.wait(30)
        await asyncio.sleep(0.3)
        assert [m.message.body for m in inbox.items] == list(range(30))
        assert alice.connection.reconnects == 1
        assert asked[:7] == [1000, 500, 250, 125, 62, 31, 15] and set(asked[7:]) == {7}


async def test_catch_up_asks_for_smaller_pages_after_an_oversized_frame(
    server: Any, connect: Any
) -> None:
    """A relay (here a proxy) that sends a history frame over the frame limit: the client
    closes that socket (1009), and the catch-up asks for half as much each time, so it
    reconnects a few times, never in a loop, and misses nothing."""
    proxy = await MitmRelay(server.url).start()
    try:

        def pad(frame: dict[str, Any]) -> dict[str, Any]:
            result = frame.get("result")
            if isinstance(result, dict) and len(result.get("items", ())) > 40:
                result["pad"] = "x" * (frames.MAX_FRAME_BYTES + 1)
            return frame

        alice = await connect("alice", url=proxy.url)
        bob = await connect("bob")
        room = await alice.space.create_channel("room")
        bobs = await bob.space.join_channel("room")
        inbox = Inbox()
        room.on_message(inbox)
        for i in range(100):
            await bobs.send_message(i)
        await inbox.wait(100)
        proxy.rewrite = pad
        await drop_connection(alice.connection)
        await wait_until(lambda: room.core.delivery.behind is False and room.is_connected())
        await bobs.send_message(100)
        await inbox.wait(101)
        reconnects = alice.connection.reconnects
        await asyncio.sleep(0.5)
        assert alice.connection.reconnects == reconnects <= 6  # 1000 → 500 → … → 31
        assert [m.message.body for m in inbox.items] == list(range(101))
    finally:
        await proxy.stop()


async def test_a_relay_url_is_ws_or_wss(server: Any) -> None:
    for url in ("http://127.0.0.1:1", "127.0.0.1:8765", "https://relay.example", ""):
        with pytest.raises(UsageError, match="ws:// or wss://") as info:
            await aio.connect(url, app_key=server.app_key, username="alice", keystore=":memory:")
        assert isinstance(info.value, ValueError)
    with pytest.raises(UsageError, match="ws:// or wss://"):
        spacenb.connect("http://127.0.0.1:1", app_key="k", username="alice", keystore=":memory:")


async def test_unknown_handles_and_members_are_not_found(connect: Any) -> None:
    alice = await connect("alice")
    room = await alice.space.create_channel("room")
    for attempt in (
        lambda: room.delete_message(12345),
        lambda: room.edit_message(12345, "x"),
        lambda: alice.space.set_member_role(room.id, "nobody", "editor"),
        lambda: alice.space.remove_member(room.id, "nobody"),
        lambda: alice.fingerprint_of("nobody"),
    ):
        with pytest.raises(NotFoundError) as info:
            await attempt()
        assert not isinstance(info.value, ChannelNotFoundError), info.value
    with pytest.raises(ChannelNotFoundError):  # a ChannelNotFoundError is a NotFoundError
        await alice.space.join_channel("no such room")


async def test_put_file_with_too_few_stores(server: Any, connect: Any) -> None:
    """k of n stores reachable: the missing one is named (every store takes its share);
    fewer than k: :class:`NotEnoughSharesError`, naming each store and why."""
    alice = await connect("alice")
    room = await alice.space.create_channel("room")
    stores = server.shard_stores  # 3 stores, 2 needed
    await stores[0].stop()
    with pytest.raises(ConnectionLostError, match=str(server.shard_urls[0])):
        await room.put_file(b"data")
    await stores[1].stop()
    with pytest.raises(NotEnoughSharesError, match="only 1 of 3 shard stores") as info:
        await room.put_file(b"data")
    assert server.shard_urls[0] in str(info.value) and server.shard_urls[1] in str(info.value)


async def test_shares_come_only_from_the_relays_stores(
    server: Any, connect: Any, tmp_path: Path
) -> None:
    """A manifest naming a store the relay does not run: readers never dial it (and read
    from the others) unless they were told to trust it."""
    dialed: list[str] = []
    foreign = ShardStore(tmp_path / "foreign", server.relay.core.relay_keys.signing_key)
    handle = foreign._handle

    async def counting(ws: Any) -> None:
        dialed.append("foreign")
        await handle(ws)

    foreign._handle = counting  # type: ignore[method-assign]
    await foreign.start()
    try:
        alice, bob = await connect("alice"), await connect("bob")
        room = await alice.space.create_channel("room")
        bobs = await bob.space.join_channel("room")
        ticket = await alice.request(frames.ShardTicket(frames.UNSENT, space_id=room.id))
        assert foreign.url is not None
        mixed = [foreign.url, *ticket.stores[:2]]
        manifest, _ = await files.upload(
            b"a file", ticket=ticket.ticket, space_id=room.id, stores=mixed, shards_needed=2
        )
        dialed.clear()
        data, stat = await bobs.get_file(manifest)
        assert data == b"a file" and dialed == [] and stat.stores_failed == (foreign.url,)
        elsewhere = manifest.to_dict() | {"stores": [foreign.url] * 3}
        with pytest.raises(NotEnoughSharesError, match="not a shard store of this relay"):
            await bobs.get_file(elsewhere)
        assert dialed == []
        carol = await connect("carol", allowed_stores=[foreign.url])
        data, stat = await (await carol.space.get(room.id)).get_file(manifest)
        assert data == b"a file" and dialed and foreign.url in stat.stores_used
    finally:
        await foreign.stop()


async def test_owners_revoke_a_link_by_the_id_it_is_listed_with(connect: Any) -> None:
    alice, bob = await connect("alice"), await connect("bob")
    space = await alice.space.create_space()
    link = await alice.space.create_invite_link(space.id, max_uses=5)
    (listed,) = await alice.space.list_invite_links(space.id)
    assert listed.token is None and listed.link_id == link.link_id
    await alice.space.revoke_invite_link(space.id, listed.link_id)  # the token is lost
    (listed,) = await alice.space.list_invite_links(space.id)
    assert listed.revoked
    assert link.token is not None
    with pytest.raises(InviteError, match="revoked"):
        await bob.space.join_by_invite(space.id, link.token, timeout=2)


async def test_rate_and_quota_errors_reach_the_caller(tmp_path: Path) -> None:
    limits = Limits(message_rate=0.001, message_burst=3, max_messages_per_user=4)
    server = await start_server(tmp_path / "relay", shards=0, limits=limits)
    try:
        alice = await aio.connect(server.url, app_key=server.app_key, username="alice",
                                  keystore=":memory:")  # fmt: skip
        bob = await aio.connect(server.url, app_key=server.app_key, username="bob",
                                keystore=":memory:")  # fmt: skip
        room = await alice.space.create_channel("room")
        for i in range(3):
            await room.send_message(i)
        with pytest.raises(RateLimitedError, match="try again in"):
            await room.send_message("fourth")
        bobs = await bob.space.join_channel("room")
        server.relay.core._buckets.clear()  # a fresh bucket, the same quota
        await room.send_message(3)
        with pytest.raises(QuotaExceededError, match="max_messages_per_user = 4"):
            await room.send_message(4)
        assert await bobs.send_message("bob still can") > 0
        await alice.close()
        await bob.close()
    finally:
        await server.stop()


async def test_rotation_keys_go_in_frames_that_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation's wrapped keys that do not fit in its ``append`` follow by ``add_keys``
    (pages made small here, as with thousands of members): every member gets the key."""
    added: list[int] = []
    add_keys = REQUEST_TABLE["add_keys"].handler

    def spy(core: Any, session: Any, request: frames.AddKeys) -> Any:
        added.append(len(request.keys))
        return add_keys(core, session, request)

    async with relay_on(tmp_path, with_handler("add_keys", spy)) as connect:
        alice = await connect("alice")
        room = await alice.space.create_channel("room", history_policy="rotate")
        others = [await connect(f"user{i}") for i in range(8)]
        spaces = [await c.space.join_channel("room") for c in others]
        monkeypatch.setattr(frames, "PAGE_BYTES", 2500)  # about five keys a frame
        epoch = await room.rotate()
        assert len(added) >= 1 and sum(added) <= 8
        await wait_until(
            lambda: all(s.keyring is not None and s.keyring.has(epoch) for s in spaces)
        )
        inbox = Inbox()
        spaces[-1].on_message(inbox)
        await room.send_message("after the rotation")
        (message,) = await inbox.wait(1)
        assert message.epoch == epoch


async def test_a_space_of_six_thousand_members(server: Any, connect: Any) -> None:
    """Members are read from the state log, which comes a page at a time (six pages here;
    tests/server/test_limits.py serves 100,000 members), each verified: all are listed,
    and the space still works."""
    alice = await connect("alice")
    room = await alice.space.create_channel("crowded")
    add_members(server, room.id, 6_000)
    members = await alice.space.members(room.id)
    assert len(members) == 6_002  # alice, the keeper and the crowd
    assert await room.send_message("hello, everyone") > 0


def test_close_leaves_no_task_behind(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A client whose relay went away is reconnecting when it is closed: ``close()``
    cancels that, so no "Task was destroyed but it is pending!" is ever logged."""

    async def scenario() -> None:
        server = await start_server(tmp_path / "relay", shards=0)
        client = await aio.connect(server.url, app_key=server.app_key, username="alice",
                                   keystore=":memory:")  # fmt: skip
        room = await client.space.create_channel("room")

        async def slow_handler(event: Any) -> None:
            await asyncio.sleep(60)

        room.on_message(slow_handler)
        await room.send_message("hi")
        await asyncio.sleep(0.1)
        await server.stop()
        await wait_until(lambda: not client.connection.is_open)
        await asyncio.sleep(0.2)  # the reconnection is under way
        await client.close()
        me = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        assert left == [], left

    loop = asyncio.new_event_loop()
    caplog.set_level(logging.ERROR, logger="asyncio")
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    del loop
    gc.collect()
    assert "Task was destroyed but it is pending" not in caplog.text
