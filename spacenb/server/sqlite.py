"""The SQLite implementation of :class:`~spacenb.server.storage.Storage`.

One file (``spacenb.sqlite3`` in the data directory), WAL journal, ``synchronous=NORMAL``
(a commit survives a crash of the process; a power cut may lose the last few messages),
``FULL`` for the commits of the state log and the wrapped keys (a power cut keeps them). The schema
is versioned: ``schema_version`` holds the version and :func:`migrate` applies the missing
steps of :data:`MIGRATIONS`, each in one transaction. PROTOCOL.md ("Server operation")
summarises the tables.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from ..exceptions import ChannelExistsError, StaleStateError
from ..protocol.envelope import Envelope
from ..protocol.frames import ChannelEntry, StoredMessage, UserEntry
from ..protocol.relayrules import next_handle
from ..protocol.statelog import StateEvent
from ..protocol.wrap import WrappedKey
from .storage import (
    DB_FILENAME,
    PendingJoin,
    SpaceRecord,
    Storage,
    StoredBefore,
    unsupported_schema,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStorage", "migrate"]

# Version 1 was protocol v1's schema (memberships, allowlist and links kept as tables, no
# state log); version 2 keeps each space's signed state log and derives the rest from it;
# version 3 adds ``message_ids``, which makes ``send`` idempotent by signature.
SCHEMA_VERSION = 3

_SCHEMA_V2 = """
CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    signing_key   TEXT NOT NULL,
    ecdh_key      TEXT NOT NULL,
    created_at_us INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE spaces (
    space_id      TEXT PRIMARY KEY,
    private       INTEGER NOT NULL,
    deleted_upto  INTEGER NOT NULL DEFAULT 0,  -- highest handle ever deleted
    created_at_us INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE channels (
    name     TEXT PRIMARY KEY,
    space_id TEXT NOT NULL UNIQUE REFERENCES spaces (space_id)
) WITHOUT ROWID;

CREATE TABLE state_events (
    space_id  TEXT NOT NULL REFERENCES spaces (space_id),
    seq       INTEGER NOT NULL,
    prev      BLOB NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    at_us     INTEGER NOT NULL,
    body      BLOB NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (space_id, seq)
) WITHOUT ROWID;

CREATE TABLE wrapped_keys (
    space_id  TEXT NOT NULL REFERENCES spaces (space_id),
    recipient TEXT NOT NULL,
    epoch     INTEGER NOT NULL,
    wrapper   TEXT NOT NULL,
    blob      BLOB NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (space_id, recipient, epoch)
) WITHOUT ROWID;

CREATE TABLE join_requests (
    space_id      TEXT NOT NULL REFERENCES spaces (space_id),
    username      TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    PRIMARY KEY (space_id, username)
) WITHOUT ROWID;

CREATE TABLE messages (
    space_id     TEXT NOT NULL REFERENCES spaces (space_id),
    handle       INTEGER NOT NULL,
    source       TEXT NOT NULL,
    subject      TEXT NOT NULL,
    epoch        INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    head_seq     INTEGER NOT NULL,
    head         BLOB NOT NULL,
    iv           BLOB NOT NULL,
    ciphertext   BLOB NOT NULL,
    signature    BLOB NOT NULL,
    PRIMARY KEY (space_id, handle)
);

CREATE INDEX messages_by_source ON messages (source);
"""
# Every signature a space stored a message under (a send, or an edit applied to it), and
# its handle; kept when the message is edited or deleted, so that a resend of the same
# envelope is answered with that handle and never stored again.
_SCHEMA_V3 = """
CREATE TABLE message_ids (
    space_id  TEXT NOT NULL REFERENCES spaces (space_id),
    signature BLOB NOT NULL,
    handle    INTEGER NOT NULL,
    PRIMARY KEY (space_id, signature)
) WITHOUT ROWID;

INSERT OR IGNORE INTO message_ids SELECT space_id, signature, handle FROM messages ORDER BY handle;
"""
# Added to version 2 after its first files were written: created when missing.
_INDEXES = "CREATE INDEX IF NOT EXISTS messages_by_source ON messages (source)"

# MIGRATIONS maps a version found to the script that takes it to SCHEMA_VERSION. A
# version 1 file is refused: its messages are not bound to any state log.
MIGRATIONS: dict[int, str] = {0: _SCHEMA_V2 + _SCHEMA_V3, 2: _SCHEMA_V3}

_MESSAGE_COLUMNS = (
    "handle, source, space_id, subject, epoch, content_type, head_seq, head, iv, ciphertext, "
    "signature"
)
_EVENT_COLUMNS = "space_id, seq, prev, kind, actor, at_us, body, signature"


def migrate(db: sqlite3.Connection) -> int:
    """Bring the database to :data:`SCHEMA_VERSION` in one transaction.

    Returns the version found. Raises :class:`UnsupportedVersionError`, changing nothing,
    if the file was written by another version of spacenb.
    """
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT version FROM schema_version").fetchone()
    found = 0 if row is None else int(row[0])
    if found == SCHEMA_VERSION:
        return found
    if found not in MIGRATIONS:
        raise unsupported_schema(found, SCHEMA_VERSION, "a new data directory")
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in MIGRATIONS[found].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found


def _message(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(row[0], Envelope("msg", *row[1:]))


def _key_row(key: WrappedKey) -> tuple[Any, ...]:
    return (key.space_id, key.recipient, key.epoch, key.wrapper, key.blob, key.signature)


def _event_row(event: StateEvent) -> tuple[Any, ...]:
    return (
        event.space_id, event.seq, event.prev, event.kind, event.actor, event.at_us,
        event.body, event.signature,
    )  # fmt: skip


class SQLiteStorage(Storage):
    """:class:`Storage` in one SQLite file (WAL journal, ``synchronous=NORMAL``).

    ``path`` is the database file (``":memory:"`` for a throwaway one). Use it from one
    thread at a time: the relay keeps it on its event loop. Spaces, read on every message,
    are cached in memory; the cache is coherent because this object is the file's only
    writer.
    """

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, cached_statements=256
        )
        try:
            migrate(self._db)
        except BaseException:
            self._db.close()
            raise
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute(_INDEXES)
        self._last_handle: dict[str, int] = {}
        self._spaces: dict[str, SpaceRecord] = {}

    @classmethod
    def in_dir(cls, data_dir: str | Path) -> SQLiteStorage:
        """The storage file of a data directory."""
        return cls(Path(data_dir) / DB_FILENAME)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _tx(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any exception.

        ``durable`` commits it with ``synchronous=FULL`` (the WAL is fsynced at its
        ``COMMIT``, with every commit before it), for what a power cut must not take back:
        the state log, whose members never move their head back (a relay serving a head
        below a member's is a ``ForkError``, PROTOCOL.md "The fork rule"), and the wrapped
        keys. SQLite refuses to change the level inside a transaction, so it is set around
        it; messages keep ``NORMAL``."""
        self.commit()
        if durable:
            self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        finally:
            if durable:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def _write(self, sql: str, *args: Any) -> int:
        """One write statement as its own transaction; the number of rows it changed."""
        self.commit()
        return self._db.execute(sql, args).rowcount

    def _one(self, sql: str, *args: Any) -> Any:
        return self._db.execute(sql, args).fetchone()

    def commit(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    # -- users

    def register_user(self, user: UserEntry, now_us: int) -> tuple[UserEntry, bool]:
        created = self._write(
            "INSERT INTO users VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            user.username, user.signing_key, user.ecdh_key, now_us,
        )  # fmt: skip
        if created:
            return user, True
        (stored,) = self.get_users([user.username])
        return stored, False

    def get_users(self, usernames: Iterable[str]) -> list[UserEntry]:
        names = sorted(set(usernames))
        found: list[UserEntry] = []
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT username, signing_key, ecdh_key FROM users "
                f"WHERE username IN ({marks}) ORDER BY username",
                chunk,
            )
            found.extend(UserEntry(*row) for row in rows)
        return found

    # -- spaces and their logs

    def create_space(
        self, space: SpaceRecord, genesis: StateEvent, keys: Sequence[WrappedKey]
    ) -> None:
        with self._tx(durable=True) as db:
            if self._one("SELECT 1 FROM spaces WHERE space_id = ?", space.space_id):
                raise ChannelExistsError("a space with this id already exists")
            if space.name is not None and self.resolve_channel(space.name) is not None:
                raise ChannelExistsError(f"channel {space.name!r} already exists")
            db.execute(
                "INSERT INTO spaces (space_id, private, created_at_us) VALUES (?, ?, ?)",
                (space.space_id, int(space.private), space.created_at_us),
            )
            if space.name is not None:
                db.execute("INSERT INTO channels VALUES (?, ?)", (space.name, space.space_id))
            db.execute(
                f"INSERT INTO state_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                _event_row(genesis),
            )
            db.executemany(
                "INSERT INTO wrapped_keys VALUES (?, ?, ?, ?, ?, ?)", [_key_row(k) for k in keys]
            )

    def get_space(self, space_id: str) -> SpaceRecord | None:
        space = self._spaces.get(space_id)
        if space is None:
            row = self._one(
                "SELECT s.space_id, c.name, s.private, s.created_at_us FROM spaces s "
                "LEFT JOIN channels c USING (space_id) WHERE s.space_id = ?",
                space_id,
            )
            if row is None:
                return None
            space = self._spaces[space_id] = SpaceRecord(row[0], row[1], bool(row[2]), row[3])
        return space

    def resolve_channel(self, name: str) -> str | None:
        row = self._one("SELECT space_id FROM channels WHERE name = ?", name)
        return None if row is None else cast(str, row[0])

    def list_public_channels(self) -> list[ChannelEntry]:
        rows = self._db.execute(
            "SELECT c.name, c.space_id FROM channels c JOIN spaces s USING (space_id) "
            "WHERE s.private = 0 ORDER BY c.name"
        )
        return [ChannelEntry(*row) for row in rows]

    def public_channels_page(self, after: str | None, limit: int) -> list[ChannelEntry]:
        rows = self._db.execute(
            "SELECT c.name, c.space_id FROM channels c JOIN spaces s USING (space_id) "
            "WHERE s.private = 0 AND c.name > ? ORDER BY c.name LIMIT ?",
            (after if after is not None else "", limit),
        )
        return [ChannelEntry(*row) for row in rows]

    def channels_named_under(self, prefix: str) -> list[str]:
        # Names sort by code point; every name starting with prefix lies in
        # [prefix, prefix + U+10FFFF).
        rows = self._db.execute(
            "SELECT c.space_id FROM channels c JOIN spaces s USING (space_id) "
            "WHERE c.name >= ? AND c.name < ? ORDER BY s.created_at_us, c.space_id",
            (prefix, prefix + "\U0010ffff"),
        )
        return [row[0] for row in rows]

    def state_events(
        self, space_id: str, since: int = 0, limit: int | None = None
    ) -> list[StateEvent]:
        rows = self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM state_events WHERE space_id = ? AND seq >= ? "
            "ORDER BY seq LIMIT ?",
            (space_id, since, -1 if limit is None else limit),
        )
        return [StateEvent(*row) for row in rows]

    def append_event(
        self,
        event: StateEvent,
        *,
        keys: Sequence[WrappedKey] = (),
        join: PendingJoin | None = None,
        close_join: str | None = None,
        delete_handle: int | None = None,
        now_us: int = 0,
    ) -> None:
        with self._tx(durable=True) as db:
            try:
                db.execute(
                    f"INSERT INTO state_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    _event_row(event),
                )
            except sqlite3.IntegrityError:
                raise StaleStateError(f"the log already has an event at seq {event.seq}") from None
            if keys:
                db.executemany(
                    "INSERT INTO wrapped_keys VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [_key_row(k) for k in keys],
                )
            if join is not None:
                db.execute(
                    "INSERT INTO join_requests VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (join.space_id, join.username, join.role, now_us),
                )
            if close_join is not None:
                db.execute(
                    "DELETE FROM join_requests WHERE space_id = ? AND username = ?",
                    (event.space_id, close_join),
                )
            if delete_handle is not None:
                deleted = db.execute(
                    "DELETE FROM messages WHERE space_id = ? AND handle = ?",
                    (event.space_id, delete_handle),
                ).rowcount
                if deleted:
                    db.execute(
                        "UPDATE spaces SET deleted_upto = max(deleted_upto, ?) WHERE space_id = ?",
                        (delete_handle, event.space_id),
                    )

    # -- join requests and wrapped keys

    def join_requests(self, space_id: str | None = None) -> list[PendingJoin]:
        rows = self._db.execute(
            "SELECT space_id, username, role FROM join_requests "
            "WHERE ? IS NULL OR space_id = ? ORDER BY created_at_us, username",
            (space_id, space_id),
        )
        return [PendingJoin(*row) for row in rows]

    def has_join_request(self, space_id: str, username: str) -> bool:
        row = self._one(
            "SELECT 1 FROM join_requests WHERE space_id = ? AND username = ?", space_id, username
        )
        return row is not None

    def add_keys(self, keys: Sequence[WrappedKey], admitted: str | None = None) -> None:
        with self._tx(durable=True) as db:
            db.executemany(
                "INSERT INTO wrapped_keys VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [_key_row(k) for k in keys],
            )
            if admitted is not None:
                db.executemany(
                    "DELETE FROM join_requests WHERE space_id = ? AND username = ?",
                    {(k.space_id, admitted) for k in keys},
                )

    def keys_for(self, space_id: str, recipient: str) -> list[WrappedKey]:
        rows = self._db.execute(
            "SELECT space_id, epoch, recipient, wrapper, blob, signature FROM wrapped_keys "
            "WHERE space_id = ? AND recipient = ? ORDER BY epoch",
            (space_id, recipient),
        )
        return [WrappedKey(*row) for row in rows]

    # -- messages
    def _newest_handle(self, space_id: str) -> int:
        last = self._last_handle.get(space_id)
        if last is None:
            row = self._one(
                "SELECT max(s.deleted_upto, coalesce(max(m.handle), 0)) FROM spaces s "
                "LEFT JOIN messages m USING (space_id) WHERE s.space_id = ?",
                space_id,
            )
            last = int(row[0] or 0)
        return last

    def message_handle(self, space_id: str, signature: bytes) -> int | None:
        row = self._one(
            "SELECT handle FROM message_ids WHERE space_id = ? AND signature = ?",
            space_id, signature,
        )  # fmt: skip
        return None if row is None else int(row[0])

    def add_message(self, envelope: Envelope, now_us: int) -> int:
        handle = next_handle(now_us, self._newest_handle(envelope.target))
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
        recorded = self._db.execute(
            "INSERT INTO message_ids VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (envelope.target, envelope.signature, handle),
        ).rowcount
        if not recorded:  # a resend: the handle it was stored under
            known = self.message_handle(envelope.target, envelope.signature)
            assert known is not None
            return StoredBefore(known)
        self._db.execute(
            f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                handle, envelope.source, envelope.target, envelope.subject, envelope.epoch,
                envelope.content_type, envelope.head_seq, envelope.head, envelope.iv,
                envelope.ciphertext, envelope.signature,
            ),
        )  # fmt: skip
        self._last_handle[envelope.target] = handle
        return handle

    def message_usage(self, username: str) -> tuple[int, int]:
        row = self._one(
            "SELECT count(*), coalesce(sum(length(ciphertext)), 0) FROM messages WHERE source = ?",
            username,
        )
        return int(row[0]), int(row[1])

    def message_source(self, space_id: str, handle: int) -> str | None:
        row = self._one(
            "SELECT source FROM messages WHERE space_id = ? AND handle = ?", space_id, handle
        )
        return None if row is None else cast(str, row[0])

    def replace_message(self, handle: int, envelope: Envelope) -> bool:
        with self._tx() as db:
            changed = db.execute(
                "UPDATE messages SET source = ?, subject = ?, epoch = ?, content_type = ?, "
                "head_seq = ?, head = ?, iv = ?, ciphertext = ?, signature = ? "
                "WHERE space_id = ? AND handle = ?",
                (
                    envelope.source, envelope.subject, envelope.epoch, envelope.content_type,
                    envelope.head_seq, envelope.head, envelope.iv, envelope.ciphertext,
                    envelope.signature, envelope.target, handle,
                ),
            ).rowcount  # fmt: skip
            if changed:
                db.execute(
                    "INSERT INTO message_ids VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (envelope.target, envelope.signature, handle),
                )
        return bool(changed)

    def history(
        self, space_id: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], int | None]:
        rows = self._db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE space_id = ? AND handle < ? "
            "ORDER BY handle DESC LIMIT ?",
            (space_id, before if before is not None else 2**63 - 1, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        page = [_message(row) for row in reversed(rows[:limit])]
        return page, (page[0].handle if more else None)
