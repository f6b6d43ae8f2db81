"""Restarting with the same data directory keeps everything; nothing readable is stored."""

from __future__ import annotations

import base64
import dataclasses
import sqlite3
import stat

import pytest

from spacenb.clock import FixedClock
from spacenb.exceptions import (
    AuthenticationError,
    ServerError,
    StaleStateError,
    UnsupportedVersionError,
)
from spacenb.protocol import frames
from spacenb.protocol.keys import IdentityKeys
from spacenb.server.app import start_server
from spacenb.server.storage import DB_FILENAME
from tests.server.rawclient import running, user

SECRET = "the eagle lands at dawn 7f3a"


async def test_restart_keeps_users_spaces_logs_messages_links_keeper_and_app_key(tmp_path, backend):
    clock = FixedClock()
    alice_id, bob_id = IdentityKeys.generate(), IdentityKeys.generate()
    async with running(tmp_path, clock=clock) as srv:
        app_key, keeper_key = srv.app_key, srv.keeper.identity.to_text()
        alice = await user(srv, "alice", identity=alice_id)
        alice.clock = clock
        info, ring = await alice.create_space(name="general")
        secret, _ = await alice.create_space(name="secret", private=True)
        token = await alice.create_link(secret.space_id, max_uses=3, role="editor")
        bob = await user(srv, "bob", identity=bob_id)
        bob.clock = clock
        await bob.join(secret.space_id, token)
        await bob.event("keys")
        handles = [await alice.send(ring, f"message {i}") for i in range(3)]
        await alice.delete(info.space_id, handles[-1])
        page_before = await alice.call(
            frames.HistoryRequest, space_id=info.space_id, before=None, limit=9
        )
        logs_before = {
            s: (await alice.read_log(s)).events for s in (info.space_id, secret.space_id)
        }

    clock = FixedClock()  # the clock restarts at the same reading: handles must still grow
    async with running(tmp_path, clock=clock) as srv:
        assert srv.app_key == app_key
        assert srv.keeper.identity.to_text() == keeper_key
        alice = await user(srv, "alice", identity=alice_id)
        alice.clock = clock
        with pytest.raises(AuthenticationError, match="taken"):
            await user(srv, "bob")
        assert (await alice.call(frames.Resolve, name="general")).space_id == info.space_id
        assert [c.name for c in (await alice.call(frames.ListChannels)).channels] == ["general"]
        page = await alice.call(frames.HistoryRequest, space_id=info.space_id, before=None, limit=9)
        assert page == page_before
        # the state logs are served as they were signed, and verify from genesis
        for space_id, events in logs_before.items():
            assert (await alice.read_log(space_id)).events == events
        state = await alice.sync(secret.space_id)
        link = state.links[alice.link_body(token)["link_id"]]
        assert (link.uses, link.max_uses, link.role) == (1, 3, "editor")
        assert state.members["bob"].role == "editor"
        assert (await alice.sync(info.space_id)).deleted == {handles[-1]: "alice"}
        assert await alice.send(ring, "after restart") > handles[-1]
        info_after = await alice.call(frames.GetSpaceInfo, space_id=secret.space_id)
        assert info_after == dataclasses.replace(secret, head_seq=2)
        # the relay's state is rebuilt from the log: a stale event is refused, the next taken
        stale = alice.make(secret.space_id, "role", {"member": "bob", "role": "viewer"}, seq=2,
                           prev=state.hash_at(1))  # fmt: skip
        with pytest.raises(StaleStateError):
            await alice.call(frames.Append, space_id=secret.space_id, event=stale, keys=())
        assert await alice.set_role(secret.space_id, "bob", "viewer") == 3
        # the link keeps counting its uses
        carol = await user(srv, "carol")
        carol.clock = clock
        assert (await carol.join(secret.space_id, token)).role == "editor"
        # the keeper still holds the group key (from its wrapped blobs) and admits newcomers
        dave = await user(srv, "dave")
        await dave.join(info.space_id)
        keys = (await dave.event("keys")).keys
        assert (await dave.keyring(info.space_id, keys)).key(0) == ring.key(0)


async def test_join_requests_left_open_are_handled_after_restart(tmp_path, backend):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="general")
        await srv.keeper.stop()  # the keeper is down when bob asks
        bob_id = IdentityKeys.generate()
        bob = await user(srv, "bob", identity=bob_id)
        assert (await bob.join(info.space_id)).pending
    async with running(tmp_path) as srv:
        await srv.keeper.idle()
        bob = await user(srv, "bob", identity=bob_id)
        joined = await bob.join(info.space_id)  # a member now: no event
        assert not joined.pending
        assert (await bob.keyring(info.space_id, joined.keys)).key(0) == ring.key(0)


async def test_nothing_at_rest_holds_plaintext_or_a_group_key(tmp_path, backend):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="general")
        rot, rring = await alice.create_space(name="rot", policy="rotate")
        bob = await user(srv, "bob")
        for space in (info, rot):
            await bob.join(space.space_id)
            await bob.event("keys")
        await alice.rotate(rot.space_id, rring)
        for r in (ring, rring):
            for i in range(20):
                await alice.send(r, {"text": SECRET, "n": i})
        group_keys = [ring.key(0), rring.key(0), rring.key(1)]
        scan(backend, group_keys)  # while running: the WAL holds the recent writes
    scan(backend, group_keys)


async def test_a_v1_data_dir_is_refused_untouched(tmp_path):
    async with running(tmp_path):
        pass
    path = tmp_path / DB_FILENAME
    for leftover in tmp_path.glob(DB_FILENAME + "*"):
        leftover.unlink()
    db = sqlite3.connect(path)  # what protocol v1 left: schema version 1, in WAL mode
    db.execute("PRAGMA journal_mode=WAL")
    with db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute("CREATE TABLE memberships (space_id TEXT, username TEXT, role TEXT)")
    db.close()
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UnsupportedVersionError, match="schema version 1"):
        await start_server(tmp_path, shards=0)
    after = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def scan(backend, group_keys: list[bytes]) -> None:
    needles = [SECRET.encode()]
    for key in group_keys:
        needles += [key, key.hex().encode(), base64.urlsafe_b64encode(key).rstrip(b"=")]
    places = set()
    for where, data in backend.stored_bytes():
        places.add(where.split()[0])
        for needle in needles:
            assert needle not in data, f"{where} holds a secret"
    assert (DB_FILENAME in places) == (backend.name == "sqlite")
    assert ("table" in places) == (backend.name == "postgresql")
    assert ("cluster" in places) == (backend.cluster is not None)  # its files, WAL included


async def test_secret_files_are_private_and_checked(tmp_path):
    async with running(tmp_path):
        pass
    for name in ("app.json", "keeper.key", "relay.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    (tmp_path / "keeper.key").unlink()  # another keeper identity would not match the users table
    with pytest.raises(ServerError, match="keeper"):
        await start_server(tmp_path, shards=0)
    (tmp_path / "relay.key").write_text("garbage")
    with pytest.raises(ServerError, match=r"relay\.key"):
        await start_server(tmp_path, shards=0)


async def test_temporary_data_dir_is_removed_on_stop():
    srv = await start_server(shards=0)
    data_dir = srv.data_dir
    assert (data_dir / "spacenb.sqlite3").exists()
    await srv.stop()
    await srv.stop()  # idempotent
    assert not data_dir.exists()


@pytest.mark.parametrize(("shards", "needed"), [(3, 4), (256, 3), (5, 0), (-1, 1)])
async def test_shard_counts_are_validated(shards, needed):
    with pytest.raises(ValueError, match="shards_needed"):
        await start_server(shards=shards, shards_needed=needed)
