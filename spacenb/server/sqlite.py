"""The SQLite implementation of :class:`~spacenb.server.storage.Storage`.

One file (``spacenb.sqlite3`` in the data directory), WAL journal, ``synchronous=NORMAL``
(a commit survives a crash of the process; a power cut may lose the last few). The schema
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

from ..exceptions import ChannelExistsError, InviteError, KeyUnavailableError, ServerError
from ..protocol.envelope import Envelope
from ..protocol.frames import ChannelEntry, LinkInfo, MemberEntry, Role, StoredMessage, UserEntry
from ..protocol.wrap import WrappedKey
from .storage import DB_FILENAME, PendingJoin, SpaceRecord, Storage, token_hash

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStorage", "migrate"]

SCHEMA_VERSION = 1

_SCHEMA_V1 = """
CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    signing_key   TEXT NOT NULL,
    ecdh_key      TEXT NOT NULL,
    created_at_us INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE spaces (
    space_id      TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    policy        TEXT NOT NULL CHECK (policy IN ('static', 'rotate')),
    private       INTEGER NOT NULL,
    manual_admit  INTEGER NOT NULL,
    epoch         INTEGER NOT NULL,
    deleted_upto  INTEGER NOT NULL DEFAULT 0,  -- highest handle ever deleted
    created_at_us INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE channels (
    name     TEXT PRIMARY KEY,
    space_id TEXT NOT NULL UNIQUE REFERENCES spaces (space_id)
) WITHOUT ROWID;

CREATE TABLE memberships (
    space_id     TEXT NOT NULL REFERENCES spaces (space_id),
    username     TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    joined_at_us INTEGER NOT NULL,
    PRIMARY KEY (space_id, username)
) WITHOUT ROWID;
CREATE INDEX memberships_by_user ON memberships (username);

CREATE TABLE allowlist (
    space_id TEXT NOT NULL REFERENCES spaces (space_id),
    username TEXT NOT NULL,
    PRIMARY KEY (space_id, username)
) WITHOUT ROWID;

CREATE TABLE invite_links (
    link_id       TEXT PRIMARY KEY,
    token_hash    BLOB NOT NULL UNIQUE,
    space_id      TEXT NOT NULL REFERENCES spaces (space_id),
    role          TEXT NOT NULL CHECK (role IN ('editor', 'viewer')),
    expires_at_us INTEGER,
    max_uses      INTEGER,
    uses          INTEGER NOT NULL DEFAULT 0,
    revoked       INTEGER NOT NULL DEFAULT 0,
    created_at_us INTEGER NOT NULL
);
CREATE INDEX invite_links_by_space ON invite_links (space_id, created_at_us);

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
    iv           BLOB NOT NULL,
    ciphertext   BLOB NOT NULL,
    signature    BLOB NOT NULL,
    PRIMARY KEY (space_id, handle)
);
"""

# MIGRATIONS[i] takes the schema from version i to version i + 1.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1,)

_SPACE_COLUMNS = (
    "s.space_id, s.owner, s.policy, s.private, s.manual_admit, c.name, s.epoch, s.created_at_us"
)
_LINK_COLUMNS = "link_id, space_id, role, expires_at_us, max_uses, uses, revoked, created_at_us"
_MESSAGE_COLUMNS = (
    "handle, source, space_id, subject, epoch, content_type, iv, ciphertext, signature"
)


def migrate(db: sqlite3.Connection) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`, one transaction per step.

    Returns the version found. Raises :class:`ServerError` if the file was written by a
    newer spacenb.
    """
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT version FROM schema_version").fetchone()
    found = 0 if row is None else int(row[0])
    if found > SCHEMA_VERSION:
        raise ServerError(
            f"the database has schema version {found}; this spacenb knows up to "
            f"{SCHEMA_VERSION}: upgrade spacenb"
        )
    for version in range(found, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return found


def _space(row: Sequence[Any]) -> SpaceRecord:
    return SpaceRecord(row[0], row[1], row[2], bool(row[3]), bool(row[4]), row[5], row[6], row[7])


def _link(row: Sequence[Any]) -> LinkInfo:
    return LinkInfo(
        row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7], token=None
    )


def _message(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(
        row[0], Envelope("msg", row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8])
    )


def _key_row(key: WrappedKey) -> tuple[Any, ...]:
    return (key.space_id, key.recipient, key.epoch, key.wrapper, key.blob, key.signature)


class SQLiteStorage(Storage):
    """:class:`Storage` in one SQLite file (WAL journal, ``synchronous=NORMAL``).

    ``path`` is the database file (``":memory:"`` for a throwaway one). Use it from one
    thread at a time: the relay keeps it on its event loop. Spaces and roles, read on
    every message, are cached in memory; the cache is coherent because this object is
    the file's only writer.
    """

    ROLE_CACHE_SIZE = 100_000

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, cached_statements=256
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        migrate(self._db)
        self._last_handle: dict[str, int] = {}
        self._spaces: dict[str, SpaceRecord] = {}
        self._roles: dict[tuple[str, str], Role | None] = {}

    @classmethod
    def in_dir(cls, data_dir: str | Path) -> SQLiteStorage:
        """The storage file of a data directory."""
        return cls(Path(data_dir) / DB_FILENAME)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any exception."""
        self.commit()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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

    # -- spaces

    def create_space(
        self, space: SpaceRecord, members: Sequence[MemberEntry], keys: Sequence[WrappedKey]
    ) -> None:
        for member in members:
            self._roles.pop((space.space_id, member.member_id), None)
        with self._tx() as db:
            if self._one("SELECT 1 FROM spaces WHERE space_id = ?", space.space_id):
                raise ChannelExistsError("a space with this id already exists")
            if space.name is not None and self.resolve_channel(space.name) is not None:
                raise ChannelExistsError(f"channel {space.name!r} already exists")
            db.execute(
                "INSERT INTO spaces (space_id, owner, policy, private, manual_admit, epoch, "
                "created_at_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    space.space_id, space.owner, space.policy, int(space.private),
                    int(space.manual_admit), space.epoch, space.created_at_us,
                ),
            )  # fmt: skip
            if space.name is not None:
                db.execute("INSERT INTO channels VALUES (?, ?)", (space.name, space.space_id))
            db.executemany(
                "INSERT INTO memberships VALUES (?, ?, ?, ?)",
                [(space.space_id, m.member_id, m.role, space.created_at_us) for m in members],
            )
            db.executemany(
                "INSERT INTO wrapped_keys VALUES (?, ?, ?, ?, ?, ?)", [_key_row(k) for k in keys]
            )

    def get_space(self, space_id: str) -> SpaceRecord | None:
        space = self._spaces.get(space_id)
        if space is None:
            row = self._one(
                f"SELECT {_SPACE_COLUMNS} FROM spaces s LEFT JOIN channels c USING (space_id) "
                "WHERE s.space_id = ?",
                space_id,
            )
            if row is None:
                return None
            space = self._spaces[space_id] = _space(row)
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

    def advance_epoch(self, space_id: str, epoch: int, keys: Sequence[WrappedKey]) -> None:
        self._spaces.pop(space_id, None)
        with self._tx() as db:
            moved = db.execute(
                "UPDATE spaces SET epoch = ? WHERE space_id = ? AND epoch = ?",
                (epoch, space_id, epoch - 1),
            ).rowcount
            if not moved:
                raise KeyUnavailableError(f"epoch {epoch} is not the space's next epoch")
            db.executemany(
                "INSERT INTO wrapped_keys VALUES (?, ?, ?, ?, ?, ?)", [_key_row(k) for k in keys]
            )

    # -- memberships

    def get_role(self, space_id: str, username: str) -> Role | None:
        key = (space_id, username)
        try:
            return self._roles[key]
        except KeyError:
            pass
        row = self._one(
            "SELECT role FROM memberships WHERE space_id = ? AND username = ?", space_id, username
        )
        if len(self._roles) >= self.ROLE_CACHE_SIZE:
            self._roles.clear()
        role = self._roles[key] = None if row is None else cast(Role, row[0])
        return role

    def list_members(self, space_id: str) -> list[MemberEntry]:
        rows = self._db.execute(
            "SELECT username, role FROM memberships WHERE space_id = ? ORDER BY username",
            (space_id,),
        )
        return [MemberEntry(*row) for row in rows]

    def list_member_users(self, space_id: str) -> list[tuple[MemberEntry, UserEntry]]:
        rows = self._db.execute(
            "SELECT m.username, m.role, u.signing_key, u.ecdh_key FROM memberships m "
            "JOIN users u USING (username) WHERE m.space_id = ? ORDER BY m.username",
            (space_id,),
        )
        return [(MemberEntry(name, role), UserEntry(name, sig, dh)) for name, role, sig, dh in rows]

    def set_role(self, space_id: str, username: str, role: Role) -> bool:
        self._roles.pop((space_id, username), None)
        return bool(
            self._write(
                "UPDATE memberships SET role = ? WHERE space_id = ? AND username = ?",
                role,
                space_id,
                username,
            )
        )

    def remove_member(self, space_id: str, username: str, *, disallow: bool = False) -> bool:
        self._roles.pop((space_id, username), None)
        with self._tx() as db:
            db.execute(
                "DELETE FROM join_requests WHERE space_id = ? AND username = ?",
                (space_id, username),
            )
            if disallow:
                db.execute(
                    "DELETE FROM allowlist WHERE space_id = ? AND username = ?",
                    (space_id, username),
                )
            return bool(
                db.execute(
                    "DELETE FROM memberships WHERE space_id = ? AND username = ?",
                    (space_id, username),
                ).rowcount
            )

    def allow(self, space_id: str, username: str) -> None:
        self._write(
            "INSERT INTO allowlist VALUES (?, ?) ON CONFLICT DO NOTHING", space_id, username
        )

    def is_allowed(self, space_id: str, username: str) -> bool:
        row = self._one(
            "SELECT 1 FROM allowlist WHERE space_id = ? AND username = ?", space_id, username
        )
        return row is not None

    def join_space(
        self, space_id: str, username: str, role: Role, now_us: int, token: str | None = None
    ) -> Role:
        self._roles.pop((space_id, username), None)
        with self._tx() as db:
            if token is not None:
                role = self._redeem(space_id, token, now_us)
            db.execute(
                "INSERT INTO memberships VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (space_id, username, role, now_us),
            )
            db.execute(
                "INSERT INTO join_requests VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (space_id, username, role, now_us),
            )
        return role

    def _redeem(self, space_id: str, token: str, now_us: int) -> Role:
        """Use up one redemption of a link, inside the caller's transaction."""
        digest = token_hash(token)
        row = self._one(
            "SELECT role, revoked, expires_at_us, max_uses, uses FROM invite_links "
            "WHERE token_hash = ? AND space_id = ?",
            digest,
            space_id,
        )
        if row is None:
            raise InviteError("unknown invite link")
        role, revoked, expires_at_us, max_uses, uses = row
        if revoked:
            raise InviteError("this invite link has been revoked")
        if expires_at_us is not None and expires_at_us <= now_us:
            raise InviteError("this invite link has expired")
        used = self._db.execute(
            "UPDATE invite_links SET uses = uses + 1 WHERE token_hash = ? "
            "AND (max_uses IS NULL OR uses < max_uses)",
            (digest,),
        ).rowcount
        if not used:
            raise InviteError(f"this invite link has been used {uses} of {max_uses} times")
        return cast(Role, role)

    def pending_joins(self, member: str, space_id: str | None = None) -> list[PendingJoin]:
        rows = self._db.execute(
            "SELECT j.space_id, j.username, j.role FROM join_requests j "
            "JOIN memberships m ON m.space_id = j.space_id AND m.username = ? "
            "WHERE ? IS NULL OR j.space_id = ? ORDER BY j.created_at_us, j.username",
            (member, space_id, space_id),
        )
        return [PendingJoin(*row) for row in rows]

    def has_pending_join(self, space_id: str, username: str) -> bool:
        row = self._one(
            "SELECT 1 FROM join_requests WHERE space_id = ? AND username = ?", space_id, username
        )
        return row is not None

    def add_keys(self, keys: Sequence[WrappedKey], admitted: str | None = None) -> None:
        with self._tx() as db:
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

    # -- invite links

    def create_link(self, link: LinkInfo, token: str) -> None:
        self._write(
            f"INSERT INTO invite_links ({_LINK_COLUMNS}, token_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            link.link_id, link.space_id, link.role, link.expires_at_us, link.max_uses,
            link.uses, int(link.revoked), link.created_at_us, token_hash(token),
        )  # fmt: skip

    def list_links(self, space_id: str) -> list[LinkInfo]:
        rows = self._db.execute(
            f"SELECT {_LINK_COLUMNS} FROM invite_links WHERE space_id = ? "
            "ORDER BY created_at_us, link_id",
            (space_id,),
        )
        return [_link(row) for row in rows]

    def revoke_link(self, space_id: str, token: str) -> bool:
        return bool(
            self._write(
                "UPDATE invite_links SET revoked = 1 WHERE token_hash = ? AND space_id = ?",
                token_hash(token),
                space_id,
            )
        )

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

    def add_message(self, envelope: Envelope, now_us: int) -> int:
        last = self._newest_handle(envelope.target)
        handle = now_us if now_us > last else last + 1
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
        self._db.execute(
            f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                handle, envelope.source, envelope.target, envelope.subject, envelope.epoch,
                envelope.content_type, envelope.iv, envelope.ciphertext, envelope.signature,
            ),
        )  # fmt: skip
        self._last_handle[envelope.target] = handle
        return handle

    def message_source(self, space_id: str, handle: int) -> str | None:
        row = self._one(
            "SELECT source FROM messages WHERE space_id = ? AND handle = ?", space_id, handle
        )
        return None if row is None else cast(str, row[0])

    def replace_message(self, handle: int, envelope: Envelope) -> bool:
        return bool(
            self._write(
                "UPDATE messages SET source = ?, subject = ?, epoch = ?, content_type = ?, "
                "iv = ?, ciphertext = ?, signature = ? WHERE space_id = ? AND handle = ?",
                envelope.source,
                envelope.subject,
                envelope.epoch,
                envelope.content_type,
                envelope.iv,
                envelope.ciphertext,
                envelope.signature,
                envelope.target,
                handle,
            )
        )

    def delete_message(self, space_id: str, handle: int) -> bool:
        with self._tx() as db:
            deleted = db.execute(
                "DELETE FROM messages WHERE space_id = ? AND handle = ?", (space_id, handle)
            ).rowcount
            if deleted:
                db.execute(
                    "UPDATE spaces SET deleted_upto = max(deleted_upto, ?) WHERE space_id = ?",
                    (handle, space_id),
                )
        return bool(deleted)

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
