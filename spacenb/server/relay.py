"""The relay: one websocket per client, requests dispatched to handlers, events fanned out.

The relay routes, stores and authorises; it never holds a group key or reads a body
(PROTOCOL.md). Each connection is a :class:`Session`; its frames are handled one at a
time, in order, synchronously on the event loop (storage answers in microseconds).
Answers and events queue in one outbox, each answer ahead of the events its request
caused; at the end of the event-loop turn the messages stored meanwhile are committed
together (group commit) and the outbox is written, so nothing is acknowledged or pushed
before it is durable.

Fan-out never waits for a slow reader: events are written straight into each recipient's
transport buffer, and a connection whose buffer grows past ``max_buffered`` bytes is
dropped by the very write that took it past, instead of holding up the others. No answer
is larger than one frame (1 MiB), so N connections that never read cost at most
N × (``max_buffered`` + 1 MiB). A connection whose buffer holds more than a frame is not
read from until it drains: a client that asks and never reads cannot make the relay
compute answers for it without end.

Connections are counted and capped from the moment they are accepted
(:mod:`.connections`); each user's messages pass a token bucket and count against the
user's storage quota (:class:`~.limits.Limits`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from ..clock import Clock, SystemClock
from ..exceptions import (
    ConnectionLimitError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
    SpacenbError,
)
from ..protocol import frames
from ..protocol.frames import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ErrorFrame,
    Event,
    Hello,
    JoinRequested,
    Presence,
    Request,
    Response,
    SpaceInfo,
    parse_client_frame,
    request_id_of,
)
from ..protocol.keys import IdentityKeys
from ..protocol.statelog import SpaceState, StateEvent
from ..protocol.wrap import WrappedKey
from .connections import ConnectionGuard
from .handlers import HANDLERS
from .handlers.membership import after_foreign_event
from .limits import Limits, TokenBucket
from .storage import Storage

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["MAX_BUFFERED", "WS_MAX_SIZE", "LocalMember", "Relay", "Session"]

log = logging.getLogger("spacenb.server")

MAX_BUFFERED = Limits().max_buffered  # bytes queued to one client before it is dropped
# websockets closes the connection on a larger message; between MAX_FRAME_BYTES and this,
# the frame is answered with ``too_large`` and the connection stays up.
WS_MAX_SIZE = 2 * MAX_FRAME_BYTES
_BEFORE_AUTH = frozenset({"auth", "ping"})
_BATCHED = frozenset({"send"})  # ops whose writes join the message batch (group commit)
_METERED = frozenset({"send", "edit", "ephemeral"})  # ops that take a token of the user's bucket
# One connection's frames are handled back to back while they take less than this; past it
# the relay lets the others' frames in first.
_TURN = 0.005
# Requests whose answer is a page (milliseconds of work each): they are answered one at a
# time in all, with everyone else's frames in between (see ``_answer_page``), so that
# pages asked for by many connections at once cannot hold up a message for long.
_PAGES = frozenset({"history", "state_log", "list_channels", "keys"})


class Session:
    """One client connection, or an in-process member (the keeper) when ``connection``
    is None. ``username`` is None until ``auth`` succeeds."""

    __slots__ = ("closing", "connection", "nonce", "spaces", "username")

    def __init__(self, connection: ServerConnection | None, username: str | None = None):
        self.connection = connection
        self.username = username
        self.nonce = os.urandom(32)
        self.spaces: set[str] = set()  # subscribed space ids
        self.closing = False  # close after answering (wrong app key)


class Relay:
    """The relay's state and behaviour, independent of how it is served.

    ``storage`` holds everything persistent; ``relay_keys`` signs shard tickets; ``keeper``
    is the keeper's username (reserved: nobody else may sign up with it);
    ``shard_stores`` and ``shards_needed`` are handed out with tickets.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        app_key: str,
        relay_keys: IdentityKeys,
        keeper: str | None = None,
        clock: Clock | None = None,
        shard_stores: Sequence[str] = (),
        shards_needed: int = 0,
        limits: Limits | None = None,
        max_buffered: int | None = None,
    ) -> None:
        self.storage = storage
        self.app_key = app_key
        self.relay_keys = relay_keys
        self.keeper = keeper
        self.clock: Clock = clock or SystemClock()
        self.shard_stores = tuple(shard_stores)
        self.shards_needed = shards_needed
        self.limits = limits or Limits()
        self.max_buffered = self.limits.max_buffered if max_buffered is None else max_buffered
        self.guard = ConnectionGuard(self.limits)
        self._buckets: dict[str, TokenBucket] = {}
        self._usage: dict[str, list[int]] = {}  # username → [messages, ciphertext bytes]
        self.dropped_slow = 0  # connections dropped for not reading, for figures
        self.keeper_inbox: Callable[[JoinRequested], None] | None = None
        # With several relays on one database: live delivery, presence, limits and the
        # keeper across them (None on SQLite).
        self.cluster: Cluster | None = None
        self._subscribers: dict[str, set[Session]] = {}
        self._online: dict[str, Counter[str]] = {}  # space → username → subscribed connections
        self._by_user: dict[str, set[Session]] = {}
        self._states: dict[str, SpaceState] = {}
        # Answers and events wait here until the message batch is committed (one commit
        # per event-loop iteration under load), then are written in order.
        self._outbox: list[tuple[Sequence[Session], str]] = []
        self._keeper_outbox: list[JoinRequested] = []
        self._batch: list[tuple[int, int, int]] = []  # outbox spans of uncommitted sends
        self._flush_scheduled = False
        self._closed = False
        self._pages = asyncio.Lock()
        self._pages_waiting = 0

    def now_us(self) -> int:
        return self.clock.now_us()

    def close(self) -> None:
        """Commit and write what is pending; the relay then handles nothing more."""
        self.flush()
        self._closed = True

    # ------------------------------------------------------------------ connections

    async def serve_connection(self, connection: ServerConnection) -> None:
        """The websockets handler: greet, then answer frames until the client leaves."""
        session = Session(connection)
        self._write([session], self.hello(session).to_json())
        loop = asyncio.get_running_loop()
        try:
            turn = loop.time()
            async for data in connection:
                request = self.parse_frame(session, data)
                if request is not None and request.OP in _PAGES:
                    await self._answer_page(session, request)
                    turn = loop.time()
                elif request is not None:
                    self.answer(session, request)
                if session.closing:
                    self.flush()
                    await connection.close(CloseCode.POLICY_VIOLATION, "authentication failed")
                    break
                transport = connection.transport
                if transport.is_closing():
                    break  # dropped (too slow a reader): its queued requests go unanswered
                if transport.get_write_buffer_size() > MAX_FRAME_BYTES:
                    self.flush()
                    while (
                        transport.get_write_buffer_size() > MAX_FRAME_BYTES // 2
                        and not transport.is_closing()
                    ):
                        await asyncio.sleep(0.05)  # its answers first: read it no further
                    turn = loop.time()
                elif loop.time() - turn > _TURN:
                    await asyncio.sleep(0)  # the others' turn (the answers are flushed first)
                    turn = loop.time()
        except ConnectionClosed:
            pass
        finally:
            self.close_session(session)

    async def _answer_page(self, session: Session, request: Request[Any]) -> None:
        """Answer a page request, one at a time in all. While others wait for theirs, the
        loop is left to everything else for as long as the page took: pages asked for by
        many connections at once take at most half the relay's time."""
        loop = asyncio.get_running_loop()
        self._pages_waiting += 1
        await asyncio.sleep(0)  # pages asked for in this same turn queue up first
        async with self._pages:
            self._pages_waiting -= 1
            started = loop.time()
            self.answer(session, request)
            if self._pages_waiting:
                await asyncio.sleep(loop.time() - started)
        await asyncio.sleep(0)  # the others' frames before this connection's next

    def hello(self, session: Session) -> Hello:
        return Hello("spacenb", PROTOCOL_VERSION, session.nonce, self.keeper)

    def handle_frame(self, session: Session, data: str | bytes) -> None:
        """Answer one frame: a result or an error, then the events it caused.

        Both are written by the next :meth:`flush` (scheduled for the end of this
        event-loop iteration), after the messages stored meanwhile are committed.
        """
        request = self.parse_frame(session, data)
        if request is not None:
            self.answer(session, request)

    def parse_frame(self, session: Session, data: str | bytes) -> Request[Any] | None:
        """The request in ``data``, or None once its error is queued for the session."""
        try:
            return parse_client_frame(data)
        except Exception as exc:
            if not isinstance(exc, SpacenbError):
                log.exception("parsing a frame failed")
                exc = ServerError("internal error (logged)")
            rid = request_id_of(data) if isinstance(data, str) else None
            self._outbox.append(([session], ErrorFrame.of(rid, exc).to_json()))
            self._schedule_flush()
            return None

    def answer(self, session: Session, request: Request[Any]) -> None:
        """Run a parsed request; queue its answer and the events it caused."""
        batched = request.OP in _BATCHED
        if not batched:
            self._commit()  # before ``mark``: a failed commit reshapes the outbox
        mark = len(self._outbox)
        try:
            reply = Response.of(request.id, self.call(session, request)).to_json()
        except SpacenbError as exc:
            reply = ErrorFrame.of(request.id, exc).to_json()
        except Exception:
            log.exception("request %r failed", request.OP)
            reply = ErrorFrame(request.id, "server_error", "internal error (logged)").to_json()
        else:
            if batched:
                self._batch.append((mark, len(self._outbox) + 1, request.id))
        self._outbox.insert(mark, ([session], reply))
        self._schedule_flush()

    def call(self, session: Session, request: Request[Any]) -> Any:
        """Authorise and run one request; its events wait in the outbox for :meth:`flush`.

        Raises the :class:`SpacenbError` that refuses it.
        """
        if session.username is None and request.OP not in _BEFORE_AUTH:
            raise PermissionDeniedError("not authenticated: send auth first")
        if request.OP in _METERED and session.connection is not None:
            self._take_token(session.username)
        if request.OP not in _BATCHED:
            self._commit()
        return HANDLERS[request.OP](self, session, request)

    def call_local(self, session: Session, request: Request[Any]) -> Any:
        """:meth:`call` for an in-process member, pushing its events at once."""
        try:
            return self.call(session, request)
        finally:
            self.flush()

    def check_room(self, session: Session, username: str) -> None:
        """Before signing ``session`` in as ``username``: :class:`ConnectionLimitError` if
        that user, or the session's address, has as many connections as allowed."""
        if session.connection is None:
            return
        cap = self.limits.max_connections_per_user
        if len(self._by_user.get(username, ())) >= cap:
            raise ConnectionLimitError(
                f"{username!r} has {cap} connections open already "
                "(max_connections_per_user): close one first"
            )
        self.guard.check_room(session.connection)

    def bind(self, session: Session, username: str) -> None:
        """Mark the session as signed in as ``username``."""
        session.username = username
        if session.connection is not None:
            self._by_user.setdefault(username, set()).add(session)
            self.guard.signed_in(session.connection)

    # ------------------------------------------------------------------ rates and quotas

    def _take_token(self, username: str | None) -> None:
        rate = self.limits.message_rate
        if rate is None or username is None:
            return
        if self.cluster is not None:
            self.cluster.take_token(username)
            return
        now = asyncio.get_running_loop().time()
        bucket = self._buckets.get(username)
        if bucket is None:
            if len(self._buckets) > 10_000:  # forget the full ones: they are as new
                self._buckets = {u: b for u, b in self._buckets.items() if not b.full(now)}
            bucket = self._buckets[username] = TokenBucket(rate, self.limits.message_burst, now)
        wait = bucket.take(now)
        if wait:
            raise RateLimitedError(
                f"rate limit: at most {rate:g} messages per second per user "
                f"(bursts of {self.limits.message_burst}); try again in {wait:.2f} s"
            )

    def _usage_of(self, username: str) -> list[int]:
        usage = self._usage.get(username)
        if usage is None:
            known = self.storage.message_usage(username)
            usage = self._usage[username] = list(known) if known is not None else [0, 0]
        return usage

    def charge_message(self, username: str, size: int, *, count: int = 1) -> None:
        """Count ``count`` more stored messages and ``size`` more ciphertext bytes against
        ``username``'s quota; :class:`QuotaExceededError` (and nothing counted) if that
        goes over it. Negative values give back."""
        if self.cluster is not None:
            self.cluster.charge(username, size, count)
            return
        usage = self._usage_of(username)
        most_messages = self.limits.max_messages_per_user
        most_bytes = self.limits.max_message_bytes_per_user
        if count > 0 and most_messages is not None and usage[0] + count > most_messages:
            raise QuotaExceededError(
                f"{username!r} stores {usage[0]} messages, the most a user may "
                f"(max_messages_per_user = {most_messages}): delete some"
            )
        if size > 0 and most_bytes is not None and usage[1] + size > most_bytes:
            raise QuotaExceededError(
                f"{username!r} stores {usage[1]} bytes of messages; this one would take it "
                f"past the quota (max_message_bytes_per_user = {most_bytes}): delete some, "
                "or send files"
            )
        usage[0] = max(usage[0] + count, 0)
        usage[1] = max(usage[1] + size, 0)

    def close_session(self, session: Session) -> None:
        """Forget a closed connection: it leaves every space it was online in."""
        for space_id in list(session.spaces):
            self.unsubscribe(session, space_id)
        if session.username is not None:
            sessions = self._by_user.get(session.username)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del self._by_user[session.username]
        self.flush()

    # ------------------------------------------------------------------ lookups

    def state(self, space_id: str) -> SpaceState | None:
        """The space's state, derived from its stored log (None if there is no such space).

        The relay checked every stored event before storing it, so the log is replayed
        here without verifying signatures again; it is kept in memory from then on.
        """
        state = self._states.get(space_id)
        if state is None:
            if not isinstance(space_id, str) or self.storage.get_space(space_id) is None:
                return None
            state = SpaceState.from_events(self.storage.state_events(space_id), verify=False)
            self._states[space_id] = state
        return state

    def remember_state(self, state: SpaceState) -> None:
        """Cache the state of a space just created."""
        self._states[state.space_id] = state

    def apply_state(self, state: SpaceState, event: StateEvent) -> None:
        """Make a stored event the head of the cached state and push it to subscribers."""
        state.apply(event, verify=False)
        self.push_space(frames.StatePushed(state.space_id, event), state.space_id)

    def catch_up(self, state: SpaceState) -> None:
        """Apply (and push) the events stored after the cached head: another relay on the
        same database appended them (their effects on this relay's connections follow)."""
        for event in self.storage.state_events(state.space_id, since=state.head_seq + 1):
            self.apply_state(state, event)
            after_foreign_event(self, state, event)

    def space_info(self, state: SpaceState) -> SpaceInfo:
        """The relay's summary of a space (clients derive the same from the log)."""
        keeper = state.keeper if state.keeper in state.members else None
        return SpaceInfo(
            state.space_id, state.owner, state.policy, state.private, state.manual_admit,
            state.name, state.epoch, keeper, state.created_at_us, state.head_seq,
        )  # fmt: skip

    # ------------------------------------------------------------------ presence

    def online(self, space_id: str) -> tuple[str, ...]:
        """Usernames with at least one connection subscribed to the space (through any
        relay of the service), sorted."""
        here = self._online.get(space_id, ())
        if self.cluster is None:
            return tuple(sorted(here))
        return tuple(sorted(self.cluster.online_elsewhere(space_id).union(here)))

    def subscribe(self, session: Session, space_id: str) -> None:
        """Deliver the space's events to this connection; push presence if it changed."""
        subscribers = self._subscribers.get(space_id)
        if subscribers is None:
            if self.cluster is not None:
                self.cluster.watch(space_id)
            subscribers = self._subscribers[space_id] = set()
        if session in subscribers:
            return
        subscribers.add(session)
        session.spaces.add(space_id)
        user = session.username
        if user is not None:
            online = self._online.setdefault(space_id, Counter())
            online[user] += 1
            if online[user] == 1 and (
                self.cluster is None or self.cluster.went_online(space_id, user)
            ):
                self.push_space(Presence(space_id, (user,), ()), space_id)

    def unsubscribe(self, session: Session, space_id: str) -> None:
        """Stop delivering the space's events to this connection."""
        subscribers = self._subscribers.get(space_id)
        if subscribers is None or session not in subscribers:
            session.spaces.discard(space_id)
            return
        subscribers.discard(session)
        session.spaces.discard(space_id)
        user = session.username
        online = self._online.get(space_id)
        if user is not None and online is not None:
            online[user] -= 1
            if online[user] <= 0:
                del online[user]
                if not online:
                    del self._online[space_id]
                if self.cluster is None or self.cluster.went_offline(space_id, user):
                    self.push_space(Presence(space_id, (), (user,)), space_id)
        if not subscribers:
            del self._subscribers[space_id]
            if self.cluster is not None:
                self.cluster.unwatch(space_id)

    def drop_member(self, space_id: str, username: str) -> None:
        """Unsubscribe every connection of a user who is no longer a member."""
        for session in [s for s in self._subscribers.get(space_id, ()) if s.username == username]:
            self.unsubscribe(session, space_id)

    # ------------------------------------------------------------------ pushing

    def push_space(self, event: Event, space_id: str, *, exclude: Session | None = None) -> None:
        """Queue ``event`` for every connection subscribed to the space (but ``exclude``)."""
        targets = [s for s in self._subscribers.get(space_id, ()) if s is not exclude]
        if targets:
            self._outbox.append((targets, event.to_json()))

    def push_user(self, event: Event, username: str) -> None:
        """Queue ``event`` for every connection of ``username``."""
        targets = list(self._by_user.get(username, ()))
        if targets:
            self._outbox.append((targets, event.to_json()))

    def push_message(self, event: frames.MessagePushed, space_id: str) -> None:
        """Queue a message just stored for the space's subscribers. With several relays it
        is read back after the commit instead, in handle order with the other relays'."""
        if self.cluster is None:
            self.push_space(event, space_id)

    def push_signal(self, event: Event, space_id: str, *, exclude: Session | None = None) -> None:
        """:meth:`push_space` for an ephemeral signal, which also reaches the subscribers
        of the other relays of the service (never stored)."""
        self.push_space(event, space_id, exclude=exclude)
        if self.cluster is not None:
            self.cluster.publish_signal(space_id, event.to_json())

    def push_to(self, event: Event, session: Session) -> None:
        """Queue ``event`` for one connection."""
        self._outbox.append(([session], event.to_json()))

    def push_keeper(self, event: JoinRequested) -> None:
        """Queue a join request for the keeper (on whichever relay runs it)."""
        if self.cluster is not None and not self.cluster.keeper_active:
            self.cluster.announce_join(event.space_id, event.member_id)
        elif self.keeper_inbox is not None:
            self._keeper_outbox.append(event)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def _commit(self) -> None:
        """Commit the message batch. If that fails, its sends are answered ``server_error``
        instead and their events are dropped."""
        batch, self._batch = self._batch, []
        try:
            self.storage.commit()
        except Exception:
            log.exception("committing %d messages failed; their senders are told", len(batch))
            self.storage.rollback()
            for start, end, request_id in reversed(batch):
                error = ErrorFrame(request_id, "server_error", "could not store the message")
                self._outbox[start:end] = [(self._outbox[start][0], error.to_json())]

    def flush(self) -> None:
        """Commit the message batch, then write every queued answer and event in order."""
        self._flush_scheduled = False
        if self._closed:
            return
        self._commit()
        if self.cluster is not None:
            self.cluster.push_committed()
        outbox, self._outbox = self._outbox, []
        for targets, text in outbox:
            self._write(targets, text)
        keeper_outbox, self._keeper_outbox = self._keeper_outbox, []
        if self.keeper_inbox is not None:
            for event in keeper_outbox:
                self.keeper_inbox(event)

    def _write(self, sessions: Iterable[Session], text: str) -> None:
        """Put ``text`` in each session's send buffer without waiting; drop a connection
        whose buffer this write took past ``max_buffered`` (its memory is freed at once)."""
        connections = [
            s.connection
            for s in sessions
            if s.connection is not None and not s.connection.transport.is_closing()
        ]  # (a lost connection is skipped before its handler has caught up with the loss)
        if not connections:
            return
        broadcast(connections, text)
        for connection in connections:
            transport = connection.transport
            if transport.get_write_buffer_size() > self.max_buffered and not transport.is_closing():
                log.warning(
                    "dropping %s: more than %d bytes wait to be written to it",
                    getattr(connection, "remote_address", None),
                    self.max_buffered,
                )
                self.dropped_slow += 1
                transport.abort()


class LocalMember:
    """The relay as an in-process member sees it (the keeper's
    :class:`~spacenb.server.keeper.KeeperPort`): each method is the request a client
    would send, through the same handlers and authorisation."""

    def __init__(self, relay: Relay, username: str) -> None:
        self._relay = relay
        self._session = Session(None, username)
        self.username = username

    def _call(self, request: Request[Any]) -> Any:
        return self._relay.call_local(self._session, request)

    def state_log(self, space_id: str, since: int) -> Sequence[StateEvent]:
        result: frames.StateLogPage = self._call(
            frames.GetStateLog(0, space_id, since, frames.MAX_LOG_PAGE)
        )
        return result.events

    def fetch_keys(self, space_id: str) -> Sequence[WrappedKey]:
        keys: list[WrappedKey] = []
        since: int | None = None
        while True:
            result: frames.KeysResult = self._call(frames.FetchKeys(0, space_id, since))
            keys.extend(result.keys)
            if result.next_epoch is None:
                return keys
            since = result.next_epoch

    def admit(self, space_id: str, member: str, keys: Sequence[WrappedKey]) -> None:
        self._call(frames.Admit(0, space_id, member, tuple(keys)))

    def pending_joins(self) -> Sequence[tuple[str, str]]:
        return [(p.space_id, p.username) for p in self._relay.storage.join_requests()]
