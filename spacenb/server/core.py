"""The relay core: every rule of the relay, with no transport and no storage rules.

Requests come in (:meth:`RelayCore.receive` takes a frame's text, :meth:`RelayCore.call`
a parsed request); the core authorises them, checks them against the space's verified
state log, decides handles, link use, rates and quotas, tells storage what to write, and
queues its answers: frames to send and to whom (one session, a user's sessions, a space's
subscribers). :meth:`RelayCore.drain` commits the writes made meanwhile and hands the
queued frames over, in order, to whoever serves the relay. Nothing is acknowledged or
pushed before it is durable.

The split, from the bottom up:

- :mod:`spacenb.protocol.relayrules`: the pure decisions (who may see or act, envelope
  binding, link use, the handle rule, token buckets, quotas, what fits in a page), and
  :class:`~spacenb.protocol.statelog.SpaceState`, the state-log rules members apply too.
- here: the state those decisions need that lives between requests (sessions and their
  subscriptions, presence, the cached state of each space, token buckets, quota usage,
  the outbox and the group-commit batch), over the abstract
  :class:`~spacenb.server.storage.Storage`. It is not in ``protocol/`` because it calls
  storage, which is I/O; it imports neither websockets nor asyncio, so a test (or another
  server) drives it with plain calls.
- :mod:`.handlers`: one function per request, and the one table from op to handler.
- :mod:`.relay`: the websockets adapter (connections, buffering, slow readers, pacing).
- :mod:`.cluster`: with several relays on PostgreSQL, the :class:`Peers` the core asks
  about shared limits, presence and delivery.

Storage decides nothing: it performs the writes it is told to, each one atomic (a state
event is appended only at the seq it names, else :class:`StaleStateError`; a message gets
the handle :func:`~spacenb.protocol.relayrules.next_handle` gives for the time the core
passes).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..clock import Clock, SystemClock
from ..exceptions import ConnectionLimitError, PermissionDeniedError, ServerError, SpacenbError
from ..protocol import frames
from ..protocol.frames import (
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
from ..protocol.relayrules import TokenBucket, quota_refusal, rate_limited
from ..protocol.statelog import SpaceState, StateEvent
from .handlers import REQUEST_TABLE, Route
from .handlers.membership import after_foreign_event
from .limits import Limits
from .storage import Storage, StoredBefore

__all__ = ["Admission", "Outgoing", "Peers", "RelayCore", "Session"]

log = logging.getLogger("spacenb.server")

Outgoing = tuple[Sequence["Session"], str]  # the sessions a frame goes to, and its text


class Session:
    """One client connection, or an in-process member (the keeper) when ``connection``
    is None. ``connection`` is the serving layer's handle, opaque to the core.
    ``username`` is None until ``auth`` succeeds."""

    __slots__ = ("closing", "connection", "nonce", "spaces", "username")

    def __init__(self, connection: Any = None, username: str | None = None):
        self.connection = connection
        self.username = username
        self.nonce = os.urandom(32)
        self.spaces: set[str] = set()  # subscribed space ids
        self.closing = False  # close after answering (wrong app key)


class Admission(Protocol):
    """What the serving layer counts per address: asked before a sign-in, told after."""

    def check_room(self, connection: Any) -> None: ...

    def signed_in(self, connection: Any) -> None: ...


class CommitJob(Protocol):
    """A group commit (and read-back) in flight off the event loop."""

    def done(self) -> bool: ...
    def wait(self) -> None: ...


class Peers(Protocol):
    """The other relays on the same database (:class:`~spacenb.server.cluster.Cluster`):
    limits, presence, signals and the keeper they share, and the group commit, which
    they run off the event loop.

    A ``send`` only stages its message (``staged`` counts them); :meth:`begin_commit`
    hands the staged batch and the spaces to read back to the commit thread (None if
    there is nothing to do); once the job is done, :meth:`end_commit` gives each staged
    message's handle or refusal (None: the batch failed), and :meth:`push_committed`
    queues the messages read back. ``charge`` with ``count > 0`` is a message being
    sent: its quota is charged in the batch's transaction instead."""

    keeper_active: bool

    def staged(self) -> int: ...
    def begin_commit(self) -> CommitJob | None: ...
    def end_commit(self, job: CommitJob) -> Sequence[int | SpacenbError] | None: ...

    def take_token(self, username: str) -> None: ...
    def give_back_token(self, username: str) -> None: ...
    def charge(self, username: str, size: int, count: int) -> None: ...
    def watch(self, space_id: str) -> None: ...
    def unwatch(self, space_id: str) -> None: ...
    def online_elsewhere(self, space_id: str) -> set[str]: ...
    def went_online(self, space_id: str, username: str) -> bool: ...
    def went_offline(self, space_id: str, username: str) -> bool: ...
    def publish_signal(self, space_id: str, text: str) -> None: ...
    def announce_join(self, space_id: str, username: str) -> None: ...
    def push_committed(self, job: CommitJob) -> None: ...


class RelayCore:
    """The relay's state and rules, independent of how it is served.

    ``storage`` holds everything persistent; ``relay_keys`` signs shard tickets; ``keeper``
    is the keeper's username (reserved: nobody else may sign up with it);
    ``shard_stores`` and ``shards_needed`` are handed out with tickets; ``table`` maps each
    op to its :class:`~.handlers.Route` (:data:`~.handlers.REQUEST_TABLE` by default).
    ``wake`` is called whenever frames are queued, so the serving layer can
    :meth:`drain` soon; ``admission`` counts connections per address; ``monotonic``
    times the token buckets.
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
        table: Mapping[str, Route] = REQUEST_TABLE,
        wake: Callable[[], None] = lambda: None,
        admission: Admission | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self.app_key = app_key
        self.relay_keys = relay_keys
        self.keeper = keeper
        self.clock: Clock = clock or SystemClock()
        self.shard_stores = tuple(shard_stores)
        self.shards_needed = shards_needed
        self.limits = limits or Limits()
        self.table = table
        self.wake = wake
        self.admission = admission
        self.monotonic = monotonic
        self.keeper_inbox: Callable[[JoinRequested], None] | None = None
        self.peers: Peers | None = None  # several relays on one database (None on SQLite)
        self._buckets: dict[str, TokenBucket] = {}
        self._usage: dict[str, list[int]] = {}  # username → [messages, ciphertext bytes]
        self._subscribers: dict[str, set[Session]] = {}
        self._online: dict[str, Counter[str]] = {}  # space → username → subscribed connections
        self._by_user: dict[str, set[Session]] = {}
        self._states: dict[str, SpaceState] = {}
        # Answers and events wait here until the message batch is committed (one commit
        # per event-loop iteration under load), then are handed over in order.
        self._outbox: list[Outgoing] = []
        self._keeper_outbox: list[JoinRequested] = []
        # Outbox spans of uncommitted sends: (start, end, request id, staged index). With
        # several relays the answer at ``start`` is a placeholder until the commit gives
        # the handle (staged index: the message's place in the batch the peers commit).
        self._batch: list[tuple[int, int, int, int]] = []
        # With several relays: the job committing off the loop, the outbox it holds back
        # (its senders' answers wait for it, and what was queued after them) and its
        # spans; and the frames that are ready to go, ahead of the outbox.
        self._job: CommitJob | None = None
        self._job_frames: list[Outgoing] = []
        self._job_spans: list[tuple[int, int, int, int]] = []
        self._ready: list[Outgoing] = []

    def now_us(self) -> int:
        return self.clock.now_us()

    def hello(self, session: Session) -> Hello:
        return Hello("spacenb", PROTOCOL_VERSION, session.nonce, self.keeper)

    # ------------------------------------------------------------------ requests

    def receive(self, session: Session, data: str | bytes) -> None:
        """Answer one frame: a result or an error, then the events it caused (queued for
        :meth:`drain`)."""
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
            self.wake()
            return None

    def answer(self, session: Session, request: Request[Any]) -> None:
        """Run a parsed request; queue its answer and the events it caused."""
        batched = self.table[request.OP].batched
        if not batched:
            self._commit()  # before ``mark``: a failed commit reshapes the outbox
        mark = len(self._outbox)
        staged = self.peers.staged() if batched and self.peers is not None else -1
        try:
            reply = Response.of(request.id, self.call(session, request)).to_json()
        except SpacenbError as exc:
            reply = ErrorFrame.of(request.id, exc).to_json()
        except Exception:
            log.exception("request %r failed", request.OP)
            reply = ErrorFrame(request.id, "server_error", "internal error (logged)").to_json()
        else:
            if batched:
                index = -1
                if staged >= 0 and self.peers is not None and self.peers.staged() > staged:
                    index, reply = staged, ""  # answered with the handle once committed
                self._batch.append((mark, len(self._outbox) + 1, request.id, index))
        self._outbox.insert(mark, ([session], reply))
        self.wake()

    def call(self, session: Session, request: Request[Any]) -> Any:
        """Authorise and run one request; its events wait in the outbox for :meth:`drain`.

        Raises the :class:`SpacenbError` that refuses it.
        """
        route = self.table[request.OP]
        if session.username is None and not route.before_auth:
            raise PermissionDeniedError("not authenticated: send auth first")
        if route.metered and session.connection is not None:
            self._take_token(session.username)
        if not route.batched:
            self._commit()
        return route.handler(self, session, request)

    def is_page(self, request: Request[Any]) -> bool:
        """Whether the answer is a page (milliseconds of work), which the serving layer
        paces."""
        return self.table[request.OP].page

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
        if self.admission is not None:
            self.admission.check_room(session.connection)

    def bind(self, session: Session, username: str) -> None:
        """Mark the session as signed in as ``username``."""
        session.username = username
        if session.connection is not None:
            self._by_user.setdefault(username, set()).add(session)
            if self.admission is not None:
                self.admission.signed_in(session.connection)

    # ------------------------------------------------------------------ rates and quotas

    def _take_token(self, username: str | None) -> None:
        rate = self.limits.message_rate
        if rate is None or username is None:
            return
        if self.peers is not None:
            self.peers.take_token(username)
            return
        now = self.monotonic()
        bucket = self._buckets.get(username)
        if bucket is None:
            if len(self._buckets) > 10_000:  # forget the full ones: they are as new
                self._buckets = {u: b for u, b in self._buckets.items() if not b.full(now)}
            bucket = self._buckets[username] = TokenBucket(rate, self.limits.message_burst, now)
        wait = bucket.take(now)
        if wait:
            raise rate_limited(rate, self.limits.message_burst, wait)

    def give_back_token(self, session: Session) -> None:
        """Return the token a metered request of ``session`` took, when it cost nothing:
        a resend of a message stored already is not counted twice."""
        username = session.username
        if self.limits.message_rate is None or username is None or session.connection is None:
            return
        if self.peers is not None:
            self.peers.give_back_token(username)
            return
        bucket = self._buckets.get(username)
        if bucket is not None:
            bucket.give_back()

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
        if self.peers is not None:
            self.peers.charge(username, size, count)
            return
        usage = self._usage_of(username)
        refusal = quota_refusal(
            username,
            (usage[0], usage[1]),
            count=count,
            size=size,
            most_messages=self.limits.max_messages_per_user,
            most_bytes=self.limits.max_message_bytes_per_user,
        )
        if refusal is not None:
            raise refusal
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

    def cached_state(self, space_id: str) -> SpaceState | None:
        """The space's state if it is in memory (never reads storage)."""
        return self._states.get(space_id)

    def cached_states(self) -> list[SpaceState]:
        """Every space state in memory."""
        return list(self._states.values())

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
        if self.peers is None:
            return tuple(sorted(here))
        return tuple(sorted(self.peers.online_elsewhere(space_id).union(here)))

    def online_here(self) -> dict[str, tuple[str, ...]]:
        """Space → the usernames subscribed to it through this relay's own connections."""
        return {space_id: tuple(users) for space_id, users in self._online.items()}

    def is_connected(self, username: str) -> bool:
        """Whether ``username`` has a signed-in connection to this relay."""
        return bool(self._by_user.get(username))

    def is_online_here(self, space_id: str, username: str) -> bool:
        """Whether ``username`` is subscribed to the space through this relay."""
        online = self._online.get(space_id)
        return online is not None and online[username] > 0

    def subscribe(self, session: Session, space_id: str) -> None:
        """Deliver the space's events to this connection; push presence if it changed."""
        subscribers = self._subscribers.get(space_id)
        if subscribers is None:
            if self.peers is not None:
                self.peers.watch(space_id)
            subscribers = self._subscribers[space_id] = set()
        if session in subscribers:
            return
        subscribers.add(session)
        session.spaces.add(space_id)
        user = session.username
        if user is not None:
            online = self._online.setdefault(space_id, Counter())
            online[user] += 1
            if online[user] == 1 and (self.peers is None or self.peers.went_online(space_id, user)):
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
                if self.peers is None or self.peers.went_offline(space_id, user):
                    self.push_space(Presence(space_id, (), (user,)), space_id)
        if not subscribers:
            del self._subscribers[space_id]
            if self.peers is not None:
                self.peers.unwatch(space_id)

    def drop_member(self, space_id: str, username: str) -> None:
        """Unsubscribe every connection of a user who is no longer a member."""
        for session in [s for s in self._subscribers.get(space_id, ()) if s.username == username]:
            self.unsubscribe(session, space_id)

    # ------------------------------------------------------------------ queueing frames

    def push_space(self, event: Event, space_id: str, *, exclude: Session | None = None) -> None:
        """Queue ``event`` for every connection subscribed to the space (but ``exclude``)."""
        targets = [s for s in self._subscribers.get(space_id, ()) if s is not exclude]
        if targets:
            self._outbox.append((targets, event.to_json()))

    def push_space_text(self, text: str, space_id: str) -> None:
        """Queue a frame already encoded (another relay's signal) for the space's
        subscribers."""
        self._outbox.append((list(self._subscribers.get(space_id, ())), text))

    def push_user(self, event: Event, username: str) -> None:
        """Queue ``event`` for every connection of ``username``."""
        targets = list(self._by_user.get(username, ()))
        if targets:
            self._outbox.append((targets, event.to_json()))

    def push_message(self, event: frames.MessagePushed, space_id: str) -> None:
        """Queue a message just stored for the space's subscribers. With several relays it
        is read back after the commit instead, in handle order with the other relays'."""
        if self.peers is None:
            self.push_space(event, space_id)

    def push_signal(self, event: Event, space_id: str, *, exclude: Session | None = None) -> None:
        """:meth:`push_space` for an ephemeral signal, which also reaches the subscribers
        of the other relays of the service (never stored)."""
        self.push_space(event, space_id, exclude=exclude)
        if self.peers is not None:
            self.peers.publish_signal(space_id, event.to_json())

    def push_to(self, event: Event, session: Session) -> None:
        """Queue ``event`` for one connection."""
        self._outbox.append(([session], event.to_json()))

    def push_keeper(self, event: JoinRequested) -> None:
        """Queue a join request for the keeper (on whichever relay runs it)."""
        if self.peers is not None and not self.peers.keeper_active:
            self.peers.announce_join(event.space_id, event.member_id)
        elif self.keeper_inbox is not None:
            self._keeper_outbox.append(event)

    # ------------------------------------------------------------------ committing

    def _commit(self) -> None:
        """Commit the message batch now (a request that is not a send needs it committed
        first). If that fails, its sends are answered ``server_error`` instead and their
        events are dropped. With several relays this waits for the commit thread."""
        if self.peers is not None:
            self.settle()
            return
        batch, self._batch = self._batch, []
        try:
            self.storage.commit()
        except Exception:
            log.exception("committing %d messages failed; their senders are told", len(batch))
            self.storage.rollback()
            for start, end, request_id, _ in reversed(batch):
                error = ErrorFrame(request_id, "server_error", "could not store the message")
                self._outbox[start:end] = [(self._outbox[start][0], error.to_json())]

    @property
    def committing(self) -> bool:
        """Whether a group commit is in flight off the loop (several relays)."""
        return self._job is not None

    def settle(self) -> None:
        """With several relays: wait for the commit in flight, then commit what is staged,
        so that nothing is left uncommitted (before another write, and on stopping)."""
        if self._job is not None:
            self._job.wait()
            self._finish_job()
        if self._batch:
            self._start_job()
            if self._job is not None:
                self._job.wait()
                self._finish_job()

    def _advance(self) -> None:
        """With several relays: collect the commit in flight if it is done, and start the
        next one with what was staged (and read back) meanwhile; never waits."""
        if self._job is not None:
            if not self._job.done():
                return
            self._finish_job()
        self._start_job()

    def _start_job(self) -> None:
        assert self.peers is not None and self._job is None
        spans, self._batch = self._batch, []
        first = spans[0][0] if spans else len(self._outbox)
        self._ready.extend(self._outbox[:first])  # queued ahead of every waiting answer
        held, self._outbox = self._outbox[first:], []
        job = self.peers.begin_commit()
        self._job, self._job_frames = job, held
        self._job_spans = [(a - first, b - first, rid, i) for a, b, rid, i in spans]
        if job is None:  # nothing to commit or read (or the peers stopped)
            self._job = None
            self._resolve(None if spans else [], held, self._job_spans)
            self._ready.extend(held)

    def _finish_job(self) -> None:
        assert self.peers is not None and self._job is not None
        job, held, spans = self._job, self._job_frames, self._job_spans
        self._job, self._job_frames, self._job_spans = None, [], []
        self._resolve(self.peers.end_commit(job), held, spans)
        # The messages read back go right after the answers of the batch that stored them.
        saved, self._outbox = self._outbox, held
        try:
            self.peers.push_committed(job)
        except Exception:
            log.exception("pushing the messages read back failed")
        finally:
            held, self._outbox = self._outbox, saved
        self._ready.extend(held)

    def _resolve(
        self,
        outcomes: Sequence[int | SpacenbError] | None,
        held: list[Outgoing],
        spans: Sequence[tuple[int, int, int, int]],
    ) -> None:
        """Put each committed send's answer in place: its handle, its refusal, or (the
        batch failed) ``server_error`` in place of its answer and events."""
        for start, end, request_id, index in reversed(spans):
            targets = held[start][0]
            if index < 0:
                continue  # answered already (not staged)
            outcome = outcomes[index] if outcomes is not None and index < len(outcomes) else None
            if isinstance(outcome, StoredBefore) and targets:
                self.give_back_token(targets[0])
            if isinstance(outcome, int):
                held[start] = (
                    targets,
                    Response.of(request_id, frames.HandleResult(outcome)).to_json(),
                )
                continue
            if isinstance(outcome, SpacenbError):
                error = ErrorFrame.of(request_id, outcome).to_json()
            else:
                error = ErrorFrame(
                    request_id, "server_error", "could not store the message"
                ).to_json()
            held[start:end] = [(targets, error)]

    def drain(self) -> tuple[list[Outgoing], list[JoinRequested]]:
        """Commit the message batch, then hand over every queued frame, in order, and the
        join requests for the keeper.

        With several relays the commit runs off the loop: this starts it (or collects the
        one in flight) and hands over what does not wait for it; the rest comes with a
        later call (the peers wake the core when the commit is done)."""
        keeper_outbox, self._keeper_outbox = self._keeper_outbox, []
        if self.peers is None:
            self._commit()
            outbox, self._outbox = self._outbox, []
            return outbox, keeper_outbox
        self._advance()
        outbox, self._ready = self._ready, []
        if self._job is None:
            outbox.extend(self._outbox)
            self._outbox = []
        return outbox, keeper_outbox
