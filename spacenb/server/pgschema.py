"""The PostgreSQL schema of :class:`~spacenb.server.postgres.PostgresStorage`: its tables,
its versions and the migration that brings a database to the current one.

The schema is versioned as SQLite's is (``schema_version``; :func:`migrate` applies the
missing steps of :data:`MIGRATIONS` in one transaction, under an advisory lock so two relays
starting together migrate once) and a database of another version, or one holding tables
of something else, is refused untouched. PROTOCOL.md ("Server operation") summarises the
tables.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ..exceptions import UnsupportedVersionError
from .storage import unsupported_schema

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

# The same numbering as SQLite's: version 2 is protocol v2's schema (there never was a
# PostgreSQL version 1); version 3 adds ``message_ids`` (``send`` is idempotent by
# signature).
SCHEMA_VERSION = 3

# Text is compared byte by byte (COLLATE "C"), as SQLite does: names sort the same on
# both. ``subject`` and ``content_type`` are free text a client chooses, stored as UTF-8
# bytes because PostgreSQL text cannot hold U+0000.
_SCHEMA_V2 = """
CREATE TABLE users (
    username      TEXT COLLATE "C" PRIMARY KEY,
    signing_key   TEXT COLLATE "C" NOT NULL,
    ecdh_key      TEXT COLLATE "C" NOT NULL,
    created_at_us BIGINT NOT NULL
);

CREATE TABLE spaces (
    space_id      TEXT COLLATE "C" PRIMARY KEY,
    private       BOOLEAN NOT NULL,
    last_handle   BIGINT NOT NULL DEFAULT 0,  -- the newest handle ever handed out
    created_at_us BIGINT NOT NULL
);

CREATE TABLE channels (
    name     TEXT COLLATE "C" PRIMARY KEY,
    space_id TEXT COLLATE "C" NOT NULL UNIQUE REFERENCES spaces (space_id)
);

CREATE TABLE state_events (
    space_id  TEXT COLLATE "C" NOT NULL REFERENCES spaces (space_id),
    seq       BIGINT NOT NULL,
    prev      BYTEA NOT NULL,
    kind      TEXT COLLATE "C" NOT NULL,
    actor     TEXT COLLATE "C" NOT NULL,
    at_us     BIGINT NOT NULL,
    body      BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    PRIMARY KEY (space_id, seq)
);

CREATE TABLE wrapped_keys (
    space_id  TEXT COLLATE "C" NOT NULL REFERENCES spaces (space_id),
    recipient TEXT COLLATE "C" NOT NULL,
    epoch     BIGINT NOT NULL,
    wrapper   TEXT COLLATE "C" NOT NULL,
    blob      BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    PRIMARY KEY (space_id, recipient, epoch)
);

CREATE TABLE join_requests (
    space_id      TEXT COLLATE "C" NOT NULL REFERENCES spaces (space_id),
    username      TEXT COLLATE "C" NOT NULL,
    role          TEXT COLLATE "C" NOT NULL,
    created_at_us BIGINT NOT NULL,
    PRIMARY KEY (space_id, username)
);

CREATE TABLE messages (
    space_id     TEXT COLLATE "C" NOT NULL REFERENCES spaces (space_id),
    handle       BIGINT NOT NULL,
    source       TEXT COLLATE "C" NOT NULL,
    subject      BYTEA NOT NULL,
    epoch        BIGINT NOT NULL,
    content_type BYTEA NOT NULL,
    head_seq     BIGINT NOT NULL,
    head         BYTEA NOT NULL,
    iv           BYTEA NOT NULL,
    ciphertext   BYTEA NOT NULL,
    signature    BYTEA NOT NULL,
    PRIMARY KEY (space_id, handle)
);

CREATE INDEX messages_by_source ON messages (source);

CREATE TABLE service_secrets (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    sealed BYTEA NOT NULL  -- AES-256-GCM under the service key, never in the clear
);
"""

# As SQLite's: every signature a space stored a message under, kept when it is edited or
# deleted, so that a resend of one envelope is stored once. A send's row is written with
# its space's ``spaces`` row locked (the group commit's FOR NO KEY UPDATE, or the
# counter's UPDATE), so a batch that finds no row for a signature is alone in storing it.
_SCHEMA_V3 = """
CREATE TABLE message_ids (
    space_id  TEXT COLLATE "C" NOT NULL REFERENCES spaces (space_id),
    signature BYTEA NOT NULL,
    handle    BIGINT NOT NULL,
    PRIMARY KEY (space_id, signature)
);

INSERT INTO message_ids
SELECT DISTINCT ON (space_id, signature) space_id, signature, handle FROM messages
ORDER BY space_id, signature, handle;
"""

# MIGRATIONS maps a version found to the script that takes it to SCHEMA_VERSION.
MIGRATIONS: dict[int, str] = {0: _SCHEMA_V2 + _SCHEMA_V3, 2: _SCHEMA_V3}
# Added to version 2 after its first databases were made: created when missing.
INDEXES = "CREATE INDEX IF NOT EXISTS messages_by_source ON messages (source)"
_TABLES = ("users", "spaces", "channels", "state_events", "wrapped_keys", "join_requests",
           "messages", "message_ids", "service_secrets")  # fmt: skip
MIGRATION_LOCK = 0x7370_6163_656E_6231  # pg_advisory_xact_lock key: "spacenb1"


def _exists(db: psycopg.Connection[Any], table: str) -> bool:
    row = db.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def migrate(db: psycopg.Connection[Any]) -> int:
    """Bring the database to :data:`SCHEMA_VERSION` in one transaction (``db`` is in
    autocommit mode), under an advisory lock so that concurrent relays migrate once.

    Returns the version found. Raises :class:`UnsupportedVersionError`, changing nothing,
    if the database was written by another version of spacenb or holds tables of
    something else.
    """
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        if _exists(db, "schema_version"):
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            found = 0 if row is None or row[0] is None else int(row[0])
        else:
            found = 0
            others = [t for t in _TABLES if _exists(db, t)]
            if others:
                raise UnsupportedVersionError(
                    f"the database has tables named {', '.join(others)} but no spacenb "
                    "schema_version: it is not a spacenb database (nothing was changed)"
                )
        if found == SCHEMA_VERSION:
            return found
        if found not in MIGRATIONS:
            raise unsupported_schema(found, SCHEMA_VERSION, "a new database")
        db.execute(MIGRATIONS[found])
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
    return found
