"""Bad input never changes anything or brings the server down; slow readers are dropped."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from spacenb.exceptions import PermissionDeniedError, ServerError
from spacenb.protocol import frames
from spacenb.protocol.keys import IdentityKeys
from spacenb.protocol.statelog import StateEvent
from spacenb.server.handlers import with_handler
from tests.server.rawclient import RawClient, member, running, user

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and PostgreSQL


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
    ('{"t": "req", "id": 12, "op": "history", "space_id": "x", "before": 9007199254740992, '
     '"limit": 5}', "bad_frame", 12, "range"),
    ('{"t": "req", "id": 13, "op": "send", "envelope": {"kind": "msg"}}', "bad_frame", 13,
     "envelope"),
    ('{"t": "req", "id": 14, "op": "admit", "space_id": "x", "member": "y", "keys": [{}]}',
     "bad_frame", 14, "keys[0]"),
    # v1 operations are gone: every change is an appended state event
    ('{"t": "req", "id": 15, "op": "delete", "space_id": "x", "handle": 1}', "bad_frame", 15,
     "unknown operation"),
    ('{"t": "req", "id": 16, "op": "set_role", "space_id": "x", "member": "y", "role": "god"}',
     "bad_frame", 16, "unknown operation"),
    ('{"t": "req", "id": 17, "op": "join", "space_id": "x", "token": "t"}', "bad_frame", 17,
     "token"),
    ('{"t": "req", "id": 18, "op": "join", "space_id": "x"}', "bad_frame", 18, "event"),
    ('{"t": "req", "id": 19, "op": "state_log", "space_id": "x", "since": -1, "limit": 5}',
     "bad_frame", 19, "since"),
    ('{"t": "req", "id": 20, "op": "state_log", "space_id": "x", "since": 0, "limit": 5, '
     '"link_id": 5}', "bad_frame", 20, "link_id"),
    ('{"t": "req", "id": 21, "op": "state_log", "space_id": "x", "since": 0, "limit": 5, '
     '"proof": "not base64!"}', "bad_frame", 21, "proof"),
    ('{"t": "req", "id": 22, "op": "create_space", "genesis": null, "keys": []}', "bad_frame",
     22, "genesis"),
    ('{"t": "req", "id": 23, "op": "append", "space_id": "x", "event": {}, "keys": []}',
     "bad_frame", 23, "event.space_id"),
    ("[" * 100_000 + "]" * 100_000, "bad_frame", None, "JSON"),
    ('{"t": "req", "id": 24, "op": "ping"' + ', "pad": "' + "x" * (1 << 20) + '"}',
     "too_large", None, "larger"),  # an oversized frame is not even parsed for its id
]  # fmt: skip


def bad_appends(space_id: str, event: StateEvent) -> list[tuple[str, str]]:
    """Append frames carrying a well-formed event with one field broken, and the field
    the error names."""
    good = frames.Append(id=100, space_id=space_id, event=event, keys=())
    obj = json.loads(good.to_json())
    cases = [
        ({"seq": "1"}, "event.seq"),
        ({"seq": 2**53}, "event.seq"),
        ({"prev": "not base64!"}, "event.prev"),
        ({"body": 5}, "event.body"),
        ({"kind": None}, "event.kind"),
        ({"extra": 1}, "event.extra"),
    ]
    out = []
    for i, (change, field) in enumerate(cases):
        frame = {**obj, "id": 100 + i, "event": {**obj["event"], **change}}
        out.append((json.dumps(frame), field))
    unsigned = {**obj, "id": 120, "event": dict(obj["event"])}
    del unsigned["event"]["signature"]
    out.append((json.dumps(unsigned), "event.signature"))
    no_keys = {k: v for k, v in obj.items() if k != "keys"} | {"id": 121}
    out.append((json.dumps(no_keys), "keys"))
    return out


async def test_malformed_frames_get_error_frames_and_change_nothing(tmp_path, backend):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="chat")
        await alice.send(ring, "before")
        before = backend.row_counts()
        for text, code, rid, words in BAD_FRAMES:
            await alice.send_text(text)
            answer = await alice.next_frame()
            assert isinstance(answer, frames.ErrorFrame), text[:80]
            assert (answer.code, answer.id) == (code, rid), (text[:80], answer)
            assert words in answer.message, (text[:80], answer)
        event = alice.make(info.space_id, "role", {"member": "keeper", "role": "viewer"})
        for text, field in bad_appends(info.space_id, event):
            await alice.send_text(text)
            answer = await alice.next_frame()
            assert isinstance(answer, frames.ErrorFrame), text[:80]
            assert answer.code == "bad_frame" and answer.message.startswith(field), answer
        await alice.send_text(b"\x00binary")
        answer = await alice.next_frame()
        assert (answer.code, answer.id) == ("bad_frame", None)
        # unauthorised requests are refused too, and the connection is still usable
        bob = await user(srv, "bob")
        await bob.sync(info.space_id)
        with pytest.raises(PermissionDeniedError, match="not a member"):
            await bob.delete(info.space_id, 1, author="alice")
        assert await alice.call(frames.Ping) == frames.Ok()
        assert backend.row_counts() == {**before, "users": before["users"] + 1}
        # the well-formed event is still the one that follows the head
        assert await alice.append_event(event) == 1


async def test_refused_events_change_nothing(tmp_path, backend):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="chat", policy="rotate")
        sid = info.space_id
        bob = await user(srv, "bob")
        state = await bob.sync(sid)
        await alice.send(ring, "before")
        before = backend.row_counts()
        role = {"member": "keeper", "role": "viewer"}
        refused = [
            (alice, frames.Append, {"event": alice.make(sid, "role", role, seq=5)}),
            (alice, frames.Append, {"event": alice.make(sid, "role", role, signer=bob.identity)}),
            (bob, frames.Append, {"event": bob.make(sid, "role", role)}),
            (bob, frames.Append, {"event": bob.make(sid, "remove", {"member": "alice"})}),
            (alice, frames.Append, {"event": alice.make(sid, "epoch", {
                "epoch": 1, "recipients": ["alice", "keeper"], "key_commitment": "A" * 43})}),
            (bob, frames.Join, {"event": bob.add_event(state, role="editor")}),
            (bob, frames.Join, {"event": bob.add_event(state, identity=IdentityKeys.generate())}),
        ]  # fmt: skip
        codes = []
        for client, cls, fields in refused:
            if cls is frames.Append:
                fields = {"space_id": sid, "keys": (), **fields}
            else:
                fields = {"space_id": sid, **fields}
            answer = await client.request(cls, **fields)
            assert isinstance(answer, frames.ErrorFrame), (cls, fields)
            codes.append(answer.code)
        assert codes == ["stale_state", "integrity", "forbidden", "forbidden", "bad_frame",
                         "forbidden", "forbidden"]  # fmt: skip
        assert backend.row_counts() == before
        assert srv.relay.state(sid).head_seq == 0
        # the head did not move: an event built on it is taken
        assert (await bob.join(sid)).pending


async def test_a_failed_append_leaves_the_log_as_it_was(tmp_path, monkeypatch, caplog):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="chat")
        sid = info.space_id
        await alice.call(frames.Subscribe, space_id=sid)
        storage = srv.relay.storage

        def broken(*args, **kwargs):
            raise sqlite3.OperationalError("disk I/O error")

        with monkeypatch.context() as patch:
            patch.setattr(storage, "append_event", broken)
            with pytest.raises(ServerError, match="internal error"):
                await alice.invite(sid, "bob")
        assert "disk I/O error" in caplog.text
        await alice.no_event("state")
        assert srv.relay.state(sid).head_seq == 0 and alice.logs[sid].head_seq == 0
        assert await alice.invite(sid, "bob") == 1  # the same seq, now stored
        assert (await alice.state_event("invite", member="bob")).seq == 1


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


async def test_unexpected_failure_is_a_server_error(tmp_path, caplog):
    def boom(core, session, request):
        raise RuntimeError("disk on fire")

    async with running(tmp_path, table=with_handler("list_channels", boom)) as srv:
        alice = await user(srv, "alice")
        with pytest.raises(ServerError, match="internal error"):
            await alice.call(frames.ListChannels)
        assert "disk on fire" in caplog.text
        assert await alice.call(frames.Ping) == frames.Ok()


async def test_slow_reader_is_dropped_without_holding_up_others(tmp_path):
    async with running(tmp_path) as srv:
        srv.relay.max_buffered = 64 << 10
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="firehose")
        bob, _ = await member(srv, alice, info.space_id, "bob")
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
        assert srv.relay.online(info.space_id) == ("alice",)
        assert (await alice.call(frames.Subscribe, space_id=info.space_id)).peers == ("alice",)


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
        page = await alice.call(
            frames.HistoryRequest, space_id=info.space_id, before=None, limit=100
        )
        assert [m.handle for m in page.items] == handles


async def test_a_failed_commit_fails_its_sends_and_nothing_else(tmp_path, monkeypatch, caplog):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="chat")
        await alice.call(frames.Subscribe, space_id=info.space_id)
        kept = await alice.send(ring, "kept")
        await alice.event("message")
        # SQLite commits on the loop (storage.commit); PostgreSQL on the commit thread
        # (cluster.committer), whose connection raises psycopg's errors
        cluster = srv.relay.cluster
        owner: Any = srv.relay.storage if cluster is None else cluster.committer
        name = "commit" if cluster is None else "_commit"
        real_commit = getattr(owner, name)
        disk_broken = True

        def failing_commit(*args: Any) -> Any:
            if disk_broken:
                if cluster is not None:
                    import psycopg  # (an optional dependency: PostgreSQL runs only)

                    raise psycopg.OperationalError("disk I/O error")
                raise sqlite3.OperationalError("disk I/O error")
            return real_commit(*args)

        monkeypatch.setattr(owner, name, failing_commit)
        for i in range(3):
            await alice.send_text(frames.Send(id=500 + i, envelope=alice.seal(ring, i)).to_json())
        answers = [await alice.next_frame() for _ in range(3)]
        disk_broken = False
        assert [(a.id, a.code) for a in answers] == [(500 + i, "server_error") for i in range(3)]
        assert "disk I/O error" in caplog.text
        await alice.no_event("message")
        page = await alice.call(
            frames.HistoryRequest, space_id=info.space_id, before=None, limit=10
        )
        assert [m.handle for m in page.items] == [kept]
        assert await alice.send(ring, "works again") > kept
