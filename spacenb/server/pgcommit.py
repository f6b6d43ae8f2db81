"""The group commit of a relay on PostgreSQL, on a thread of its own (true group commit).

With PostgreSQL, a round trip costs 1-5 ms once the commit waits for the disk, so the
relay's event loop never makes one on the message path: a ``send`` only *stages* its
envelope here (:meth:`Committer.stage`, no I/O), and the relay core hands the staged batch
to this module's one thread (:meth:`Committer.submit`), which owns one connection. While
that batch commits, the loop keeps reading and the next batch fills; the core answers the
senders only when the commit is done (:mod:`spacenb.server.core`).

One batch is one transaction of three round trips, whatever its size:

1. ``BEGIN``; lock the quota rows of the batch's authors (``FOR UPDATE``) and the
   counters of its spaces (``FOR NO KEY UPDATE``), each in sorted order, so that relays
   committing at once never wait on each other in a cycle; read them.
2. Decide each message in order, as one relay on SQLite does: whether its space stored
   its signature already (a resend, read in step 1 under the counter's lock, or earlier
   in this batch: answered with that handle, nothing stored or charged), its author's quota
   (:func:`~spacenb.protocol.relayrules.quota_refusal` on the counted usage; a refused
   message is answered with its refusal, and nothing of it is stored) and its handle
   (:func:`~spacenb.protocol.relayrules.next_handle` on the space's ``last_handle``).
   Then, in one pipeline: every message in one ``INSERT ... SELECT FROM unnest(...)``,
   the counters and the usage rows, one ``NOTIFY`` per space, ``COMMIT``.
3. The read-back, after the commit: one query for every space this relay has
   subscribers in and that changed (its own batch's and other relays', from their
   notifications), from each space's cursor (:mod:`spacenb.server.cluster`).

Quotas are charged here, in the transaction that stores the messages, rather than from
leases as the token buckets are: the usage row and the messages then commit together
(a relay killed mid-batch leaves neither, and nothing is reserved and lost), a refusal is
exact across relays (never early because another relay holds an unused lease), and it
costs no round trip of its own. Handles keep their guarantees: the counter row stays
locked until the commit, so within a space commits happen in handle order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq

from ..exceptions import ChannelNotFoundError, NotFoundError, SpacenbError
from ..protocol.envelope import Envelope
from ..protocol.frames import StoredMessage
from ..protocol.relayrules import next_handle, quota_refusal
from .postgres import MESSAGE_COLUMNS, NOTIFY_CHANNEL, stored_message
from .storage import StoredBefore

__all__ = ["READ_PAGE", "Committed", "Committer"]

log = logging.getLogger("spacenb.server.pgcommit")

READ_PAGE = 500  # messages read back per space and batch (a space with more stays dirty)

_LOCK_USAGE = (
    "SELECT username, messages, bytes FROM spacenb_live.usage WHERE username = ANY(%s) "
    "ORDER BY username FOR UPDATE"
)
_LOCK_SPACES = (
    "SELECT space_id, last_handle FROM spaces WHERE space_id = ANY(%s) "
    "ORDER BY space_id FOR NO KEY UPDATE"
)
# A user's first message (or the UNLOGGED table was emptied by a crash): count what is
# stored, in a statement of its own before the batch's transaction, so that the
# transaction takes its locks in one order only (usage rows, then counters).
_COUNT_USAGE = """
INSERT INTO spacenb_live.usage (username, messages, bytes)
SELECT u.username, count(m.source), coalesce(sum(length(m.ciphertext)), 0)
FROM unnest(%s::text[]) AS u(username) LEFT JOIN messages m ON m.source = u.username
GROUP BY u.username ORDER BY u.username
ON CONFLICT DO NOTHING
"""
# The batch's signatures already stored (read once the counters are locked).
_KNOWN = """
SELECT i.space_id, i.signature, i.handle
FROM unnest(%s::text[], %s::bytea[]) AS b(space_id, signature)
JOIN message_ids i ON i.space_id = b.space_id AND i.signature = b.signature
"""
_RECORD = """
INSERT INTO message_ids (space_id, signature, handle)
SELECT * FROM unnest(%s::text[], %s::bytea[], %s::bigint[])
ON CONFLICT DO NOTHING
"""
_INSERT = """
INSERT INTO messages (space_id, handle, source, subject, epoch, content_type, head_seq,
                      head, iv, ciphertext, signature)
SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::bytea[], %s::bigint[],
                     %s::bytea[], %s::bigint[], %s::bytea[], %s::bytea[], %s::bytea[],
                     %s::bytea[])
"""
_COUNTERS = """
UPDATE spaces s SET last_handle = c.last
FROM unnest(%s::text[], %s::bigint[]) AS c(space_id, last) WHERE s.space_id = c.space_id
"""
_CHARGE = """
UPDATE spacenb_live.usage u SET messages = u.messages + c.messages, bytes = u.bytes + c.bytes
FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS c(username, messages, bytes)
WHERE u.username = c.username
"""
_NOTIFY = "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p"
_READ_BACK = f"""
SELECT m.* FROM unnest(%s::text[], %s::bigint[]) AS c(space_id, after)
CROSS JOIN LATERAL (
    SELECT {MESSAGE_COLUMNS} FROM messages
    WHERE space_id = c.space_id AND handle > c.after ORDER BY handle LIMIT %s
) AS m
ORDER BY m.space_id, m.handle
"""

Outcome = int | SpacenbError  # a staged message's handle, or why it was refused


@dataclass
class Committed:
    """What one job did. ``outcomes`` has one entry per staged message, in order (None if
    the transaction failed: nothing of it is stored, ``error`` says why); ``rows`` maps
    each space read back to its messages after the cursor, oldest first (``read`` is
    False if the read-back failed: read those spaces again)."""

    outcomes: list[Outcome] | None
    error: str | None = None
    rows: dict[str, list[StoredMessage]] = field(default_factory=dict)
    read: bool = True


class Committer:
    """Stages messages on the event loop and commits them on its own thread.

    ``connect`` opens a connection (autocommit, as the storage's); ``origin`` names this
    relay in notifications; ``most_messages`` and ``most_bytes`` are the quotas. Figures
    for tests and benchmarks: ``commits`` (transactions that stored messages) and
    ``committed`` (messages they stored).
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        origin: str,
        *,
        most_messages: int | None,
        most_bytes: int | None,
    ) -> None:
        self._connect = connect
        self._origin = origin
        self._most_messages = most_messages
        self._most_bytes = most_bytes
        self._staged: list[tuple[Envelope, int]] = []  # (now_us < 0: a resend's look-up)
        self._counted: set[str] = set()  # users whose usage row exists (the thread's)
        self._db: psycopg.Connection[Any] | None = None  # the thread's own
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spacenb-commit")
        self._closed = False
        self.commits = 0
        self.committed = 0

    # ------------------------------------------------------------------ the loop's side

    def stage(self, envelope: Envelope, now_us: int) -> None:
        """Add a checked message to the next batch (no I/O)."""
        self._staged.append((envelope, now_us))

    def stage_resend(self, envelope: Envelope) -> None:
        """Add the look-up of a resent envelope to the next batch: answered with its handle
        if stored (by any relay, committed before this batch takes the counter's lock),
        else :class:`NotFoundError`; never stored."""
        self._staged.append((envelope, -1))

    @property
    def staged(self) -> int:
        """Messages staged since the last :meth:`submit`."""
        return len(self._staged)

    def staged_spaces(self) -> set[str]:
        return {envelope.target for envelope, _ in self._staged}

    def submit(self, reads: Mapping[str, int]) -> concurrent.futures.Future[Committed] | None:
        """Commit every staged message, then read back ``reads`` (space → cursor), on the
        thread; None once closed (the staged messages are then dropped, unanswered)."""
        batch, self._staged = self._staged, []
        if self._closed:
            return None
        return self._pool.submit(self._job, batch, dict(reads))

    def close(self) -> None:
        """Finish the job in flight, then close the thread's connection."""
        self._closed = True
        self._pool.submit(self._close_connection)
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ the thread's side

    def _close_connection(self) -> None:
        if self._db is not None:
            with contextlib.suppress(psycopg.Error):
                self._db.close()
            self._db = None

    def _conn(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.broken or self._db.closed:
            self._close_connection()
            self._db = self._connect()
        return self._db

    def _job(self, batch: Sequence[tuple[Envelope, int]], reads: dict[str, int]) -> Committed:
        try:
            db = self._conn()
        except SpacenbError as exc:  # unreachable (ServerError): nothing stored, read later
            return Committed(None if batch else [], str(exc), read=not reads)
        result = Committed([])
        if batch:
            try:
                result.outcomes = self._commit(db, batch)
            except psycopg.Error as exc:
                log.warning("committing %d messages failed: %s", len(batch), exc)
                self._abandon(db)
                return Committed(None, f"committing the message batch failed: {exc}", read=False)
        if reads:
            try:
                result.rows = self._read_back(db, reads)
            except psycopg.Error as exc:
                log.warning("reading back %d spaces failed: %s", len(reads), exc)
                self._abandon(db)
                result.read = False
        return result

    def _abandon(self, db: psycopg.Connection[Any]) -> None:
        if db.info.transaction_status != pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                db.execute("ROLLBACK")

    def _commit(
        self, db: psycopg.Connection[Any], batch: Sequence[tuple[Envelope, int]]
    ) -> list[Outcome]:
        users = sorted({envelope.source for envelope, _ in batch})
        spaces = sorted({envelope.target for envelope, _ in batch})
        for _attempt in range(3):
            missing = [u for u in users if u not in self._counted]
            if missing:
                db.execute(_COUNT_USAGE, (missing,))  # (autocommit, before BEGIN)
                self._counted.update(missing)
            with db.pipeline():
                db.execute("BEGIN")
                usage_rows = db.execute(_LOCK_USAGE, (users,))
                space_rows = db.execute(_LOCK_SPACES, (spaces,))
                known_rows = db.execute(
                    _KNOWN, ([e.target for e, _ in batch], [e.signature for e, _ in batch])
                )
                usage = {u: [int(m), int(b)] for u, m, b in usage_rows.fetchall()}
                last = {s: int(h) for s, h in space_rows.fetchall()}
                known = {(s, bytes(sig)): int(h) for s, sig, h in known_rows.fetchall()}
            if len(usage) == len(users):
                break
            db.execute("ROLLBACK")  # the usage table was emptied (a crash): count again
            self._counted.difference_update(users)
        else:
            raise psycopg.OperationalError("the usage rows of the batch's authors are missing")
        outcomes: list[Outcome] = []
        stored: list[tuple[Envelope, int]] = []
        charged: dict[str, list[int]] = {}
        for envelope, now_us in batch:
            space_id, user = envelope.target, envelope.source
            if space_id not in last:
                outcomes.append(ChannelNotFoundError("no such space"))
                continue
            before = known.get((space_id, envelope.signature))
            if before is not None:
                outcomes.append(StoredBefore(before))
                continue
            if now_us < 0:  # a resend that was never stored: the sender seals it again
                outcomes.append(NotFoundError("this envelope was not stored: seal it again"))
                continue
            counted = usage[user]
            size = len(envelope.ciphertext)
            refusal = quota_refusal(
                user, (counted[0], counted[1]), count=1, size=size,
                most_messages=self._most_messages, most_bytes=self._most_bytes,
            )  # fmt: skip
            if refusal is not None:
                outcomes.append(refusal)
                continue
            counted[0] += 1
            counted[1] += size
            charge = charged.setdefault(user, [0, 0])
            charge[0] += 1
            charge[1] += size
            handle = last[space_id] = next_handle(now_us, last[space_id])
            known[space_id, envelope.signature] = handle
            stored.append((envelope, handle))
            outcomes.append(handle)
        if not stored:
            db.execute("ROLLBACK")
            return outcomes
        newest = {e.target: h for e, h in stored}  # (in order: the last one is the newest)
        names = sorted(charged)
        with db.pipeline():
            columns = _columns(stored)
            db.execute(_RECORD, (columns[0], columns[-1], columns[1]))
            db.execute(_INSERT, columns)
            db.execute(_COUNTERS, (list(newest), list(newest.values())))
            db.execute(
                _CHARGE,
                (names, [charged[u][0] for u in names], [charged[u][1] for u in names]),
            )
            notes = [f"{self._origin} m {s} {h}" for s, h in sorted(newest.items())]
            db.execute(_NOTIFY, (NOTIFY_CHANNEL, notes))
            db.execute("COMMIT")
        self.commits += 1
        self.committed += len(stored)
        return outcomes

    def _read_back(
        self, db: psycopg.Connection[Any], reads: dict[str, int]
    ) -> dict[str, list[StoredMessage]]:
        names = sorted(reads)
        rows = db.execute(_READ_BACK, (names, [reads[s] for s in names], READ_PAGE)).fetchall()
        found: dict[str, list[StoredMessage]] = {s: [] for s in names}
        for row in rows:
            item = stored_message(row)
            found[item.envelope.target].append(item)
        return found


def _columns(stored: Sequence[tuple[Envelope, int]]) -> tuple[list[Any], ...]:
    """The batch as the columns ``_INSERT`` unnests, in its column order."""
    return (
        [e.target for e, _ in stored],
        [h for _, h in stored],
        [e.source for e, _ in stored],
        [e.subject.encode() for e, _ in stored],
        [e.epoch for e, _ in stored],
        [e.content_type.encode() for e, _ in stored],
        [e.head_seq for e, _ in stored],
        [e.head for e, _ in stored],
        [e.iv for e, _ in stored],
        [e.ciphertext for e, _ in stored],
        [e.signature for e, _ in stored],
    )
