"""SQLiteStorage on its own: schema versions, atomic redemption, handles, rollback."""

from __future__ import annotations

import sqlite3

import pytest

from spacenb.exceptions import ChannelExistsError, InviteError, ServerError
from spacenb.protocol.envelope import Envelope
from spacenb.protocol.frames import LinkInfo, MemberEntry, UserEntry
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair
from spacenb.server.sqlite import SCHEMA_VERSION, SQLiteStorage
from spacenb.server.storage import SpaceRecord, link_id_of, token_hash


def new_space(storage: SQLiteStorage, name: str | None = "c", owner: str = "alice") -> str:
    space_id = SpaceKeyPair.generate().space_id
    record = SpaceRecord(space_id, owner, "static", True, False, name, 0, 1)
    storage.create_space(record, [MemberEntry(owner, "owner")], [])
    return space_id


def envelope(space_id: str, source: str = "alice") -> Envelope:
    return Envelope("msg", source, space_id, "default", 0, "", b"\0" * 12, b"c" * 16, b"s" * 64)


def test_schema_is_versioned_and_newer_files_are_refused(tmp_path):
    path = tmp_path / "db.sqlite3"
    SQLiteStorage(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    SQLiteStorage(path).close()  # reopening migrates nothing
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(ServerError, match="upgrade spacenb"):
        SQLiteStorage(path)


def test_users_first_come_first_bound():
    storage = SQLiteStorage(":memory:")
    a, b = IdentityKeys.generate(), IdentityKeys.generate()
    first = UserEntry("alice", a.signing_key, a.ecdh_key)
    assert storage.register_user(first, 1) == (first, True)
    assert storage.register_user(UserEntry("alice", b.signing_key, b.ecdh_key), 2) == (first, False)


def test_taken_channel_name_stores_nothing():
    storage = SQLiteStorage(":memory:")
    new_space(storage, "general")
    with pytest.raises(ChannelExistsError):
        new_space(storage, "general", owner="bob")
    assert storage.pending_joins("bob") == []
    assert [c.name for c in storage.list_public_channels()] == []  # both are private


def test_redeeming_a_link_is_atomic_and_a_refusal_rolls_back():
    storage = SQLiteStorage(":memory:")
    space_id = new_space(storage)
    token = "tok"
    link = LinkInfo(link_id_of(token_hash(token)), space_id, "editor", None, 1, 0, False, 1)
    storage.create_link(link, token)
    assert storage.join_space(space_id, "bob", "viewer", 5, token) == "editor"
    with pytest.raises(InviteError, match="used 1 of 1"):
        storage.join_space(space_id, "carol", "viewer", 6, token)
    assert storage.get_role(space_id, "carol") is None
    assert not storage.has_pending_join(space_id, "carol")
    (listed,) = storage.list_links(space_id)
    assert listed.uses == 1 and listed.token is None
    assert storage.pending_joins("alice") == storage.pending_joins("bob", space_id)


def test_handles_increase_across_restarts_even_past_deletions(tmp_path):
    path = tmp_path / "db.sqlite3"
    storage = SQLiteStorage(path)
    space_id = new_space(storage)
    assert [storage.add_message(envelope(space_id), 100) for _ in range(3)] == [100, 101, 102]
    assert storage.delete_message(space_id, 102)
    storage.close()
    storage = SQLiteStorage(path)
    assert storage.add_message(envelope(space_id), 50) == 103
    assert storage.add_message(envelope(space_id), 1000) == 1000


def test_history_pages():
    storage = SQLiteStorage(":memory:")
    space_id = new_space(storage)
    handles = [storage.add_message(envelope(space_id), 10) for _ in range(5)]
    page, cursor = storage.history(space_id, None, 2)
    assert [m.handle for m in page] == handles[3:] and cursor == handles[3]
    page, cursor = storage.history(space_id, cursor, 3)
    assert [m.handle for m in page] == handles[:3] and cursor is None
    assert storage.history(space_id, handles[0], 3) == ([], None)
    assert page[0].envelope == envelope(space_id)
