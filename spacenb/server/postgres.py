"""The PostgreSQL implementation of :class:`~spacenb.server.storage.Storage`, which lets
several relays serve one set of users and spaces.

It behaves as :class:`~spacenb.server.sqlite.SQLiteStorage` does (the same test suite runs
on both), with what one shared database must add:

- **Handles** strictly increase per space across relays: each space's row in ``spaces``
  holds ``last_handle``, and a message takes ``max(now, last_handle + 1)`` in the same
  statement that stores it. That row stays locked until the message's batch commits, so
  within a space commits happen in handle order (a reader that has seen handle ``h``
  never later finds a smaller one). Used alone, a batch already holding other spaces
  does not wait for a row another relay holds (``SKIP LOCKED``): it commits first, then
  waits, so two relays never wait on each other. A relay's cluster sets :attr:`stage`:
  its messages are then committed by :mod:`spacenb.server.pgcommit` on a thread of its
  own, a batch in one statement, locking in sorted order.
- **State-log appends** are refused atomically: ``(space_id, seq)`` is the primary key of
  ``state_events``, so of two relays appending at one seq (two joiners redeeming the last
  use of an invite link, say) exactly one commits and the other raises
  :class:`StaleStateError` with none of its effects stored.
- **The service's secrets** (app key, keeper and relay identities) are kept here only
  sealed (see :mod:`spacenb.server.service`).
- **Notifications:** every write that a relay pushes to subscribers also sends a
  ``NOTIFY`` on :data:`NOTIFY_CHANNEL` in the same transaction (so only on commit), which
  the other relays' listeners turn into pushes (:mod:`spacenb.server.cluster`; PROTOCOL.md,
  "One service on several relays", has the payloads).

The schema, its versions and their migration are in :mod:`spacenb.server.pgschema` (a
database of another version, or one holding tables of something else, is refused untouched).

Why psycopg 3, not asyncpg: :class:`Storage` is synchronous and the relay calls it on its
event loop, each request handled in one synchronous step with its answer and events queued
in order and one group commit per loop turn (:mod:`spacenb.server.relay`). psycopg's
synchronous connection keeps that contract unchanged, so the relay and its handlers stay
as they are and both backends share every rule. asyncpg is async-only: using it would
mean making every storage call and every handler a coroutine: a rework of the relay
core, not a storage backend. psycopg 3 also has an async
connection with ``LISTEN``/``NOTIFY`` (for delivery across relays) in the same package.
A query costs a loopback round trip (~0.1 ms here, 1-5 ms for a commit that waits for
the disk), where SQLite takes microseconds: so the message path (the group commit and
the read-back after it) does not run here but on the commit thread of
:mod:`spacenb.server.pgcommit`, and the loop keeps reading while a batch commits; the
other requests, which are rarer, still make their round trips on the loop.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import psycopg
from psycopg import pq

from ..exceptions import ChannelExistsError, ChannelNotFoundError, ServerError, StaleStateError
from ..protocol.envelope import Envelope
from ..protocol.frames import ChannelEntry, StoredMessage, UserEntry
from ..protocol.statelog import StateEvent
from ..protocol.wrap import WrappedKey
from .pgschema import INDEXES, MIGRATIONS, SCHEMA_VERSION, migrate
from .storage import PendingJoin, SpaceRecord, Storage, StoredBefore

__all__ = [
    "MIGRATIONS",
    "NOTIFY_CHANNEL",
    "SCHEMA_VERSION",
    "PostgresStorage",
    "check_database_url",
    "migrate",
    "redacted_url",
]

# No relay holds a row lock longer than one event-loop turn, so a longer wait means relays
# stall each other (two relays on one event loop, say): fail that request instead.
LOCK_TIMEOUT = "10s"

# LISTEN/NOTIFY channel of the relays of one database; payloads are
# "<origin> <kind> <space_id> <argument>" (PROTOCOL.md, "One service on several relays").
NOTIFY_CHANNEL = "spacenb"

_EVENT_COLUMNS = "space_id, seq, prev, kind, actor, at_us, body, signature"
MESSAGE_COLUMNS = (
    "handle, source, space_id, subject, epoch, content_type, head_seq, head, iv, ciphertext, "
    "signature"
)
# One statement takes the space's next handle and stores the message under it. The
# first form waits for a space row another transaction holds; the second skips it (no
# row comes back) so that a batch holding other spaces can commit before it waits.
_ADD_MESSAGE = """
WITH counter AS (
    UPDATE spaces SET last_handle = GREATEST(last_handle + 1, %(now_us)s)
    WHERE space_id = %(space_id)s {skip_locked}
    RETURNING last_handle
), recorded AS (
    INSERT INTO message_ids (space_id, signature, handle)
    SELECT %(space_id)s, %(signature)s, last_handle FROM counter
    ON CONFLICT DO NOTHING
    RETURNING handle
), stored AS (
    INSERT INTO messages (space_id, handle, source, subject, epoch, content_type, head_seq,
                          head, iv, ciphertext, signature)
    SELECT %(space_id)s, handle, %(source)s, %(subject)s, %(epoch)s, %(content_type)s,
           %(head_seq)s, %(head)s, %(iv)s, %(ciphertext)s, %(signature)s
    FROM recorded
    RETURNING handle
)
SELECT handle, pg_notify(%(channel)s, %(note)s || handle) FROM stored
"""
_ADD_MESSAGE_WAITING = _ADD_MESSAGE.format(skip_locked="")
_ADD_MESSAGE_UNLESS_LOCKED = _ADD_MESSAGE.format(
    skip_locked="AND space_id IN (SELECT space_id FROM spaces WHERE space_id = %(space_id)s "
    "FOR NO KEY UPDATE SKIP LOCKED)"
)


def check_database_url(url: str) -> str:
    """``url`` if it is a ``postgresql://`` (or ``postgres://``) URL, else ``ValueError``."""
    if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(
            "database= takes a postgresql:// URL (without it, the relay keeps SQLite in its "
            "data directory)"
        )
    return url


def redacted_url(url: str) -> str:
    """``url`` with any password taken out, for logs and banners."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + host))


def _storable(text: str) -> bool:
    """Whether ``text`` can be a key in PostgreSQL (no U+0000; nothing stored has one)."""
    return "\x00" not in text


def stored_message(row: Sequence[Any]) -> StoredMessage:
    handle, source, space_id, subject, epoch, content_type, *rest = row
    envelope = Envelope(
        "msg", source, space_id, subject.decode(), epoch, content_type.decode(), *rest
    )
    return StoredMessage(handle, envelope)


def _key_row(key: WrappedKey) -> tuple[Any, ...]:
    return (key.space_id, key.recipient, key.epoch, key.wrapper, key.blob, key.signature)


def _event_row(event: StateEvent) -> tuple[Any, ...]:
    return (
        event.space_id, event.seq, event.prev, event.kind, event.actor, event.at_us,
        event.body, event.signature,
    )  # fmt: skip


def _message_params(envelope: Envelope, now_us: int) -> dict[str, Any]:
    return {
        "now_us": now_us, "space_id": envelope.target, "source": envelope.source,
        "subject": envelope.subject.encode(), "epoch": envelope.epoch,
        "content_type": envelope.content_type.encode(), "head_seq": envelope.head_seq,
        "head": envelope.head, "iv": envelope.iv, "ciphertext": envelope.ciphertext,
        "signature": envelope.signature,
    }  # fmt: skip


class PostgresStorage(Storage):
    """:class:`Storage` in a PostgreSQL database, shareable by several relays.

    ``url`` is a ``postgresql://`` URL (a password is better kept in ``PGPASSWORD`` or
    ``~/.pgpass``, which libpq reads). Use it from one thread at a time: the relay keeps
    it on its event loop, over one connection. A connection found broken is opened again
    on the next call; the open message batch, if any, is then lost, and :meth:`commit`
    says so. Raises :class:`ServerError` if the database cannot be reached,
    :class:`UnsupportedVersionError` if it holds another schema.
    """

    def __init__(self, url: str, *, connect_timeout: float = 10) -> None:
        self._url = check_database_url(url)
        self._connect_timeout = connect_timeout
        self._db = self._connect()
        try:
            migrate(self._db)
            self._db.execute(INDEXES)
        except BaseException:
            self._db.close()
            raise
        self._batch = 0  # messages in the open, uncommitted batch
        self._lost: str | None = None  # why the batch was lost, until commit() reports it
        self._spaces: dict[str, SpaceRecord] = {}  # immutable once created: safe to cache
        # Names this storage's writes in their notifications, so that its own relay can
        # tell them from other relays' (it has pushed them already).
        self.origin = os.urandom(6).hex()
        # Set by the cluster: messages are then staged for its commit thread
        # (:mod:`spacenb.server.pgcommit`) instead of stored on this connection.
        self.stage: Callable[[Envelope, int], None] | None = None
        self.stage_resend: Callable[[Envelope], None] | None = None

    def notify(self, db: psycopg.Connection[Any], kind: str, space_id: str, arg: object) -> None:
        """Send a notification to the other relays with the open transaction (on commit),
        or at once outside one."""
        payload = f"{self.origin} {kind} {space_id} {arg}"
        db.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))

    def _notify_keys(self, db: psycopg.Connection[Any], keys: Sequence[WrappedKey]) -> None:
        first: dict[tuple[str, str], int] = {}
        for k in keys:
            at = (k.space_id, k.recipient)
            first[at] = min(first.get(at, k.epoch), k.epoch)
        payloads = [f"{self.origin} k {s} {e} {r}" for (s, r), e in sorted(first.items())]
        db.execute(
            "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (NOTIFY_CHANNEL, payloads)
        )

    def __repr__(self) -> str:
        return f"PostgresStorage({redacted_url(self._url)!r})"

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            db = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name="spacenb-relay",
            )
            db.execute("SELECT set_config('lock_timeout', %s, false)", (LOCK_TIMEOUT,))
            return db
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServerError(f"cannot connect to {redacted_url(self._url)}: {reason}") from None

    def _conn(self) -> psycopg.Connection[Any]:
        """The connection, opened again if it broke (losing the open batch)."""
        if self._db.broken or self._db.closed:
            if self._batch:
                self._lost = f"the database connection broke with {self._batch} messages unsaved"
                self._batch = 0
            with contextlib.suppress(psycopg.Error):
                self._db.close()
            self._db = self._connect()
        return self._db

    def close(self) -> None:
        self._db.close()

    # -- transactions

    def commit(self) -> None:
        lost, self._lost = self._lost, None
        if lost is not None:
            self.rollback()
            raise ServerError(lost)
        db = self._db
        status = db.info.transaction_status
        if status == pq.TransactionStatus.IDLE:
            self._batch = 0
            return
        if status != pq.TransactionStatus.INTRANS:
            # a statement of the batch failed (or the connection did): COMMIT would only
            # roll it back in silence
            self.rollback()
            raise ServerError("a statement of the message batch failed: nothing of it is stored")
        try:
            db.execute("COMMIT")
        finally:
            self._batch = 0

    def rollback(self) -> None:
        self._batch = 0
        if self._db.info.transaction_status != pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                self._db.execute("ROLLBACK")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """One write transaction: committed on success, rolled back on any exception."""
        self.commit()
        db = self._conn()
        db.execute("BEGIN")
        try:
            yield db
        except BaseException:
            self.rollback()
            raise
        db.execute("COMMIT")

    def _write(self, sql: str, *args: Any) -> int:
        """One write statement as its own transaction; the number of rows it changed."""
        self.commit()
        return self._conn().execute(sql, args).rowcount

    def _one(self, sql: str, *args: Any) -> Any:
        return self._read(sql, args).fetchone()

    def _all(self, sql: str, *args: Any) -> list[Any]:
        return self._read(sql, args).fetchall()

    def _read(self, sql: str, args: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        """Run a read. A connection the database closed (a restart) is found broken only
        when used (the first request after a restart failed with an internal error): the
        read is then made again, once, on a new connection (a read changes nothing; an
        open batch is lost all the same, and :meth:`commit` says so)."""
        db = self._conn()
        try:
            return db.execute(sql, args)
        except psycopg.OperationalError:
            if not db.broken or db.info.transaction_status != pq.TransactionStatus.UNKNOWN:
                raise
        return self._conn().execute(sql, args)

    # -- users

    def register_user(self, user: UserEntry, now_us: int) -> tuple[UserEntry, bool]:
        created = self._write(
            "INSERT INTO users VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            user.username, user.signing_key, user.ecdh_key, now_us,
        )  # fmt: skip
        if created:
            return user, True
        (stored,) = self.get_users([user.username])
        return stored, False

    def get_users(self, usernames: Iterable[str]) -> list[UserEntry]:
        names = sorted({name for name in usernames if _storable(name)})
        if not names:
            return []
        rows = self._all(
            "SELECT username, signing_key, ecdh_key FROM users WHERE username = ANY(%s) "
            "ORDER BY username",
            names,
        )
        return [UserEntry(*row) for row in rows]

    # -- service secrets (several relays, one service: see spacenb.server.service)

    def sealed_service_secrets(self) -> bytes | None:
        """The service's secrets as sealed by the first relay, or None before it did."""
        row = self._one("SELECT sealed FROM service_secrets WHERE id = 1")
        return None if row is None else cast(bytes, row[0])

    def store_service_secrets(self, sealed: bytes) -> bytes:
        """Store sealed secrets unless some are stored already (the first relay wins);
        returns those stored."""
        self._write(
            "INSERT INTO service_secrets (id, sealed) VALUES (1, %s) ON CONFLICT DO NOTHING",
            sealed,
        )
        stored = self.sealed_service_secrets()
        assert stored is not None
        return stored

    # -- spaces and their logs

    def create_space(
        self, space: SpaceRecord, genesis: StateEvent, keys: Sequence[WrappedKey]
    ) -> None:
        with self._tx() as db:
            inserted = db.execute(
                "INSERT INTO spaces (space_id, private, created_at_us) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (space.space_id, space.private, space.created_at_us),
            ).rowcount
            if not inserted:
                raise ChannelExistsError("a space with this id already exists")
            if space.name is not None:
                inserted = db.execute(
                    "INSERT INTO channels VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (space.name, space.space_id),
                ).rowcount
                if not inserted:
                    raise ChannelExistsError(f"channel {space.name!r} already exists")
            db.execute(
                f"INSERT INTO state_events ({_EVENT_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                _event_row(genesis),
            )
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO wrapped_keys VALUES (%s, %s, %s, %s, %s, %s)",
                    [_key_row(k) for k in keys],
                )

    def get_space(self, space_id: str) -> SpaceRecord | None:
        space = self._spaces.get(space_id)
        if space is None:
            if not isinstance(space_id, str) or not _storable(space_id):
                return None
            row = self._one(
                "SELECT s.space_id, c.name, s.private, s.created_at_us FROM spaces s "
                "LEFT JOIN channels c USING (space_id) WHERE s.space_id = %s",
                space_id,
            )
            if row is None:
                return None
            space = self._spaces[space_id] = SpaceRecord(row[0], row[1], bool(row[2]), row[3])
        return space

    def resolve_channel(self, name: str) -> str | None:
        if not _storable(name):
            return None
        row = self._one("SELECT space_id FROM channels WHERE name = %s", name)
        return None if row is None else cast(str, row[0])

    def list_public_channels(self) -> list[ChannelEntry]:
        rows = self._all(
            "SELECT c.name, c.space_id FROM channels c JOIN spaces s USING (space_id) "
            "WHERE NOT s.private ORDER BY c.name"
        )
        return [ChannelEntry(*row) for row in rows]

    def public_channels_page(self, after: str | None, limit: int) -> list[ChannelEntry]:
        after = after if after is not None and _storable(after) else ""
        rows = self._all(
            "SELECT c.name, c.space_id FROM channels c JOIN spaces s USING (space_id) "
            "WHERE NOT s.private AND c.name > %s ORDER BY c.name LIMIT %s",
            after, limit,
        )  # fmt: skip
        return [ChannelEntry(*row) for row in rows]

    def channels_named_under(self, prefix: str) -> list[str]:
        if not _storable(prefix):
            return []
        # Names are compared byte by byte (COLLATE "C"): every name starting with prefix
        # lies in [prefix, prefix + U+10FFFF).
        rows = self._all(
            "SELECT c.space_id FROM channels c JOIN spaces s USING (space_id) "
            "WHERE c.name >= %s AND c.name < %s ORDER BY s.created_at_us, c.space_id",
            prefix, prefix + "\U0010ffff",
        )  # fmt: skip
        return [cast(str, row[0]) for row in rows]

    def state_events(
        self, space_id: str, since: int = 0, limit: int | None = None
    ) -> list[StateEvent]:
        rows = self._all(
            f"SELECT {_EVENT_COLUMNS} FROM state_events WHERE space_id = %s AND seq >= %s "
            "ORDER BY seq LIMIT %s",
            space_id, since, limit,
        )  # fmt: skip
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
        with self._tx() as db:
            # Of two relays appending at one seq, the second waits here for the first's
            # commit, then stores nothing.
            inserted = db.execute(
                f"INSERT INTO state_events ({_EVENT_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                _event_row(event),
            ).rowcount
            if not inserted:
                raise StaleStateError(f"the log already has an event at seq {event.seq}")
            if keys:
                with db.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO wrapped_keys VALUES (%s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        [_key_row(k) for k in keys],
                    )
            if join is not None:
                db.execute(
                    "INSERT INTO join_requests VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (join.space_id, join.username, join.role, now_us),
                )
            if close_join is not None:
                db.execute(
                    "DELETE FROM join_requests WHERE space_id = %s AND username = %s",
                    (event.space_id, close_join),
                )
            if delete_handle is not None:  # last_handle keeps the handle from coming back
                db.execute(
                    "DELETE FROM messages WHERE space_id = %s AND handle = %s",
                    (event.space_id, delete_handle),
                )
            if keys:
                self._notify_keys(db, keys)
            self.notify(db, "s", event.space_id, event.seq)

    # -- join requests and wrapped keys

    def join_requests(self, space_id: str | None = None) -> list[PendingJoin]:
        columns = "SELECT space_id, username, role FROM join_requests"
        order = "ORDER BY created_at_us, username"
        if space_id is None:
            rows = self._all(f"{columns} {order}")
        else:
            rows = self._all(f"{columns} WHERE space_id = %s {order}", space_id)
        return [PendingJoin(*row) for row in rows]

    def has_join_request(self, space_id: str, username: str) -> bool:
        row = self._one(
            "SELECT 1 FROM join_requests WHERE space_id = %s AND username = %s",
            space_id, username,
        )  # fmt: skip
        return row is not None

    def add_keys(self, keys: Sequence[WrappedKey], admitted: str | None = None) -> None:
        with self._tx() as db, db.cursor() as cur:
            cur.executemany(
                "INSERT INTO wrapped_keys VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [_key_row(k) for k in keys],
            )
            if admitted is not None:
                cur.executemany(
                    "DELETE FROM join_requests WHERE space_id = %s AND username = %s",
                    sorted({(k.space_id, admitted) for k in keys}),
                )
            self._notify_keys(db, keys)

    def keys_for(self, space_id: str, recipient: str) -> list[WrappedKey]:
        rows = self._all(
            "SELECT space_id, epoch, recipient, wrapper, blob, signature FROM wrapped_keys "
            "WHERE space_id = %s AND recipient = %s ORDER BY epoch",
            space_id, recipient,
        )  # fmt: skip
        return [WrappedKey(*row) for row in rows]

    # -- messages

    def add_message(self, envelope: Envelope, now_us: int) -> int:
        if self.stage is not None:
            # Staged for the commit thread, which decides the handle (and the quota) in
            # the batch's transaction; the core answers with it after the commit.
            self.stage(envelope, now_us)
            return 0
        known = self.message_handle(envelope.target, envelope.signature)
        if known is not None:
            return StoredBefore(known)
        params = _message_params(envelope, now_us)
        params["channel"] = NOTIFY_CHANNEL
        params["note"] = f"{self.origin} m {envelope.target} "
        row = None
        if self._batch:
            row = self._db.execute(_ADD_MESSAGE_UNLESS_LOCKED, params).fetchone()
            if row is None:
                # Another relay's batch holds this space's counter: commit ours before
                # waiting for it, so that no two relays ever wait on each other.
                try:
                    self.commit()
                except BaseException as exc:
                    self._lost = f"committing the message batch failed: {exc}"
                    raise
        if row is None:
            db = self._conn()
            db.execute("BEGIN")
            row = db.execute(_ADD_MESSAGE_WAITING, params).fetchone()
            if row is None:
                self.rollback()
                # another relay stored this envelope meanwhile (its commit came first)
                known = self.message_handle(envelope.target, envelope.signature)
                if known is not None:
                    return StoredBefore(known)
                raise ChannelNotFoundError("no such space")
        self._batch += 1
        return int(row[0])

    def resent_handle(self, envelope: Envelope) -> int:
        if self.stage_resend is not None:
            # Looked up by the commit thread under the space counter's lock, so that a
            # batch still committing the first attempt (on any relay) is waited for.
            self.stage_resend(envelope)
            return 0
        return super().resent_handle(envelope)

    def last_handle(self, space_id: str) -> int:
        """The newest handle handed out in the space (0 for none)."""
        row = self._one("SELECT last_handle FROM spaces WHERE space_id = %s", space_id)
        return 0 if row is None else int(row[0])

    def messages_after(self, space_id: str, after: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` stored messages with handles above ``after``, oldest first."""
        rows = self._all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE space_id = %s AND handle > %s "
            "ORDER BY handle LIMIT %s",
            space_id, after, limit,
        )  # fmt: skip
        return [stored_message(row) for row in rows]

    def message_usage(self, username: str) -> tuple[int, int]:
        row = self._one(
            "SELECT count(*), coalesce(sum(length(ciphertext)), 0) FROM messages WHERE source = %s",
            username,
        )
        return int(row[0]), int(row[1])

    def message_handle(self, space_id: str, signature: bytes) -> int | None:
        if not _storable(space_id):
            return None
        row = self._one(
            "SELECT handle FROM message_ids WHERE space_id = %s AND signature = %s",
            space_id, signature,
        )  # fmt: skip
        return None if row is None else int(row[0])

    def message_source(self, space_id: str, handle: int) -> str | None:
        row = self._one(
            "SELECT source FROM messages WHERE space_id = %s AND handle = %s", space_id, handle
        )
        return None if row is None else cast(str, row[0])

    def replace_message(self, handle: int, envelope: Envelope) -> bool:
        return bool(
            self._write(
                "WITH changed AS (UPDATE messages SET source = %s, subject = %s, epoch = %s, "
                "content_type = %s, head_seq = %s, head = %s, iv = %s, ciphertext = %s, "
                "signature = %s WHERE space_id = %s AND handle = %s "
                "RETURNING space_id, signature, handle), "
                "recorded AS (INSERT INTO message_ids SELECT * FROM changed "
                "ON CONFLICT DO NOTHING) "
                "SELECT pg_notify(%s, %s) FROM changed",
                envelope.source,
                envelope.subject.encode(),
                envelope.epoch,
                envelope.content_type.encode(),
                envelope.head_seq,
                envelope.head,
                envelope.iv,
                envelope.ciphertext,
                envelope.signature,
                envelope.target,
                handle,
                NOTIFY_CHANNEL,
                f"{self.origin} e {envelope.target} {handle}",
            )
        )

    def history(
        self, space_id: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], int | None]:
        rows = self._all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE space_id = %s AND handle < %s "
            "ORDER BY handle DESC LIMIT %s",
            space_id, before if before is not None else 2**63 - 1, limit + 1,
        )  # fmt: skip
        more = len(rows) > limit
        page = [stored_message(row) for row in reversed(rows[:limit])]
        return page, (page[0].handle if more else None)
