"""Bad input never changes anything or brings the server down; slow readers are dropped."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from spacenb.exceptions import ServerError
from spacenb.protocol import frames
from spacenb.server.handlers import HANDLERS
from spacenb.server.storage import DB_FILENAME
from tests.server.rawclient import RawClient, running, user


def row_counts(data_dir) -> dict[str, int]:
    """Rows per table, read through a second connection (the file is in WAL mode)."""
    with sqlite3.connect(data_dir / DB_FILENAME) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


BAD_FRAMES = [
    # (frame, expected code, expected id, text in the message)
    ("not json", "bad_frame", None, "JSON"),
    ("[1, 2]", "bad_frame", None, "object"),
    ('{"t": "res", "id": 1, "result": {}}', "bad_frame", 1, "request"),
    ('{"t": "req", "id": -1, "op": "ping"}', "bad_frame", None, "id"),
    ('{"t": "req", "id": 7, "op": "fly"}', "bad_frame", 7, "unknown operation"),
    ('{"t": "req", "id": 8, "op": "history", "space_id": "x", "limit": 5}', "bad_frame", 8,
     "before"),
    ('{"t": "req", "id": 9, "op": "ping", "extra": 1}', "bad_frame", 9, "extra"),
    ('{"t": "req", "id": 10, "op": "history", "space_id": "x", "before": null, "limit": "5"}',
     "bad_frame", 10, "limit"),
    ('{"t": "req", "id": 11, "op": "history", "space_id": "x", "before": true, "limit": 5}',
     "bad_frame", 11, "before"),
    ('{"t": "req", "id": 12, "op": "delete", "space_id": "x", "handle": 9007199254740992}',
     "bad_frame", 12, "range"),
    ('{"t": "req", "id": 13, "op": "send", "envelope": {"kind": "msg"}}', "bad_frame", 13,
     "envelope"),
    ('{"t": "req", "id": 14, "op": "admit", "space_id": "x", "member": "y", "keys": [{}]}',
     "bad_frame", 14, "keys[0]"),
    ('{"t": "req", "id": 15, "op": "set_role", "space_id": "x", "member": "y", "role": "god"}',
     "bad_frame", 15, "role"),
    ("[" * 100_000 + "]" * 100_000, "bad_frame", None, "JSON"),
    ('{"t": "req", "id": 16, "op": "ping"' + ', "pad": "' + "x" * (1 << 20) + '"}',
     "too_large", None, "larger"),  # an oversized frame is not even parsed for its id
]  # fmt: skip


async def test_malformed_frames_get_error_frames_and_change_nothing(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="chat")
        await alice.send(ring, "before")
        before = row_counts(tmp_path)
        for text, code, rid, words in BAD_FRAMES:
            await alice.send_text(text)
            answer = await alice.next_frame()
            assert isinstance(answer, frames.ErrorFrame), text[:80]
            assert (answer.code, answer.id) == (code, rid), (text[:80], answer)
            assert words in answer.message, (text[:80], answer)
        await alice.send_text(b"\x00binary")
        answer = await alice.next_frame()
        assert (answer.code, answer.id) == ("bad_frame", None)
        # unauthorised requests are refused too, and the connection is still usable
        bob = await user(srv, "bob")
        with pytest.raises(Exception, match="not a member"):
            await bob.call(frames.Delete, space_id=info.space_id, handle=1)
        assert await alice.call(frames.Ping) == frames.Ok()
        assert row_counts(tmp_path) == {**before, "users": before["users"] + 1}


async def test_oversized_message_closes_only_that_connection(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        async with connect(srv.url, max_size=None) as ws:
            await ws.recv()  # hello
            await ws.send("x" * (3 << 20))
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1009
        assert await alice.call(frames.Ping) == frames.Ok()
        assert (await user(srv, "bob")).username == "bob"


async def test_unexpected_failure_is_a_server_error(tmp_path, monkeypatch, caplog):
    def boom(relay, session, request):
        raise RuntimeError("disk on fire")

    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        monkeypatch.setitem(HANDLERS, "list_channels", boom)
        with pytest.raises(ServerError, match="internal error"):
            await alice.call(frames.ListChannels)
        assert "disk on fire" in caplog.text
        assert await alice.call(frames.Ping) == frames.Ok()


async def test_slow_reader_is_dropped_without_holding_up_others(tmp_path):
    async with running(tmp_path) as srv:
        srv.relay.max_buffered = 64 << 10
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="firehose")
        bob = await user(srv, "bob")
        await bob.call(frames.Join, space_id=info.space_id)
        await bob.event("keys")
        await bob.call(frames.Subscribe, space_id=info.space_id)
        await alice.call(frames.Subscribe, space_id=info.space_id)
        bob.ws.transport.pause_reading()  # bob stops reading from his socket
        big = "x" * (150 << 10)
        for _ in range(400):
            await alice.send(ring, big)
            await alice.event("message")
            if "bob" not in srv.relay.online(info.space_id):
                break
        assert srv.relay.online(info.space_id) == ("alice",)
        await alice.send(ring, "still flowing")
        assert (await alice.event("message")).envelope.ciphertext


async def test_server_survives_abrupt_disconnects(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="chat")
        await alice.call(frames.Subscribe, space_id=info.space_id)
        for _ in range(5):
            client = await RawClient.open(srv.url)
            client.ws.transport.abort()
        ghost = await user(srv, "alice", identity=alice.identity)
        await ghost.call(frames.Subscribe, space_id=info.space_id)
        ghost.ws.transport.abort()
        await asyncio.sleep(0)
        assert await alice.call(frames.Ping) == frames.Ok()
        assert (await alice.call(frames.Roster, space_id=info.space_id)).members[0].online


async def test_pipelined_sends_share_commits_and_are_all_answered(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="chat")
        await alice.call(frames.Subscribe, space_id=info.space_id)
        for i in range(50):
            await alice.send_text(frames.Send(id=1000 + i, envelope=alice.seal(ring, i)).to_json())
        answers = [await alice.next_frame() for _ in range(50)]
        assert [a.id for a in answers] == list(range(1000, 1050))
        handles = [a.result["handle"] for a in answers]
        assert handles == sorted(set(handles))
        pushed = [(await alice.event("message")).handle for _ in range(50)]
        assert pushed == handles
        page = await alice.call(frames.History, space_id=info.space_id, before=None, limit=100)
        assert [m.handle for m in page.items] == handles


async def test_a_failed_commit_fails_its_sends_and_nothing_else(tmp_path, monkeypatch, caplog):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="chat")
        await alice.call(frames.Subscribe, space_id=info.space_id)
        kept = await alice.send(ring, "kept")
        await alice.event("message")
        storage = srv.relay.storage
        real_commit = storage.commit
        disk_broken = True

        def failing_commit() -> None:
            if disk_broken and storage._db.in_transaction:
                raise sqlite3.OperationalError("disk I/O error")
            real_commit()

        monkeypatch.setattr(storage, "commit", failing_commit)
        for i in range(3):
            await alice.send_text(frames.Send(id=500 + i, envelope=alice.seal(ring, i)).to_json())
        answers = [await alice.next_frame() for _ in range(3)]
        disk_broken = False
        assert [(a.id, a.code) for a in answers] == [(500 + i, "server_error") for i in range(3)]
        assert "disk I/O error" in caplog.text
        await alice.no_event("message")
        page = await alice.call(frames.History, space_id=info.space_id, before=None, limit=10)
        assert [m.handle for m in page.items] == [kept]
        assert await alice.send(ring, "works again") > kept
