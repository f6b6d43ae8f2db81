"""History pages read ahead (``spacenb.aio.readahead``): the same pages as read one by one,
every decision made when a page is taken, dropped when it may be stale, nothing left
running. A real relay behind a rewriting proxy (``tests.reliability.evil``)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.protocol import frames
from tests.faults import drop_connection
from tests.reliability.evil import EvilRelay

from .conftest import Inbox, wait_until

SEEDED = 230  # pages of 100: 100, 100, 30 (big enough for the verify workers)


@pytest.fixture
async def evil(server: Any) -> AsyncIterator[EvilRelay]:
    proxy = await EvilRelay(server.url).start()
    yield proxy
    await proxy.stop()


async def seeded(connect: Any, count: int = SEEDED) -> tuple[aio.AsyncSpace, list[int]]:
    alice = await connect("alice")
    room = await alice.space.create_channel("room")
    handles: list[int] = []
    for start in range(0, count, 16):
        batch = range(start, min(count, start + 16))
        handles += await asyncio.gather(*(room.send_message({"n": i}) for i in batch))
    return room, sorted(handles)


async def reader(connect: Any, evil: EvilRelay, name: str, *, ahead: bool = True) -> Any:
    client = await connect(name, url=evil.url)
    space = await client.space.join_channel("room")
    space.read_ahead = ahead
    return client, space


def seen(page: aio.History) -> list[tuple[int, str, Any, int]]:
    return [(m.handle, m.sender, m.message.body, m.message.rev) for m in page.messages]


async def pages(space: aio.AsyncSpace, limit: int) -> list[tuple[Any, int | None, int]]:
    found = []
    before = None
    while True:
        page = await space.history(before=before, limit=limit)
        found.append((seen(page), page.next_cursor, page.unreadable))
        if page.next_cursor is None:
            return found
        before = page.next_cursor


def asked(evil: EvilRelay, user: str, limit: int) -> list[int | None]:
    """The cursors of ``user``'s history requests of ``limit`` messages, in order."""
    requests = evil.requests(frames.HistoryRequest, user=user)
    return [r.before for r in requests if r.limit == limit]


def left_running() -> list[asyncio.Task[Any]]:
    """Tasks of read-aheads and of their signature checks that have not ended."""
    names = {"_quietly", "_checked"}
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", "") in names
    ]


async def test_the_pages_read_ahead_are_the_pages_read_one_by_one(
    connect: Any, evil: EvilRelay
) -> None:
    """Pages of 100 (verified in the workers) and of 7, with an edit and a deletion in the
    history: with the read-ahead, every page, cursor and count is what a reader without it
    gets, each page asked of the relay once; one page of 1,000 holds them all."""
    room, handles = await seeded(connect)
    await room.edit_message(handles[50], {"n": "edited"})
    await room.delete_message(handles[120])
    _bob, fast = await reader(connect, evil, "bob")
    _carol, slow = await reader(connect, evil, "carol", ahead=False)
    for limit in (100, 7):
        got = await pages(fast, limit)
        assert got == await pages(slow, limit)
        cursors = [None] + [cursor for _, cursor, _ in got[:-1]]
        assert asked(evil, "bob", limit) == cursors  # each read ahead, and taken
        assert len(asked(evil, "carol", limit)) == len(got)
        assert sum(len(messages) for messages, _, _ in got) == SEEDED - 1
    (whole,) = await pages(slow, 1000)
    newest_first = [m for messages, _, _ in reversed(got) for m in messages]
    assert whole[0] == newest_first
    assert (handles[50], "alice", {"n": "edited"}) in [m[:3] for m in whole[0]]
    assert left_running() == []


async def test_a_lying_page_read_ahead_is_refused_when_taken(connect: Any, evil: EvilRelay) -> None:
    """The relay serves the page read ahead with a genuine message replayed at another
    handle (its signature verifies in the workers) and with a message whose signature it
    broke. Both are refused when the page is taken (the replay guard and the member's own
    check decide then); the rest of the page is delivered, and nothing asked again."""
    await seeded(connect)
    _bob, space = await reader(connect, evil, "bob")
    rejected = Inbox()
    space.on_rejected(rejected)
    served = asyncio.Event()
    honest: list[frames.StoredMessage] = []
    cursor: list[int] = []

    def lie(conn: Any, req: frames.HistoryRequest, page: frames.HistoryPage) -> Any:
        if not cursor or req.before != cursor[0]:
            return page
        honest.extend(page.items)
        items = list(page.items)
        items[11] = frames.StoredMessage(items[11].handle, items[10].envelope)
        broken = bytearray(items[20].envelope.signature)
        broken[5] ^= 1
        items[20] = frames.StoredMessage(
            items[20].handle, dataclasses.replace(items[20].envelope, signature=bytes(broken))
        )
        served.set()
        return frames.HistoryPage(tuple(items), page.next_cursor)

    evil.rewrite_result(frames.HistoryRequest, lie, user="bob")
    # The cursor is known before the first page reaches bob (the hook sees it first).
    real = await _room_history(connect, limit=100)
    cursor.append(real)
    first = await space.history(limit=100)
    assert first.next_cursor == real
    await asyncio.wait_for(served.wait(), 30)  # the lie went to the read-ahead
    await asyncio.sleep(0.1)
    assert rejected.items == []  # nothing decided ahead
    second = await space.history(before=real, limit=100)
    # asked for once, ahead (and the page after it is on its way)
    await wait_until(lambda: len(asked(evil, "bob", 100)) == 3)
    assert asked(evil, "bob", 100) == [None, real, second.next_cursor]
    kept = [i.handle for n, i in enumerate(honest) if n not in (11, 20)]
    assert [m.handle for m in second.messages] == kept
    assert second.unreadable == 2
    await rejected.wait(2)
    reasons = {r.handle: r.reason for r in rejected.items}
    assert "replayed" in reasons[honest[11].handle]
    assert "signature" in reasons[honest[20].handle]


async def _room_history(connect: Any, *, limit: int) -> int:
    """The first page's cursor as the relay serves it (read by another member)."""
    dave = await connect("dave")
    room = await dave.space.join_channel("room")
    page = await room.history(limit=limit)
    assert page.next_cursor is not None
    return page.next_cursor


def hold(evil: EvilRelay, user: str, before: int, limit: int) -> asyncio.Event:
    """Hold back the relay's answers to ``user``'s request for that page until set."""
    release = asyncio.Event()

    async def held(conn: Any, req: frames.HistoryRequest, page: frames.HistoryPage) -> Any:
        if (req.before, req.limit) == (before, limit):
            await release.wait()
        return page

    evil.rewrite_result(frames.HistoryRequest, held, user=user)
    return release


async def test_another_cursor_or_limit_drops_the_page_ahead(
    connect: Any, evil: EvilRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """While the page after the first (10 messages) is on its way, bob asks for 5 at that
    cursor, then for the newest 10 again, then for that page of 10: each answered as by a
    reader without read-ahead, and the page ahead, dropped, asked for again; the answer
    to the dropped request, when it comes, is ignored quietly."""
    await seeded(connect, 40)
    _bob, fast = await reader(connect, evil, "bob")
    _carol, slow = await reader(connect, evil, "carol", ahead=False)
    first = await slow.history(limit=10)
    assert first.next_cursor is not None
    release = hold(evil, "bob", first.next_cursor, 10)
    assert seen(await fast.history(limit=10)) == seen(first)
    await wait_until(lambda: asked(evil, "bob", 10) == [None, first.next_cursor])
    # The proxy holds every answer after the held one: ask, then let the answers go.
    asking = asyncio.ensure_future(fast.history(before=first.next_cursor, limit=5))
    await wait_until(lambda: asked(evil, "bob", 5) == [first.next_cursor])
    release.set()
    five = await asking
    evil.reset()
    assert seen(five) == seen(await slow.history(before=first.next_cursor, limit=5))
    again = await fast.history(limit=10)  # the page ahead (of 5) dropped in turn
    assert seen(again) == seen(first)
    second = await fast.history(before=first.next_cursor, limit=10)
    assert seen(second) == seen(await slow.history(before=first.next_cursor, limit=10))
    assert asked(evil, "bob", 10)[:4] == [None, first.next_cursor, None, first.next_cursor]
    assert asked(evil, "bob", 5)[:1] == [first.next_cursor]
    assert [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []


@pytest.mark.parametrize("held", [True, False])
async def test_close_leaves_nothing_of_a_page_ahead_running(
    connect: Any, evil: EvilRelay, held: bool
) -> None:
    """A client closed while a page ahead is on its way (``held``: the relay holds its
    answer) or at the verify workers: no task of it is left, none reports an exception
    never retrieved; the same for ``disconnect``."""
    await seeded(connect, 250)
    problems: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: problems.append(ctx))
    for closing in ("close", "disconnect"):
        client, space = await reader(connect, evil, f"bob-{closing}")
        first = await space.history(limit=100)
        assert first.next_cursor is not None
        if held:
            hold(evil, f"bob-{closing}", first.next_cursor, 100)
            await wait_until(lambda c=closing: len(asked(evil, f"bob-{c}", 100)) == 2)
        else:
            await asyncio.sleep(0)
        assert left_running() != []
        await (client.close() if closing == "close" else space.disconnect())
        assert left_running() == []
        evil.reset()
    gc.collect()
    await asyncio.sleep(0.05)
    assert problems == []


async def test_an_edit_or_a_deletion_after_the_read_ahead_is_seen(
    connect: Any, evil: EvilRelay
) -> None:
    """The page after the first is fetched ahead, then alice edits one of its messages:
    bob's next page has the edit; the page after it is fetched ahead, then alice deletes
    one of its messages: bob's page does not have it. Both pages ahead were stale, and
    asked for again; bob sees what a reader without read-ahead sees."""
    room, handles = await seeded(connect, 30)
    _bob, fast = await reader(connect, evil, "bob")
    edited, deleted = Inbox(), Inbox()
    fast.on_message_edited(edited)
    fast.on_message_deleted(deleted)
    rejected = Inbox()
    fast.on_rejected(rejected)
    first = await fast.history(limit=10)
    assert first.next_cursor == handles[20]
    await wait_until(lambda: asked(evil, "bob", 10) == [None, handles[20]])
    await room.edit_message(handles[15], {"n": "edited"})
    await edited.wait(1)
    second = await fast.history(before=handles[20], limit=10)
    assert (handles[15], "alice", {"n": "edited"}) in [m[:3] for m in seen(second)]
    await wait_until(lambda: asked(evil, "bob", 10)[3:] == [handles[10]])
    await room.delete_message(handles[5])
    await deleted.wait(1)
    third = await fast.history(before=handles[10], limit=10)
    assert handles[5] not in [m.handle for m in third.messages] and len(third.messages) == 9
    _carol, slow = await reader(connect, evil, "carol", ahead=False)
    assert seen(second) == seen(await slow.history(before=handles[20], limit=10))
    assert seen(third) == seen(await slow.history(before=handles[10], limit=10))
    # each page ahead, stale, asked for again
    assert asked(evil, "bob", 10) == [None, *[handles[20]] * 2, *[handles[10]] * 2]
    assert rejected.items == []


async def test_a_reconnect_drops_the_page_ahead(connect: Any, evil: EvilRelay) -> None:
    """The page after the first is fetched ahead, then bob's connection drops and comes
    back (it could be to another relay): the page is asked for again."""
    await seeded(connect, 30)
    bob, space = await reader(connect, evil, "bob")
    first = await space.history(limit=10)
    assert first.next_cursor is not None
    await wait_until(lambda: asked(evil, "bob", 10) == [None, first.next_cursor])
    await drop_connection(bob.connection)
    await wait_until(lambda: bob.connection.reconnects == 1 and bob.connection.is_open)
    second = await space.history(before=first.next_cursor, limit=10)
    assert len(second.messages) == 10 and second.unreadable == 0
    assert asked(evil, "bob", 10)[:3] == [None, first.next_cursor, first.next_cursor]


async def test_an_edit_or_deletion_looking_up_its_message_reads_nothing_ahead(
    connect: Any, evil: EvilRelay, tmp_path: Any
) -> None:
    """Editing or deleting a message this client has not seen reads that one message
    from history first; that lookup asks the relay for it alone, no page after it."""
    keys = str(tmp_path / "alice.keys")
    first = await connect("alice", keystore=keys)
    room = await first.space.create_channel("room")
    handles = [await room.send_message({"n": i}) for i in range(12)]
    await first.close()
    again = await connect("alice", keystore=keys, url=evil.url)  # the author, back
    space = await again.space.join_channel("room")
    joined = len(evil.requests(frames.HistoryRequest, user="alice"))  # its history mark
    await space.edit_message(handles[5], {"n": "edited"})
    await space.delete_message(handles[9])
    lookups = evil.requests(frames.HistoryRequest, user="alice")[joined:]
    assert [(r.before, r.limit) for r in lookups] == [(handles[5] + 1, 1), (handles[9] + 1, 1)]
    page = await space.history(before=handles[6], limit=1)
    assert [m[:3] for m in seen(page)] == [(handles[5], "alice", {"n": "edited"})]
