"""SQLiteStorage's own checks: the schema file is versioned, in WAL mode, and a file of
another version (protocol v1's schema 1, or a newer one) is refused and left byte-identical.
The storage API itself is tested on both backends in test_storage.py."""

from __future__ import annotations

import sqlite3

import pytest

from spacenb.exceptions import UnsupportedVersionError
from spacenb.server.sqlite import _SCHEMA_V2, MIGRATIONS, SCHEMA_VERSION, SQLiteStorage
from tests.server.records import created, envelope

TABLES = {"schema_version", "users", "spaces", "channels", "state_events", "wrapped_keys",
          "join_requests", "messages", "message_ids"}  # fmt: skip


def test_schema_is_versioned_and_newer_files_are_refused(tmp_path):
    path = tmp_path / "db.sqlite3"
    SQLiteStorage(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert SCHEMA_VERSION == 3 and names == TABLES
    assert 1 not in MIGRATIONS  # a v1 file is never migrated
    SQLiteStorage(path).close()  # reopening migrates nothing
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    db.close()
    before = path.read_bytes()
    with pytest.raises(UnsupportedVersionError, match=r"schema version 99.*newer"):
        SQLiteStorage(path)
    assert path.read_bytes() == before


def test_a_schema_2_file_is_migrated_and_its_stored_signatures_recorded(tmp_path):
    path = tmp_path / "db.sqlite3"
    storage = SQLiteStorage(path)
    space = created(storage)
    kept = [storage.add_message(envelope(space.id, signature=bytes([i]) * 64), 10) for i in (1, 2)]
    storage.commit()
    storage.close()
    with sqlite3.connect(path) as db:  # back to version 2, with a signature stored twice
        db.execute("DROP TABLE message_ids")
        db.execute("UPDATE schema_version SET version = 2")
        db.execute(
            "INSERT INTO messages SELECT space_id, handle + 100, source, subject, epoch, "
            "content_type, head_seq, head, iv, ciphertext, signature FROM messages"
        )
    assert "message_ids" not in _SCHEMA_V2
    storage = SQLiteStorage(path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert [storage.message_handle(space.id, bytes([i]) * 64) for i in (1, 2)] == kept  # oldest
    again = storage.add_message(envelope(space.id, signature=b"\1" * 64), 20)
    assert again == kept[0]
    storage.close()


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_a_schema_1_file_is_refused_and_left_byte_identical(tmp_path, journal):
    path = tmp_path / "spacenb.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA journal_mode={journal}")
    with db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version (version) VALUES (1)")
        db.execute("CREATE TABLE memberships (space_id TEXT, username TEXT, role TEXT)")
        db.execute("INSERT INTO memberships VALUES ('spc.x', 'alice', 'owner')")
    db.close()
    before = path.read_bytes()
    files = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UnsupportedVersionError, match="schema version 1") as refused:
        SQLiteStorage(path)
    assert "protocol v1" in str(refused.value) and refused.value.code == "unsupported_version"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    with sqlite3.connect(path) as db:  # still a readable v1 file
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        assert db.execute("SELECT count(*) FROM memberships").fetchone() == (1,)


def test_messages_are_counted_by_source_through_an_index():
    """The relay reads each user's stored messages and bytes for its quota (test_storage.py
    checks the figures on both backends): SQLite answers from an index, not a scan."""
    storage = SQLiteStorage(":memory:")
    plan = storage._db.execute(
        "EXPLAIN QUERY PLAN SELECT count(*) FROM messages WHERE source = 'x'"
    ).fetchall()
    assert "messages_by_source" in str(plan)


def test_the_state_log_and_keys_are_committed_with_fsync_and_messages_are_not(tmp_path):
    """A member never moves its head back (PROTOCOL.md, "The fork rule"), so a state
    event the relay stored must survive a power cut: its transaction commits with
    ``synchronous=FULL`` (the WAL fsynced at its COMMIT, with the message batch before it,
    committed first), and the level goes back to NORMAL for messages."""
    storage = SQLiteStorage(tmp_path / "db.sqlite3")
    space = created(storage)
    space.add_bob()
    statements: list[str] = []
    storage._db.set_trace_callback(statements.append)
    storage.add_message(envelope(space.id), 10)
    storage.append_event(space.state.events[1])
    storage.add_message(envelope(space.id, signature=b"\2" * 64), 20)
    storage.add_keys([space.key("bob")])
    storage.commit()
    storage._db.set_trace_callback(None)
    sync = [i for i, s in enumerate(statements) if s.startswith("PRAGMA synchronous")]
    assert [statements[i] for i in sync] == [
        "PRAGMA synchronous=FULL",
        "PRAGMA synchronous=NORMAL",
        "PRAGMA synchronous=FULL",
        "PRAGMA synchronous=NORMAL",
    ]
    full, normal = sync[:2]
    assert statements[full - 1] == "COMMIT"  # the message batch before it, at NORMAL
    assert statements[full + 1] == "BEGIN IMMEDIATE" and statements[normal - 1] == "COMMIT"
    assert any(s.startswith("INSERT INTO state_events") for s in statements[full:normal])
    assert not any(s.startswith("INSERT INTO messages") for s in statements[full:normal])
    assert storage._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL again
    storage.close()
