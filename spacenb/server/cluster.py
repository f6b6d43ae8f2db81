"""Several relays on one PostgreSQL database, acting as one service: what each relay
learns of the others' writes, who is online anywhere, shared rate limits and quotas, and
which relay runs the keeper (PROTOCOL.md, "One service on several relays").

- **Live delivery.** Every write a relay pushes to subscribers also sends a ``NOTIFY``
  in its transaction (:class:`~spacenb.server.postgres.PostgresStorage`), so it is sent
  only on commit. The payload is small (``origin kind space_id argument``); the receiving
  relay reads the row and pushes it to its own subscribers. A relay ignores its own
  notifications (``origin`` is its storage's random id): it pushed those already.
- **Catching up.** New messages are read by handle, from a per-space cursor (the newest
  handle this relay has pushed there), and state events by seq from the cached head; a
  notification is only the cue to read. A relay pushes its own new messages the same way
  (read back after its group commit), so that every subscriber gets a space's messages
  in handle order, whichever relay stored them: within a space, commits happen in handle
  order, so a read of what is committed never misses a smaller handle that commits later
  (clients skip a pushed handle below one they were already given). So when the listener
  comes back after losing its connection, reading from the cursors and heads delivers
  what was missed, once.
- **Presence** is one row per (space, user, relay) in ``spacenb_live.presence``; each
  relay heartbeats its row in ``spacenb_live.relays`` every ``heartbeat`` seconds, and a
  relay not seen for ``expiry`` seconds is removed, with its presence, by any other.
- **Group commit and read-back** run on the commit thread (:mod:`.pgcommit`): the core
  starts a job when it drains (:meth:`Cluster.begin_commit`: the staged messages, and
  the changed spaces this relay has subscribers in, from their cursors) and collects it
  when the thread wakes it (:meth:`Cluster.end_commit`, :meth:`Cluster.push_committed`).
- **Rate limits** are rows updated atomically (one statement each) on this module's own
  connection, outside the message batch. A relay leases a few tokens at a time (at most
  1/20 of the burst), so a message usually costs no round trip. **Quotas** are charged
  in the batch's own transaction (:mod:`.pgcommit` says why); an edit's or a deletion's
  change is one statement here.
- **The keeper** runs on the relay that holds a session-level advisory lock
  (:data:`KEEPER_LOCK`) on a connection of its own; the others try every ``retry``
  seconds and take over when the holder's session ends (its relay died, or lost the
  database). On taking over, the keeper works through the pending join requests.

Why psycopg's async connection for the listener, not a thread over ``conn.notifies()``:
everything a notification leads to (reading rows, pushing to connections) is relay state
that lives on the relay's event loop and is not thread-safe. An async listener task runs
on that loop and waits on the socket without blocking it; a thread would have to hand
every notification over with ``call_soon_threadsafe`` and still do the work on the loop.
The coordination tables, and the statements on them, are in :mod:`spacenb.server.pglive`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from ..exceptions import ServerError, SpacenbError
from ..protocol import frames
from ..protocol.relayrules import bytes_quota_refusal, quota_refusal, rate_limited
from .pgcommit import READ_PAGE, Committed, Committer
from .pglive import (
    CHARGE,
    COUNT_USAGE,
    EXPIRE,
    HEARTBEAT,
    REMOTE_PRESENCE,
    SCHEMA,
    TAKE_TOKENS,
)
from .pgschema import MIGRATION_LOCK
from .postgres import NOTIFY_CHANNEL, PostgresStorage, redacted_url

if TYPE_CHECKING:
    from .core import CommitJob, RelayCore
    from .keeper import Keeper

__all__ = ["KEEPER_LOCK", "Cluster"]

log = logging.getLogger("spacenb.server.cluster")

KEEPER_LOCK = 0x7370_6163_656E_6B70  # pg_advisory_lock key of the active keeper: "spacenkp"
MAX_SIGNAL_PAYLOAD = 7900  # bytes of an ephemeral's notification (PostgreSQL's limit: 8000)


class Cluster:
    """What makes a relay on PostgreSQL one of several serving one database.

    Made by :func:`~spacenb.server.app.start_server` for ``database=``; runs between
    :meth:`start` and :meth:`stop`. ``keeper`` is started only while this relay holds
    :data:`KEEPER_LOCK`. Raises :class:`ServerError` if the database cannot be reached.
    """

    def __init__(
        self,
        relay: RelayCore,
        url: str,
        keeper: Keeper,
        *,
        heartbeat: float = 1.0,
        expiry: float = 10.0,
        retry: float = 1.0,
    ) -> None:
        storage = relay.storage
        assert isinstance(storage, PostgresStorage)
        self.relay = relay
        self.storage = storage
        self.keeper = keeper
        self.origin = storage.origin
        self.heartbeat = heartbeat
        self.expiry = expiry
        self.retry = retry
        self.keeper_active = False
        self.listening = asyncio.Event()  # set while the listener is connected
        self.reconnects = 0  # times the listener came back (and caught up), for tests
        self._url = url
        self._db = self._connect()
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            self._db.execute(SCHEMA)
        self._cursors: dict[str, int] = {}  # watched space → newest handle pushed there
        self._remote: dict[str, dict[str, set[str]]] = {}  # space → user → relay ids
        self._dirty: set[str] = set()
        self._leases: dict[str, int] = {}  # username → tokens leased from the shared bucket
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        limits = relay.limits
        self.committer = Committer(
            storage._connect, self.origin,
            most_messages=limits.max_messages_per_user,
            most_bytes=limits.max_message_bytes_per_user,
        )  # fmt: skip
        storage.stage = self.committer.stage
        storage.stage_resend = self.committer.stage_resend
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        return f"Cluster({redacted_url(self._url)!r}, origin={self.origin!r})"

    # ------------------------------------------------------------------ running

    async def start(self) -> None:
        """Start the listener and the keeper lock's loop; return once listening."""
        self._loop = asyncio.get_running_loop()
        self._heartbeat_now()
        self._tasks = [
            asyncio.create_task(self._listen(), name="spacenb-listener"),
            asyncio.create_task(self._hold_keeper_lock(), name="spacenb-keeper-lock"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), 30)

    async def stop(self) -> None:
        """Stop listening, let the keeper lock go and take this relay's presence away."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.keeper_active:
            await self.keeper.stop()
            self.keeper_active = False
        try:
            self.relay.settle()  # what was staged is committed before the thread stops
        except Exception:
            log.exception("committing the last messages failed")
        self.committer.close()
        if self.committer.commits:
            log.info(
                "stored %d messages in %d group commits (%.1f a commit)",
                self.committer.committed, self.committer.commits,
                self.committer.committed / self.committer.commits,
            )  # fmt: skip
        with contextlib.suppress(psycopg.Error, ServerError):
            db = self._conn()
            db.execute("DELETE FROM spacenb_live.presence WHERE relay_id = %s", (self.origin,))
            db.execute(
                "WITH gone AS (DELETE FROM spacenb_live.relays WHERE relay_id = %s) "
                "SELECT pg_notify(%s, %s)",
                (self.origin, NOTIFY_CHANNEL, f"{self.origin} g - {self.origin}"),
            )
        self._db.close()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self._url, autocommit=True, connect_timeout=5, application_name="spacenb-cluster"
            )
        except psycopg.OperationalError as exc:
            raise ServerError(f"cannot connect to {redacted_url(self._url)}: {exc}") from None

    def _conn(self) -> psycopg.Connection[Any]:
        if self._db.broken or self._db.closed:
            with contextlib.suppress(psycopg.Error):
                self._db.close()
            self._db = self._connect()
        return self._db

    def _execute(self, sql: str, params: Any = None) -> list[Any]:
        """One autocommit statement on this module's connection; its rows."""
        try:
            cur = self._conn().execute(sql, params)
            return cur.fetchall() if cur.description is not None else []
        except psycopg.OperationalError as exc:
            raise ServerError(f"the database is unreachable: {exc}") from None

    async def _connect_async(
        self, application: str, who: str
    ) -> psycopg.AsyncConnection[Any] | None:
        """An autocommit connection of the listener's or the keeper lock's own, or None
        (logged, after waiting ``retry`` seconds) if the database cannot be reached."""
        try:
            return await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=5, application_name=application
            )
        except psycopg.OperationalError as exc:
            log.warning("%s cannot connect (retrying): %s", who, str(exc).strip())
            await asyncio.sleep(self.retry)
            return None

    # ------------------------------------------------------------------ the listener

    async def _listen(self) -> None:
        while not self._stopping:
            conn = await self._connect_async("spacenb-listener", "listener")
            if conn is None:
                continue
            try:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                self._catch_up_everything()  # after LISTEN: nothing falls in between
                self.listening.set()
                while True:
                    async for note in conn.notifies(timeout=5 * self.heartbeat):
                        self._on_notification(note.payload)
                    await conn.execute("SELECT 1")  # quiet: is the connection still there?
                    self._sweep()
            except (psycopg.Error, ServerError) as exc:
                if not self._stopping:
                    log.warning("listener lost the database (reconnecting): %s", exc)
            finally:
                self.listening.clear()
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            self.reconnects += 1
            await asyncio.sleep(self.retry / 4)

    def _sweep(self) -> None:
        """A quiet spell on the listener: read every watched space again from its cursor.
        A notification is only a cue to read, and one sent while the listener was
        reconnecting (a PostgreSQL restart) is never delivered: the catch-up at reconnect
        reads what was committed before it, and this bounds the delay of anything else
        to a few heartbeats. Costs one read-back query per quiet spell."""
        if self._cursors:
            self._dirty.update(self._cursors)
            self.relay.wake()

    def _catch_up_everything(self) -> None:
        """Read what may have been missed while not listening: state events of every
        cached space, messages of every watched one, and the presence of others."""
        relay = self.relay
        for state in relay.cached_states():
            relay.catch_up(state)
        for space_id in list(self._cursors):
            self._dirty.add(space_id)  # read after the next commit
            self._reload_presence(space_id)
        for space_id, users in relay.online_here().items():
            for user in users:
                self._publish_presence(space_id, user, "+")
        if self.keeper_active:
            for pending in self.storage.join_requests():
                self.keeper.notify(pending.space_id, pending.username)
        relay.wake()

    def _on_notification(self, payload: str) -> None:
        try:
            origin, kind, space_id, arg = payload.split(" ", 3)
        except ValueError:
            log.warning("ignoring a notification of another form: %.80r", payload)
            return
        if origin == self.origin:
            return
        relay = self.relay
        try:
            if kind == "m":
                if space_id in self._cursors:
                    self._dirty.add(space_id)  # read by the next flush, after its commit
            elif kind == "e":
                self._edited(space_id, int(arg))
            elif kind == "s":
                state = relay.cached_state(space_id)
                if state is not None:
                    relay.catch_up(state)
            elif kind == "k":
                epoch, recipient = arg.split(" ", 1)
                self._keys(space_id, int(epoch), recipient)
            elif kind == "j":
                if self.keeper_active:
                    state = relay.state(space_id)
                    if state is not None:
                        relay.catch_up(state)
                    self.keeper.notify(space_id, arg)
            elif kind == "x":
                if space_id in self._cursors:
                    relay.push_space_text(arg, space_id)
            elif kind == "p":
                sign, user = arg.split(" ", 1)
                self._remote_presence(space_id, user, origin, sign == "+")
            elif kind == "g":
                self._relay_gone(arg)
        except (psycopg.Error, ServerError) as exc:
            log.warning("could not act on a notification %.80r: %s", payload, exc)
        relay.wake()

    # ------------------------------------------------------------------ messages

    def watch(self, space_id: str) -> None:
        """Start delivering other relays' messages in the space (its first subscriber)."""
        self._cursors[space_id] = self.storage.last_handle(space_id)
        self._reload_presence(space_id)

    def unwatch(self, space_id: str) -> None:
        """Its last subscriber left: stop delivering in the space."""
        self._cursors.pop(space_id, None)
        self._remote.pop(space_id, None)
        self._dirty.discard(space_id)

    # The group commit runs on the committer's thread (spacenb.server.pgcommit); the core
    # starts a job when it drains, and collects it when the job wakes it.

    def staged(self) -> int:
        """Messages staged for the next batch."""
        return self.committer.staged

    def begin_commit(self) -> _Job | None:
        """Hand the staged messages, and the spaces with subscribers here that changed
        (by this relay's batch or by others', from their notifications), to the commit
        thread: one transaction, then one read-back query. None if there is nothing to do."""
        committer = self.committer
        if not committer.staged and not self._dirty:
            return None
        spaces = self._dirty | committer.staged_spaces()
        self._dirty = set()
        reads = {s: self._cursors[s] for s in spaces if s in self._cursors}
        if not committer.staged and not reads:
            return None
        future = committer.submit(reads)
        if future is None:  # stopped
            return None
        future.add_done_callback(self._job_done)
        return _Job(future, reads)

    def _job_done(self, future: concurrent.futures.Future[Committed]) -> None:
        """(On the commit thread.) Wake the core on its loop to collect the job."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody to answer
                loop.call_soon_threadsafe(self.relay.wake)

    def end_commit(self, job: CommitJob) -> Sequence[int | SpacenbError] | None:
        """Each staged message's handle or refusal (None: the batch failed)."""
        assert isinstance(job, _Job)
        result = job.result()
        if result.error is not None:
            log.warning("%s", result.error)
        if not result.read and job.reads:
            self._read_again(set(job.reads))
        return result.outcomes

    def _read_again(self, spaces: set[str]) -> None:
        """The read-back failed (the database is away): try again a little later."""

        def again() -> None:
            self._dirty.update(s for s in spaces if s in self._cursors)
            self.relay.wake()

        if self._loop is not None and not self._stopping:
            self._loop.call_later(self.retry / 4, again)

    def push_committed(self, job: CommitJob) -> None:
        """Push the messages the job read back, after each space's cursor, in handle order
        (committed by any relay; within a space commits happen in handle order, so what
        was read has no gaps)."""
        assert isinstance(job, _Job)
        for space_id, items in job.result().rows.items():
            cursor = self._cursors.get(space_id)
            if cursor is None:
                continue  # its last subscriber left meanwhile
            for item in items:
                if item.handle > cursor:
                    self.relay.push_space(
                        frames.MessagePushed(item.handle, item.envelope), space_id
                    )
                    cursor = item.handle
            self._cursors[space_id] = cursor
            if len(items) >= READ_PAGE:
                self._dirty.add(space_id)  # more: read on with the next job

    def _edited(self, space_id: str, handle: int) -> None:
        if space_id not in self._cursors:
            return
        items, _ = self.storage.history(space_id, handle + 1, 1)
        if items and items[0].handle == handle:
            self.relay.push_space(frames.MessageEdited(handle, items[0].envelope), space_id)

    def _keys(self, space_id: str, epoch: int, recipient: str) -> None:
        from .handlers.membership import push_keys

        if not self.relay.is_connected(recipient):
            return
        keys = [k for k in self.storage.keys_for(space_id, recipient) if k.epoch >= epoch]
        push_keys(self.relay, space_id, keys)

    # ------------------------------------------------------------------ signals, joins

    def publish_signal(self, space_id: str, text: str) -> None:
        """Hand an ephemeral event (its JSON) to the other relays' subscribers."""
        if len(text.encode()) > MAX_SIGNAL_PAYLOAD:
            log.info("an ephemeral of %d bytes reaches only this relay's subscribers", len(text))
            return
        self._execute(
            "SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, f"{self.origin} x {space_id} {text}")
        )

    def announce_join(self, space_id: str, username: str) -> None:
        """Tell the relay running the keeper that ``username`` waits for keys."""
        self._execute(
            "SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, f"{self.origin} j {space_id} {username}")
        )

    # ------------------------------------------------------------------ presence

    def online_elsewhere(self, space_id: str) -> set[str]:
        """Users online in the space through other relays."""
        return {u for u, where in self._remote.get(space_id, {}).items() if where}

    def went_online(self, space_id: str, username: str) -> bool:
        """The user's first connection on this relay subscribed; True if the user was
        online nowhere else (so the change is news)."""
        self._publish_presence(space_id, username, "+")
        return not self._remote.get(space_id, {}).get(username)

    def went_offline(self, space_id: str, username: str) -> bool:
        """The user's last connection here left; True if the user is online nowhere else."""
        self._publish_presence(space_id, username, "-")
        return not self._remote.get(space_id, {}).get(username)

    def _publish_presence(self, space_id: str, username: str, sign: str) -> None:
        change = (
            "INSERT INTO spacenb_live.presence VALUES (%(s)s, %(u)s, %(r)s) ON CONFLICT DO NOTHING"
            if sign == "+"
            else "DELETE FROM spacenb_live.presence "
            "WHERE space_id = %(s)s AND username = %(u)s AND relay_id = %(r)s"
        )
        note = f"{self.origin} p {space_id} {sign} {username}"
        try:
            self._execute(
                f"WITH change AS ({change}) SELECT pg_notify(%(c)s, %(n)s)",
                {"s": space_id, "u": username, "r": self.origin, "c": NOTIFY_CHANNEL, "n": note},
            )
        except ServerError as exc:  # written again when the listener is back
            log.warning("could not publish presence: %s", exc)

    def _reload_presence(self, space_id: str) -> None:
        rows = self._execute(REMOTE_PRESENCE, (space_id, self.origin, self.expiry))
        before = self._remote.get(space_id, {})
        now: dict[str, set[str]] = {}
        for user, relay_id in rows:
            now.setdefault(user, set()).add(relay_id)
        self._remote[space_id] = now
        for user in set(before) | set(now):
            self._presence_changed(space_id, user, bool(before.get(user)), bool(now.get(user)))

    def _remote_presence(self, space_id: str, user: str, relay_id: str, online: bool) -> None:
        if space_id not in self._cursors:
            return
        where = self._remote.setdefault(space_id, {}).setdefault(user, set())
        was = bool(where)
        if online:
            where.add(relay_id)
        else:
            where.discard(relay_id)
            if not where:
                del self._remote[space_id][user]
        self._presence_changed(space_id, user, was, online or bool(where))

    def _relay_gone(self, relay_id: str) -> None:
        for space_id, users in self._remote.items():
            for user in [u for u, where in users.items() if relay_id in where]:
                users[user].discard(relay_id)
                if not users[user]:
                    del users[user]
                    self._presence_changed(space_id, user, True, False)

    def _presence_changed(self, space_id: str, user: str, was: bool, now: bool) -> None:
        """Push a remote change unless this relay's own connections decide it."""
        if was == now or self.relay.is_online_here(space_id, user):
            return
        joined, left = ((user,), ()) if now else ((), (user,))
        self.relay.push_space(frames.Presence(space_id, joined, left), space_id)

    # ------------------------------------------------------------------ rates, quotas

    def take_token(self, username: str) -> None:
        """Take one of the user's tokens from the bucket all relays share;
        :class:`RateLimitedError` if there is none."""
        lease = self._leases.get(username, 0)
        if lease > 0:
            self._leases[username] = lease - 1
            return
        limits = self.relay.limits
        rate = limits.message_rate
        assert rate is not None
        burst = max(limits.message_burst, 1)
        want = max(1, burst // 20)
        ((granted, tokens),) = self._execute(
            TAKE_TOKENS, {"user": username, "want": want, "burst": burst, "rate": rate}
        )
        if granted < 1:
            wait = (1.0 - tokens) / rate if rate > 0 else math.inf
            raise rate_limited(rate, limits.message_burst, wait)
        if len(self._leases) > 10_000:
            self._leases.clear()  # (gives back nothing: the service grants a little less)
        self._leases[username] = int(granted) - 1

    def give_back_token(self, username: str) -> None:
        """Return a token taken for a resend that stored nothing (to this relay's lease)."""
        self._leases[username] = self._leases.get(username, 0) + 1

    def charge(self, username: str, size: int, count: int) -> None:
        """:meth:`RelayCore.charge_message` on the usage all relays share, in one statement;
        a message being sent (``count > 0``) is charged in its batch's transaction instead
        (:mod:`spacenb.server.pgcommit`)."""
        if count > 0:
            return
        limits = self.relay.limits
        params = {
            "user": username, "size": size, "count": count,
            "most_messages": limits.max_messages_per_user,
            "most_bytes": limits.max_message_bytes_per_user,
        }  # fmt: skip
        if self._execute(CHARGE, params):
            return
        self._execute(COUNT_USAGE, params)  # first charge (or the table was emptied)
        if self._execute(CHARGE, params):
            return
        ((messages, stored),) = self._execute(
            "SELECT messages, bytes FROM spacenb_live.usage WHERE username = %s", (username,)
        )
        refusal = quota_refusal(
            username,
            (messages, stored),
            count=count,
            size=0,  # the statement refused the bytes unless it refused the count
            most_messages=limits.max_messages_per_user,
            most_bytes=limits.max_message_bytes_per_user,
        )
        raise refusal or bytes_quota_refusal(username, stored, limits.max_message_bytes_per_user)

    # ------------------------------------------------------------------ the keeper lock

    def _heartbeat_now(self) -> None:
        ((inserted,),) = self._execute(HEARTBEAT, (self.origin,))
        if inserted:  # we were taken for dead: say who is here
            for space_id, users in self.relay.online_here().items():
                for user in users:
                    self._publish_presence(space_id, user, "+")
        rows = self._execute(
            EXPIRE, {"expiry": self.expiry, "channel": NOTIFY_CHANNEL, "origin": self.origin}
        )
        for relay_id, _ in rows:
            log.info("relay %s stopped heartbeating: its presence is removed", relay_id)
            self._relay_gone(relay_id)
        if rows:
            self.relay.wake()

    async def _hold_keeper_lock(self) -> None:
        """Hold :data:`KEEPER_LOCK` (and run the keeper) or try again every ``retry``
        seconds; heartbeat meanwhile."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            conn = await self._connect_async("spacenb-keeper-lock", "keeper lock:")
            if conn is None:
                continue
            try:
                beat = 0.0
                while True:
                    if not self.keeper_active:
                        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (KEEPER_LOCK,))
                        row = await cur.fetchone()
                        if row is not None and row[0]:
                            log.info("this relay runs the keeper now")
                            self.keeper_active = True
                            await self.keeper.start()  # starts with the pending joins
                    else:
                        await conn.execute("SELECT 1")  # is the lock's session still there?
                    if loop.time() - beat >= self.heartbeat:
                        beat = loop.time()
                        self._heartbeat_now()
                    await asyncio.sleep(min(self.retry, self.heartbeat))
            except (psycopg.Error, ServerError) as exc:
                if not self._stopping:
                    log.warning("keeper lock: lost the database (retrying): %s", exc)
            finally:
                if self.keeper_active:
                    await self.keeper.stop()
                    self.keeper_active = False
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            await asyncio.sleep(self.retry)


class _Job:
    """A job of the commit thread, as the core sees it (:class:`~.core.CommitJob`)."""

    __slots__ = ("future", "reads")

    def __init__(self, future: concurrent.futures.Future[Committed], reads: dict[str, int]):
        self.future = future
        self.reads = reads

    def done(self) -> bool:
        return self.future.done()

    def wait(self) -> None:
        concurrent.futures.wait([self.future])

    def result(self) -> Committed:
        try:
            return self.future.result()
        except Exception as exc:  # (the job catches the database's errors itself)
            log.exception("the commit thread failed")
            return Committed(None, f"the commit thread failed: {exc}", read=False)
