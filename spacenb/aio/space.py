"""A space as one member sees it: its verified state log, keys, live events, history, files.

Every rule about what to believe lives in the sans-I/O member core
(:class:`~spacenb.protocol.member.MemberCore`); this class drives it over the relay
connection: it fetches what the core needs (the log, keys, history) and hands the core's
decisions to handlers.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import json
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from ..exceptions import (
    ChannelNotFoundError,
    ConnectionLostError,
    ForkError,
    IdentityChangedError,
    IntegrityError,
    KeyUnavailableError,
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitedError,
    ServerError,
    SpacenbError,
    SpacenbTimeoutError,
    StaleStateError,
    UsageError,
)
from ..protocol import frames
from ..protocol.codec import json_size
from ..protocol.envelope import Envelope, seal_envelope
from ..protocol.frames import UNSENT
from ..protocol.keyring import HistoryPolicy, Keyring
from ..protocol.keys import LinkKeyPair, decode_public_key
from ..protocol.member import MemberCore, Need, Opened, Rejected, new_group_key
from ..protocol.statelog import (
    SpaceState,
    StateEvent,
    key_commitment,
    link_id_of_key,
    make_event,
)
from ..protocol.wrap import WrappedKey
from ..typing import Handler, Progress, Unsubscribe
from . import readahead, verify_pool
from .events import (
    EphemeralEvent,
    JoinRequest,
    MessageDeletedEvent,
    PresenceEvent,
    RejectedEnvelopeEvent,
    SpaceMessageEvent,
    StateLogEntry,
)
from .handlers import Emitter
from .keystore import SpaceSecrets

if TYPE_CHECKING:
    from ..protocol.manifest import Manifest
    from .client import AsyncClient
    from .files import FileSource, FileStat

__all__ = ["AsyncSpace", "History"]

log = logging.getLogger("spacenb")
R = TypeVar("R")
_EPHEMERAL_MEMORY = 10_000
_REACTED_TO = frozenset({"epoch", "delete", "remove", "leave"})  # kinds after_state acts on
_STALE_RETRIES = 40  # appends raced by others; with jittered backoff, ~5 s at worst
_BACKOFF_FIRST = 0.005  # seconds: the first retry's backoff bound, doubling to _BACKOFF_CAP
_BACKOFF_CAP = 0.25
# A relay serving a state-log head below this member's is asked again at once, then after
# 50 ms, doubling to 0.5 s, until the client's log_lag_grace is over (then: ForkError).
_LAG_FIRST = 0.05
_LAG_CAP = 0.5
# A message whose send had an unknown outcome is sent again as it is, this many times at
# most, with a backoff bound of up to _RESEND_CAP (about 15 s in all at worst: enough for
# a relay to reconnect or its database to come back after a restart).
_RESENDS = 16
_RESEND_CAP = 2.0
# Failures after which a send may or may not have been stored.
_OUTCOME_UNKNOWN = (ConnectionLostError, ServerError, SpacenbTimeoutError)


async def stale_backoff(attempt: int, cap: float = _BACKOFF_CAP) -> None:
    """Wait before trying again (signing again on a head another member got first, or
    resending): a random time up to a bound that doubles per attempt, at most ``cap``
    seconds (so that many members joining or appending at once, a class arriving
    together, do not retry in lock step and each get their turn)."""
    await asyncio.sleep(random.uniform(0, min(cap, _BACKOFF_FIRST * 2**attempt)))


def _is_resend(request: frames.Request[Any]) -> bool:
    return isinstance(request, frames.Send) and bool(request.resend)


class KnownMessage(NamedTuple):
    """What a member remembers of a message it saw, to check and sign its edits."""

    author: str
    channel: str
    content_type: str | None
    seq: int
    sid: str
    rev: int


@dataclass(frozen=True, slots=True)
class History:
    """One page of decrypted history, oldest first.

    ``next_cursor`` goes to ``history(before=...)`` for the page before this one (None at
    the start of history). ``unreadable`` counts stored messages this member cannot
    decrypt (epochs before it joined a ``rotate`` space) or that failed verification.
    """

    messages: tuple[SpaceMessageEvent, ...]
    next_cursor: int | None
    unreadable: int = 0


class AsyncSpace:
    """A handle on one space. Get one from ``client.space`` (create, join or ``get``).

    ``read_ahead`` (True unless set False): :meth:`history` fetches the page after the one
    it returns, and has its signatures checked, while the caller works on that one.
    """

    def __init__(
        self,
        client: AsyncClient,
        space_id: str,
        *,
        secrets: SpaceSecrets | None = None,
        info: frames.SpaceInfo | None = None,
        auto_admit: bool = True,
    ) -> None:
        decode_public_key(space_id, "spc", field="space_id")
        self.client = client
        self.id = space_id
        self.info = info  # the relay's summary: display only, never believed
        self.auto_admit = auto_admit
        self._secrets = secrets
        self.core = MemberCore(
            space_id,
            client.username,
            client.identity,
            keyring=secrets.keyring if secrets and len(secrets.keyring) else None,
            marks=secrets.marks if secrets else None,
            trust=client.check_pin,
        )
        self.events = Emitter()
        self._peers: tuple[str, ...] = ()
        self._subscribed = False
        self._seen_ephemeral: OrderedDict[str, None] = OrderedDict()
        # by handle, this member's own messages only (to edit them); others' authors are
        # the core's (author_of): a history of 100,000 would keep 100,000 of these
        self._known_messages: dict[int, KnownMessage] = {}
        # by handle, the newest revision handed to on_message_edited: an edit pushed twice
        # (by two relays) is delivered once, one history() already opened still once
        self._edits_delivered: dict[int, int] = {}
        self._key_waiters: list[asyncio.Future[None]] = []
        self._rotating_to: int | None = None  # the epoch this member is minting, if any
        self._link: tuple[str, Callable[[bytes], bytes]] | None = None  # to read a private log
        self._log_lock = asyncio.Lock()
        self._marks_saved = 0.0
        self._page_limit = frames.MAX_HISTORY_LIMIT  # catch-up pages (halved if refused)
        self._head_changed = False
        self.read_ahead = True
        self._ahead = readahead.PageAhead(client)
        self._edits_seen = 0  # edits pushed or made here: a page fetched ahead may be stale

    # ------------------------------------------------------------------ description

    @property
    def state(self) -> SpaceState | None:
        """The verified state log's derived state (None before it is fetched)."""
        return self.core.state

    @property
    def keyring(self) -> Keyring | None:
        """The group keys this member holds (None until it has been admitted)."""
        ring = self.core.keyring
        return ring if ring is not None and len(ring) else None

    @property
    def policy(self) -> HistoryPolicy | None:
        if self.core.state is not None:
            return self.core.state.policy
        if self.info is not None:
            return self.info.policy
        return self._secrets.keyring.policy if self._secrets else None

    @property
    def name(self) -> str | None:
        if self.core.state is not None:
            return self.core.state.name
        return self.info.name if self.info else None

    @property
    def epoch(self) -> int | None:
        """The newest epoch this member holds a key for."""
        keyring = self.keyring
        return keyring.current_epoch if keyring else None

    def peers(self) -> list[str]:
        """Members online in this space now (the relay's presence, limited to members)."""
        return list(self._peers)

    def is_connected(self) -> bool:
        return self._subscribed and self.client.connection.is_open

    def __repr__(self) -> str:
        label = f"{self.name!r} " if self.name else ""
        return f"<AsyncSpace {label}{self.id} policy={self.policy} epoch={self.epoch}>"

    # ------------------------------------------------------------------ handlers

    def on(self, event: str, handler: Handler) -> Unsubscribe:
        """Register ``handler`` for a named event (``"message"``, ``"message_edited"``,
        ``"message_deleted"``, ``"ephemeral"``, ``"presence"``, ``"join_request"``,
        ``"rejected"``, ``"epoch"``, ``"member"``, ``"state"``, ``"channel:raw_frame"``)."""
        return self.events.on(event, handler)

    def off(self, event: str, handler: Handler) -> None:
        self.events.off(event, handler)

    def on_message(self, handler: Callable[[SpaceMessageEvent], Any]) -> Unsubscribe:
        return self.events.on("message", handler)

    def on_message_edited(self, handler: Callable[[SpaceMessageEvent], Any]) -> Unsubscribe:
        return self.events.on("message_edited", handler)

    def on_message_deleted(self, handler: Callable[[MessageDeletedEvent], Any]) -> Unsubscribe:
        return self.events.on("message_deleted", handler)

    def on_ephemeral(self, handler: Callable[[EphemeralEvent], Any]) -> Unsubscribe:
        return self.events.on("ephemeral", handler)

    def on_join_request(self, handler: Callable[[JoinRequest], Any]) -> Unsubscribe:
        return self.events.on("join_request", handler)

    def on_presence(self, handler: Callable[[PresenceEvent], Any]) -> Unsubscribe:
        return self.events.on("presence", handler)

    def on_rejected(self, handler: Callable[[RejectedEnvelopeEvent], Any]) -> Unsubscribe:
        return self.events.on("rejected", handler)

    # ------------------------------------------------------------------ the state log

    async def sync_log(self) -> list[StateEvent]:
        """Fetch the relay's state log from this member's head on and verify it.

        Returns the events that were new. Raises :class:`ForkError` if the relay's log
        contradicts the one this member verified before (also across restarts, through
        the keystore), :class:`IntegrityError` for an event no entitled member signed;
        both are also reported through ``on_rejected``.

        The relay must serve the member's own head event again, with its hash, and a head
        no lower than the one the member holds (in memory, or persisted from an earlier
        session). A relay whose head is lower (a member rolled back, its newest events,
        such as its removal or a rotation, hidden) is asked again with backoff for
        ``client.log_lag_grace`` seconds, since another relay of the service may just not
        have caught up yet after a failover; meanwhile the member keeps its own head (a
        read from genesis stays unsettled), and if the relay is still lower then, that is
        a :class:`ForkError` (PROTOCOL.md, "The fork rule").
        """
        async with self._log_lock:
            new: list[StateEvent] = []
            loop = asyncio.get_running_loop()
            deadline: float | None = None
            attempt = 0
            below: int | None = None  # the relay's head, while it is below this member's
            while True:
                relay_head = await self._read_log(new, below)
                held = self._held_seq()
                served = min(relay_head, self.core.next_log_seq - 1)
                if served >= held:
                    break
                below = relay_head if relay_head < held else None
                now = loop.time()
                if deadline is None:
                    deadline = now + self.client.log_lag_grace
                    log.info(
                        "spacenb: the relay serves the log of %s up to event %d, below event "
                        "%d held here: asking again for %g s",
                        self.id,
                        served,
                        held,
                        self.client.log_lag_grace,
                    )
                if now >= deadline:
                    error = ForkError(
                        f"the relay serves the state log of {self.id} up to event {served}, "
                        f"below event {held} that this member holds, and still did after "
                        f"{self.client.log_lag_grace:g} s: it rolled this member back, or "
                        "withholds the newest events"
                    )
                    self._reject(None, "relay", str(error))
                    raise error
                # At once first: the relay's event at its head shows a fork without waiting.
                delay = 0.0 if attempt == 0 else _LAG_FIRST * 2 ** (attempt - 1)
                await asyncio.sleep(min(deadline - now, delay, _LAG_CAP))
                attempt += 1
            try:
                new.extend(self.core.finish_log())  # a read from genesis: verified now
            except IntegrityError as exc:
                self._reject(None, "relay", str(exc))
                raise
            self._check_pinned_head()
        if new:
            await self.after_state(new)
        return new

    async def _read_log(self, new: list[StateEvent], below: int | None) -> int:
        """Read the relay's log, page by page, into the core (the new events go to
        ``new``); returns the relay's head. A member holding the log asks from its own
        head event on (or from ``below``, the relay's lower head, whose event it compares
        with its own), so the relay must show it the events it already holds."""
        since = self.core.next_log_seq
        if self.core.state is not None:
            since = max(0, since - 1 if below is None else min(since - 1, below))
        while True:
            link_id, proof = None, None
            if self._link is not None and self.connection_nonce is not None:
                link_id = self._link[0]
                proof = self._link[1](
                    frames.log_read_signed_bytes(
                        self.id, self.client.username, self.connection_nonce
                    )
                )
            page = await self.client.request(
                frames.GetStateLog(
                    UNSENT,
                    space_id=self.id,
                    since=since,
                    limit=frames.MAX_LOG_PAGE,
                    link_id=link_id,
                    proof=proof,
                )
            )
            events, state = page.events, self.core.state
            if state is not None and len(events) > 1 and events[0].seq == state.head_seq:
                events = events[1:]  # the next event's prev shows whether it holds our head
            try:
                new.extend(self.core.extend_log(events, more=True))
            except IntegrityError as exc:
                self._reject(None, "relay", str(exc))
                raise
            asked, since = since, self.core.next_log_seq
            if not page.events or since > page.head_seq or since <= asked:
                return page.head_seq  # the relay's head, or a page that brought nothing new

    def _held_seq(self) -> int:
        """The newest log event this member holds: its verified head, or the head it
        persisted in an earlier session (-1 for none)."""
        state, secrets = self.core.state, self._secrets
        held = -1 if state is None else state.head_seq
        if secrets is not None and secrets.log_head is not None:
            held = max(held, secrets.log_head[0])
        return held

    def use_link(self, link_keys: LinkKeyPair) -> None:
        """Read this (private) space's log as the holder of an invite link, before joining."""
        self._link = (link_id_of_key(link_keys.link_key), link_keys.sign)

    def ensure_secrets(self, policy: HistoryPolicy) -> SpaceSecrets:
        """The keystore entry of this space, made empty with ``policy`` if there is none."""
        if self._secrets is None:
            self._secrets = self.client.keystore.new_space(self.id, policy)
        return self._secrets

    async def extend_with(self, events: list[StateEvent]) -> None:
        """Verify and apply events this member knows follow its head (its own, accepted)."""
        async with self._log_lock:
            new = self.core.extend_log(events)
            self._check_pinned_head()
        if new:
            await self.after_state(new)

    async def _catch_up_log(self) -> None:
        """:meth:`sync_log` for handlers of pushed events: a log that does not verify is
        reported (by ``sync_log``), and the handler goes on with the log it holds."""
        try:
            await self.sync_log()
        except IntegrityError as exc:
            log.info("spacenb: the relay's log of %s does not verify: %s", self.id, exc)

    @property
    def connection_nonce(self) -> bytes | None:
        hello = self.client.connection.hello
        return hello.nonce if hello else None

    def _check_pinned_head(self) -> None:
        """The keystore remembers the newest log event this member verified; a relay that
        later serves another event at that place has forked or rewritten the log."""
        state = self.core.state
        secrets = self._secrets
        if state is None or secrets is None:
            return
        if secrets.log_head is not None:
            seq, digest = secrets.log_head
            known = state.hash_at(seq)
            if known is not None and known != digest:
                error = ForkError(
                    f"the relay's log for {self.id} differs at event {seq} from the one this "
                    "client verified in an earlier session"
                )
                self._reject(None, "relay", str(error))
                raise error
            if known is None:
                return  # not reached yet (sync_log refuses a relay that stays below it)
        if secrets.log_head != (state.head_seq, state.head):
            secrets.log_head = (state.head_seq, state.head)
            self._head_changed = True
            self.save_marks(every=2.0)  # with the replay marks, at most every 2 s

    def state_log(self) -> list[StateLogEntry]:
        """The verified state events, oldest first (fetch with :meth:`sync_log` first)."""
        state = self.core.state
        return [] if state is None else [StateLogEntry.of(e) for e in state.events]

    async def after_state(self, events: list[StateEvent]) -> None:
        """React to newly verified events: keys to fetch, deletions, removals."""
        state = self.core.require_state()
        refetch_keys = False
        emitter = self.events
        for event in events:
            member_change = event.kind in ("add", "role", "remove", "leave")
            if emitter.has("state") or (member_change and emitter.has("member")):
                entry = StateLogEntry.of(event)  # a hash and a parse: only when listened to
                emitter.emit("state", entry)
                if member_change:
                    emitter.emit("member", entry)
            if event.kind not in _REACTED_TO:
                continue  # a newcomer's whole log goes through here: parse only what matters
            body = json.loads(event.body)  # verified already: no need to check it again
            if event.kind == "epoch":
                epoch = body["epoch"]
                if epoch != self._rotating_to and not self.core_holds(epoch):
                    refetch_keys = refetch_keys or self.client.username in body["recipients"]
                self.events.emit("epoch", epoch)
            elif event.kind == "delete":
                if self.core.deletion_applies(event):
                    self._known_messages.pop(body["handle"], None)
                    self.events.emit("message_deleted", MessageDeletedEvent(body["handle"]))
                else:
                    self._reject(body["handle"], event.actor, "a deletion naming another author")
            elif event.kind in ("remove", "leave") and body["member"] == self.client.username:
                self._subscribed = False
                self._peers = ()
        for name, why in list(self.core.distrusted.items()):
            if name in state.members:
                self.events.emit("rejected", RejectedEnvelopeEvent(self.id, None, name, why))
        if refetch_keys:
            await self._fetch_keys()

    def _author_of(self, handle: int) -> str | None:
        meta = self._known_messages.get(handle)
        if meta is not None:
            return meta.author
        state = self.core.state
        if state is not None and handle in state.deleted:
            return None
        return self.core.author_of(handle)

    def core_holds(self, epoch: int) -> bool:
        keyring = self.core.keyring
        return keyring is not None and keyring.has(epoch)

    async def append_event(
        self, build: Callable[[SpaceState], StateEvent], *, keys: tuple[WrappedKey, ...] = ()
    ) -> int:
        """Sign and append a state event built on the current head (with ``keys``, wrapped
        keys it hands over); if another event came first, fetch the log and build again.
        Returns the event's seq."""
        for attempt in range(_STALE_RETRIES):
            state = self.core.state
            if state is None:
                await self.sync_log()
                state = self.core.require_state()
            event = build(state)
            try:
                result = await self.client.request(
                    frames.Append(UNSENT, space_id=self.id, event=event, keys=keys)
                )
            except StaleStateError:
                await stale_backoff(attempt)
                await self.sync_log()
                continue
            await self.extend_with([event])
            return result.seq
        raise StaleStateError(f"the log of {self.id} kept moving: try again")

    def sign_event(self, state: SpaceState, kind: str, body: dict[str, Any]) -> StateEvent:
        return make_event(
            self.client.identity,
            space_id=self.id,
            seq=state.head_seq + 1,
            prev=state.head,
            kind=kind,
            actor=self.client.username,
            at_us=self.client.clock.now_us(),
            body=body,
        )

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        """Subscribe to the space's live events (messages, presence, keys, state...)."""
        await self.attach(refresh=True)

    async def attach(self, *, refresh: bool) -> None:
        """Subscribe; with ``refresh`` False the caller has just fetched the log and keys
        (a create or a join), and changes after the subscription arrive as events."""
        self._ahead.drop()
        self.client.register(self)
        if self.core.delivery.last_handle == 0:
            # What is stored now is history; what comes after is pushed. The mark is read
            # before subscribing: read after, it could already be past messages pushed to
            # us and still waiting in the dispatcher, which would then drop them.
            page = await self.client.request(
                frames.HistoryRequest(UNSENT, space_id=self.id, before=None, limit=1)
            )
            if page.items:
                self.core.delivery.delivered(page.items[-1].handle)
        result = await self.client.request(frames.Subscribe(UNSENT, space_id=self.id))
        self._subscribed = True
        self.core.delivery.behind = False
        self._set_peers(result.peers)
        if refresh or self.core.state is None or self.core.state.head_seq != result.head_seq:
            await self.sync_log()  # a lower head too: sync_log holds the relay to the rule
        if refresh or self.keyring is None:
            await self._fetch_keys()

    async def disconnect(self) -> None:
        """Stop receiving live events (the client stays signed in)."""
        await self._ahead.close()
        if self._subscribed and self.client.connection.is_open:
            try:
                await self.client.request(frames.UnsubscribeRequest(UNSENT, space_id=self.id))
            except SpacenbError as exc:
                log.info("spacenb: unsubscribe failed: %s", exc)
        self._subscribed = False
        self._peers = ()
        self.save_marks()
        self.client.unregister(self)

    async def checkpoint(self) -> int:
        """Sign a checkpoint at the head of the state log; returns its seq.

        Whoever reads the log from scratch later (a newcomer, a fresh client) verifies
        this one signature instead of every event before it (PROTOCOL.md, "Checkpoints";
        the keeper writes them by itself in the channels it was admitted to). Only the
        owner (or the keeper) may: others get :class:`PermissionDeniedError`.
        """

        def build(state: SpaceState) -> StateEvent:
            if not state.may_checkpoint(self.client.username):
                raise PermissionDeniedError("only the space's owner may sign a checkpoint")
            return self.sign_event(state, "checkpoint", {})

        return await self.append_event(build)

    async def leave(self) -> None:
        """Leave the space (not possible for its owner): a signed ``leave`` event."""
        me = self.client.username
        await self.append_event(lambda s: self.sign_event(s, "leave", {"member": me}))
        await self.disconnect()

    # ------------------------------------------------------------------ sending

    def _require_keys(self) -> Keyring:
        keyring = self.keyring
        if keyring is None:
            raise KeyUnavailableError(
                f"no group key for space {self.id}: join it first (or wait to be admitted)"
            )
        return keyring

    def _seal(
        self,
        kind: str,
        subject: str,
        content_type: str | None,
        body: Any,
        *,
        seq: int | None = None,
        sid: str | None = None,
        rev: int = 0,
    ) -> Envelope:
        keyring = self._require_keys()
        state = self.core.require_state()
        epoch = state.epoch
        if not keyring.has(epoch):
            raise KeyUnavailableError(
                f"this member holds no key for epoch {epoch} of {self.id}: it was not a "
                "recipient of the latest rotation"
            )
        envelope, message = seal_envelope(
            self.client.identity,
            keyring.key(epoch),
            kind="eph" if kind == "eph" else "msg",
            source=self.client.username,
            target=self.id,
            subject=subject,
            epoch=epoch,
            content_type=content_type,
            body=body,
            head_seq=state.head_seq,
            head=state.head,
            seq=self.client.next_seq() if seq is None else seq,
            sid=self.client.session_id if sid is None else sid,
            rev=rev,
            clock=self.client.clock,
        )
        if kind == "msg":
            self.core.remember_sent(envelope, message)
        return envelope

    async def _send_sealed(
        self,
        make: Callable[[], Envelope],
        request: Callable[[Envelope], frames.Request[R]],
        *,
        stored: bool = False,
    ) -> R:
        """Send ``request(envelope)`` for an envelope ``make`` seals; after a rotation or a
        state change the relay refuses it as stale: catch up on the log and keys, seal
        again, once.

        A ``stored`` request (``send``, ``edit``) whose outcome is unknown (the connection
        lost before the answer, ``server_error``, no answer in time) is sent again, the
        same envelope, once the client is reconnected, up to :data:`_RESENDS` times
        (PROTOCOL.md, "Requests"): a ``send`` as a ``resend``, which the relay answers
        with the handle it stored it under, or ``not_found`` if it never did, and only
        then is the message sealed again (under a new ``seq``, so that it does not land
        behind a later message of this session); an ``edit`` as it is (the relay applies
        an edit once). A message that may be stored is never sealed again."""
        if self.core.state is None:
            await self.sync_log()
        sent = request(make())
        sealed_again = False
        unknown = 0  # attempts whose outcome was unknown so far
        while True:
            try:
                return await self.client.request(sent)
            except (KeyUnavailableError, StaleStateError):
                if sealed_again or _is_resend(sent):
                    raise
                sealed_again = True
                await self.sync_log()
                await self._fetch_keys()
                sent = request(make())
            except NotFoundError as exc:
                if not _is_resend(sent) or isinstance(exc, ChannelNotFoundError):
                    raise
                sent = request(make())  # known not stored: a new seal, a new seq
            except (*_OUTCOME_UNKNOWN, RateLimitedError) as exc:
                # (a rate refusal of a resend says nothing of the first attempt's fate)
                if not stored or self.client.connection.is_closed or unknown >= _RESENDS:
                    raise
                if isinstance(exc, RateLimitedError) and not _is_resend(sent):
                    raise
                log.info("spacenb: %s had no sure answer (%s); sending it again", sent.OP, exc)
                await stale_backoff(unknown, _RESEND_CAP)
                unknown += 1
                if isinstance(sent, frames.Send):
                    sent = cast("frames.Request[R]", dataclasses.replace(sent, resend=True))

    async def send_message(
        self, payload: Any, *, channel: str = "default", content_type: str | None = None
    ) -> int:
        """Seal ``payload`` once for the group, sign it and send it.

        Returns the relay's handle once the message is stored. The message also comes back
        to this member's ``on_message`` handlers. If the answer is lost (the connection
        drops, the relay answers ``server_error``, or no answer comes in time), the same
        envelope is sent again once reconnected, and the relay stores it once; after 16
        such attempts the last error is raised (:class:`ConnectionLostError`,
        :class:`ServerError` or :class:`SpacenbTimeoutError`): the message may then be
        stored or not.
        """
        seqs: list[int] = []

        def seal() -> Envelope:  # every seal under a new seq: never behind a later message
            seqs.append(self.client.next_seq())
            return self._seal("msg", channel, content_type, payload, seq=seqs[-1])

        result = await self._send_sealed(
            seal, lambda envelope: frames.Send(UNSENT, envelope=envelope), stored=True
        )
        seq = seqs[-1]
        handle = result.handle
        self._known_messages[handle] = KnownMessage(
            self.client.username,
            channel,
            content_type,
            seq,
            self.client.session_id,
            0,
        )
        return handle

    async def edit_message(
        self,
        handle: int,
        payload: Any,
        *,
        channel: str | None = None,
        content_type: str | None = None,
    ) -> None:
        """Replace a stored message (yours) with ``payload``, keeping its handle."""
        meta = self._known_messages.get(handle)
        if meta is None and self._author_of(handle) is None:
            await self._page(handle + 1, 1, ahead=False)  # the one message, none ahead
            meta = self._known_messages.get(handle)
        if meta is None:
            if self._author_of(handle) is None:
                raise NotFoundError(f"no message at handle {handle} in this space")
            raise PermissionDeniedError("only the message's author may change it")
        author, old_channel, old_type, seq, sid, rev = meta
        if author != self.client.username:
            raise PermissionDeniedError("only the message's author may change it")
        new_rev = max(rev + 1, self.client.clock.now_us())
        ctype = content_type if content_type else old_type
        self._edits_seen += 1  # pages fetched ahead before the edit; after: those during
        await self._send_sealed(
            lambda: self._seal(
                "msg", channel or old_channel, ctype, payload, seq=seq, sid=sid, rev=new_rev
            ),
            lambda envelope: frames.Edit(UNSENT, handle=handle, envelope=envelope),
            stored=True,
        )
        self._edits_seen += 1
        self._known_messages[handle] = KnownMessage(
            author, channel or old_channel, ctype, seq, sid, new_rev
        )

    async def delete_message(self, handle: int) -> None:
        """Delete a stored message (yours, or anyone's as the owner): a signed ``delete``
        event; the relay then removes its ciphertext."""
        author = self._author_of(handle)
        if author is None:
            await self._page(handle + 1, 1, ahead=False)  # the one message, none ahead
            author = self._author_of(handle) or self.client.username
        await self.append_event(
            lambda s: self.sign_event(s, "delete", {"handle": handle, "author": author})
        )

    async def send_ephemeral(self, subject: str, data: Any) -> None:
        """Send a never-stored signal (typing, presence...). A no-op when disconnected."""
        if not self.is_connected() or self.keyring is None or self.core.state is None:
            return
        await self._send_sealed(
            lambda: self._seal("eph", subject, None, data),
            lambda envelope: frames.SendEphemeral(UNSENT, envelope=envelope),
        )

    # ------------------------------------------------------------------ history

    async def history(self, *, before: int | None = None, limit: int = 50) -> History:
        """Fetch, verify and decrypt one page of stored messages (oldest first): the
        newest ``limit`` (1..1000) before ``before``, or fewer when they would not fit in
        one frame (1 MiB); ``next_cursor`` leads to the older ones either way.

        With :attr:`read_ahead`, the page at ``next_cursor`` (same ``limit``) is fetched
        and its signatures checked in the background; the call that asks for it takes it
        and decides about its messages then, as about a page fetched then."""
        if not isinstance(limit, int) or not 1 <= limit <= frames.MAX_HISTORY_LIMIT:
            raise UsageError(f"limit must be 1..{frames.MAX_HISTORY_LIMIT}", field="limit")
        return await self._page(before, limit, ahead=self.read_ahead)

    async def _page(self, before: int | None, limit: int, *, ahead: bool) -> History:
        """:meth:`history`'s page; ``ahead``: read the next one ahead."""
        if self.core.state is None:
            await self.sync_log()
        if limit >= verify_pool.MIN_PAGE:
            verify_pool.shared().start()
        fetched = await self._ahead.take((before, limit, self._ahead_mark()), self._ahead_mark)
        if fetched is None:
            page, chunks = await self._history_request(before, limit), None
        else:
            page, chunks = fetched
        state, me = self.core.require_state(), self.client.username
        missing = {i.envelope.epoch for i in page.items if not self.core_holds(i.envelope.epoch)}
        if any(e not in state.epochs or state.may_hold(me, e) for e in missing):
            # Entitled to an epoch it lacks (a rotation it has not caught up with yet).
            await self.sync_log()
            await self._fetch_keys()
        messages = []
        items = page.items
        open_message = self.core.open_message
        if chunks is None and len(items) >= verify_pool.MIN_PAGE:
            chunks = verify_pool.in_chunks(items, state)
        if ahead and page.next_cursor is not None:
            self._read_ahead(page.next_cursor, limit)
        for start, end, checked in chunks or [(0, len(items), None)]:
            verified = await verify_pool.wait(checked, end - start)
            for item, key in zip(items[start:end], verified, strict=True):
                envelope, handle = item.envelope, item.handle
                # What _open decides, without its two coroutines per message unless the
                # core needs the log or keys first (it then decided nothing yet).
                decision = open_message(envelope, handle, verified=key)
                if isinstance(decision, Need):
                    event = await self._open(envelope, handle, live=False, verified=key)
                else:
                    event = self._opened(envelope, handle, decision, live=False)
                if event is not None:
                    messages.append(event)
        return History(tuple(messages), page.next_cursor, len(items) - len(messages))

    async def _history_request(self, before: int | None, limit: int) -> frames.HistoryPage:
        return await self.client.request(
            frames.HistoryRequest(UNSENT, space_id=self.id, before=before, limit=limit)
        )

    def _read_ahead(self, before: int, limit: int) -> None:
        """Fetch the page ``history(before=before, limit=limit)`` will ask for, and start
        its signature checks in the verify workers (see :mod:`spacenb.aio.readahead`)."""

        async def fetch() -> readahead.Fetched:
            page = await self._history_request(before, limit)
            items = page.items
            if len(items) < verify_pool.MIN_PAGE:
                return page, None
            return page, verify_pool.in_chunks(items, self.core.require_state())

        self._ahead.start((before, limit, self._ahead_mark()), fetch)

    def _ahead_mark(self) -> Hashable:
        """What a page fetched ahead is kept under. When it moves, the relay may serve that
        page otherwise (a state event: a deletion, or anything else; an edit; another
        connection, perhaps to another relay), and the page is fetched again."""
        state, connection = self.core.state, self.client.connection
        head = (state.head_seq, state.head) if state is not None else None
        return (head, self._edits_seen, connection.reconnects, connection.url)

    # ------------------------------------------------------------------ verifying

    def _reject(self, handle: int | None, sender: str, reason: str) -> None:
        log.warning("spacenb: dropped envelope from %r at %s: %s", sender, handle, reason)
        self.events.emit("rejected", RejectedEnvelopeEvent(self.id, handle, sender, reason))

    async def _decide(
        self,
        envelope: Envelope,
        handle: int | None,
        *,
        kind: str,
        live: bool,
        now: bool,
        edit: bool = False,
        verified: str | None = None,
    ) -> Opened | Rejected | None:
        """The core's decision, after fetching what it needs (None: not readable here).

        ``live``: fetch missing keys and report what cannot be read; ``now``: the envelope
        is being spoken now (a push, not a catch-up or history), so its sender must still
        be a member. ``verified``: see :meth:`MemberCore.open_message`.
        """

        def decide() -> Opened | Rejected | Need:
            return self.core.open_message(
                envelope, handle, kind=kind, live=now, edit=edit, verified=verified
            )

        decision = decide()
        if not isinstance(decision, Need):
            return decision
        if decision is Need.LOG:
            try:
                await self.sync_log()
            except IntegrityError:
                return None
            decision = decide()
            if decision is Need.LOG:
                return Rejected(
                    "bound to a state event the relay does not serve (withheld or forked)",
                    envelope.source,
                    handle,
                )
        if decision is Need.KEYS:
            if live:
                await self._fetch_keys()
                decision = decide()
            if decision is Need.KEYS:
                if live:
                    return Rejected(f"no key for epoch {envelope.epoch}", envelope.source, handle)
                return None
        assert not isinstance(decision, Need)
        return decision

    async def _open(
        self,
        envelope: Envelope,
        handle: int,
        *,
        live: bool,
        now: bool = False,
        edit: bool = False,
        verified: str | None = None,
    ) -> SpaceMessageEvent | None:
        """Verify and decrypt a stored envelope; None (and a ``rejected`` event) if it fails."""
        decision = await self._decide(
            envelope, handle, kind="msg", live=live, now=now, edit=edit, verified=verified
        )
        return self._opened(envelope, handle, decision, live=live, edit=edit)

    def _opened(
        self,
        envelope: Envelope,
        handle: int,
        decision: Opened | Rejected | None,
        *,
        live: bool,
        edit: bool = False,
    ) -> SpaceMessageEvent | None:
        """The event for the core's decision about a stored envelope (see :meth:`_open`)."""
        if decision is None:
            return None
        if isinstance(decision, Rejected):
            self._reject(decision.handle, decision.sender, decision.reason)
            return None
        message = decision.message
        if live and edit:
            # once is the edit's delivery mark, not the replay guard's "duplicate" (which
            # history() may have set): as for a new message, see _deliver
            if message.rev == 0 or self._edits_delivered.get(handle, -1) >= message.rev:
                return None  # not an edit (a message's first revision), or delivered
            self._edits_delivered[handle] = message.rev
        content_type = envelope.content_type or None
        sender, channel = self.core.shared(envelope.source), self.core.shared(envelope.subject)
        if sender == self.client.username:
            self._known_messages[handle] = KnownMessage(
                sender, channel, content_type, message.seq, message.sid, message.rev
            )
        return SpaceMessageEvent(sender, channel, envelope.epoch, content_type, handle, message)

    # ------------------------------------------------------------------ keys

    async def _fetch_keys(self) -> None:
        since: int | None = None
        while True:
            result = await self.client.request(
                frames.FetchKeys(UNSENT, space_id=self.id, since_epoch=since)
            )
            await self.ingest_keys(result.keys)
            if result.next_epoch is None:
                return
            since = result.next_epoch

    async def ingest_keys(self, keys: Iterable[WrappedKey]) -> None:
        """Adopt keys handed to this member, as far as the verified log allows."""
        keys = [
            k
            for k in keys
            if k.space_id == self.id
            and not self.core_holds(k.epoch)
            and k.epoch != self._rotating_to
        ]
        if not keys:
            return
        state = self.core.state
        me = self.client.username
        if state is None or any(not state.may_hold(me, k.epoch) for k in keys):
            await self._catch_up_log()  # the keys may have overtaken the events allowing them
        state = self.core.state
        if state is None:
            for wrapped in keys:
                self._reject(None, wrapped.wrapper, "key refused: no verified state log")
            return
        secrets = self.ensure_secrets(state.policy)
        if self.core.keyring is None:
            self.core.keyring = secrets.keyring
        adopted = False
        for wrapped in sorted(keys, key=lambda k: k.epoch):
            try:
                self.core.keyring.add(wrapped.epoch, self.core.accept_key(wrapped))
                adopted = True
            except (IntegrityError, ProtocolError) as exc:
                log.warning("spacenb: refused a key for epoch %s: %s", wrapped.epoch, exc)
                self.events.emit(
                    "rejected",
                    RejectedEnvelopeEvent(self.id, None, wrapped.wrapper, f"key refused: {exc}"),
                )
        if adopted:
            self.client.keystore.save_space(secrets)
        for waiter in self._key_waiters:
            if not waiter.done() and self.keyring is not None:
                waiter.set_result(None)

    async def wait_for_keys(self, timeout: float) -> None:
        """Wait until this member holds a group key; :class:`SpacenbTimeoutError` if not."""
        if self.keyring is not None:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._key_waiters.append(waiter)
        deadline = loop.time() + timeout
        # Ask for keys already stored and take whichever comes first, their answer or a
        # key-holder's push: a newcomer's key is often pushed first (bench.scale
        # --breakdown), and need not wait for an answer that brings it again.
        fetch = asyncio.ensure_future(self._fetch_keys())
        try:
            first = asyncio.FIRST_COMPLETED
            await asyncio.wait({fetch, waiter}, timeout=timeout, return_when=first)
            if not waiter.done():
                if fetch.done():
                    fetch.result()  # its error, if it failed
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise SpacenbTimeoutError(
                f"not admitted to {self.id} within {timeout} s: no key-holder (keeper or "
                "member) handed over the group key; ask a member to admit you, or retry"
            ) from None
        finally:
            self._key_waiters.remove(waiter)
            if not fetch.done():
                fetch.cancel()  # the keys are in hand (its late answer is dropped)
            elif not fetch.cancelled():
                fetch.exception()  # read, or asyncio logs it as never retrieved

    async def admit(self, member_id: str, identity_ecdh_pub: str) -> None:
        """Hand the group keys the log entitles ``member_id`` to (every epoch in a static
        space, the current one in a rotate space). ``identity_ecdh_pub`` must be the key
        the space's log records for them (:class:`IdentityChangedError` otherwise)."""
        await self.sync_log()
        state = self.core.require_state()
        member = state.members.get(member_id)
        if member is None:
            raise PermissionDeniedError(f"{member_id!r} is not a member: they must join first")
        if member.ecdh_key != identity_ecdh_pub:
            raise IdentityChangedError(
                f"the space's log records another key for {member_id!r}", username=member_id
            )
        epochs = self.core.epochs_to_wrap(member_id)
        if not epochs:
            raise KeyUnavailableError(f"this member holds no key it may hand to {member_id!r}")
        keys = tuple(self.core.wrap_for(member_id, epochs))
        await self.client.request(
            frames.Admit(UNSENT, space_id=self.id, member=member_id, keys=keys)
        )

    async def invite(self, username: str, *, role: str = "viewer") -> None:
        """Let ``username`` join this space (a private one admits only the invited): a
        signed ``invite`` event, naming their keys when this client has pinned them."""
        pinned = self.client.pinned_keys(username)
        if pinned is None:
            found = await self.client.identities([username])
            pinned = (found[username].signing_key, found[username].ecdh_key) if found else None
        body = {
            "member": username,
            "role": role,
            "signing_key": pinned[0] if pinned else None,
            "ecdh_key": pinned[1] if pinned else None,
        }
        await self.append_event(lambda s: self.sign_event(s, "invite", body))

    async def rotate(self, roster: Iterable[str] | None = None) -> int:
        """Mint the next epoch's key and wrap it to ``roster`` (default: every member).

        You and the keeper (when it is a member) are always included. Recipients and
        their keys come from the verified log. Returns the new epoch. Only ``rotate``
        spaces have epochs. The wrapped keys go with the ``epoch`` event as far as one
        frame holds them, the rest right after (``add_keys``).
        """
        self._require_keys()
        await self.sync_log()
        state = self.core.require_state()
        if state.policy != "rotate":
            raise UsageError("only spaces with history_policy='rotate' can rotate")
        wanted = None if roster is None else list(roster)
        new_key = new_group_key()  # held only once the relay agrees
        for attempt in range(_STALE_RETRIES):
            state = self.core.require_state()
            recipients = state.rotation_recipients(self.client.username, wanted)
            epoch = state.epoch + 1
            event = self.sign_event(
                state,
                "epoch",
                {
                    "epoch": epoch,
                    "recipients": recipients,
                    "key_commitment": key_commitment(self.id, epoch, new_key),
                },
            )
            keys = self.core.wrap_new_epoch(new_key, epoch, recipients)
            first_ones = (self.client.username, state.keeper)
            keys.sort(key=lambda k: k.recipient not in first_ones)  # own key in the first frame
            first, _more = frames.fitting(keys, frames.PAGE_BYTES - json_size(event))
            self._rotating_to = epoch  # its state event may arrive before the request returns
            try:
                await self.client.request(
                    frames.Append(UNSENT, space_id=self.id, event=event, keys=tuple(first))
                )
            except StaleStateError:
                await stale_backoff(attempt)
                await self.sync_log()
                continue
            finally:
                self._rotating_to = None
            self._require_keys().add(epoch, new_key)
            assert self._secrets is not None
            self.client.keystore.save_space(self._secrets)
            rest = keys[len(first) :]
            while rest:
                chunk, _more = frames.fitting(rest, frames.PAGE_BYTES)
                await self.client.request(
                    frames.AddKeys(UNSENT, space_id=self.id, keys=tuple(chunk))
                )
                rest = rest[len(chunk) :]
            await self.extend_with([event])
            return epoch
        raise StaleStateError(f"the log of {self.id} kept moving: try again")

    # ------------------------------------------------------------------ files

    async def put_file(
        self,
        file: FileSource,
        metadata: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        content_type: str | None = None,
        progress: Progress | None = None,
    ) -> tuple[Manifest, FileStat]:
        """Encrypt, erasure-code and upload a file to the space's shard stores.

        ``file`` is bytes, a path or a binary file object. Returns ``(manifest, stat)``;
        the manifest is the capability to read the file (send it as a sealed message).
        """
        from . import files

        ticket = await self.client.request(frames.ShardTicket(UNSENT, space_id=self.id))
        return await files.upload(
            file,
            ticket=ticket.ticket,
            space_id=self.id,
            stores=list(ticket.stores),
            shards_needed=ticket.shards_needed,
            metadata=metadata,
            name=name,
            content_type=content_type,
            progress=progress,
        )

    async def get_file(
        self, manifest: Manifest | Mapping[str, Any], *, progress: Progress | None = None
    ) -> tuple[bytes, FileStat]:
        """Fetch shares from any k stores, check, decode and decrypt: ``(data, stat)``.

        Shares come only from the relay's shard stores and the client's
        ``allowed_stores``: a manifest naming others cannot make this client dial them
        (:class:`NotEnoughSharesError` if fewer than k are left).
        """
        from . import files

        return await files.download(
            manifest, progress=progress, allowed_stores=self.client.readable_stores()
        )

    # ------------------------------------------------------------------ events

    def _set_peers(self, peers: Iterable[str]) -> None:
        state = self.core.state
        members = state.members if state is not None else None
        self._peers = tuple(sorted(p for p in peers if members is None or p in members))
        self.events.emit("presence", PresenceEvent(self.id, self._peers))

    def _change_peers(self, joined: Iterable[str], left: Iterable[str]) -> None:
        """Apply a presence delta: O(log n) per name, not a sort of everyone (every member
        gets one per join, so a channel of n would cost n² a join)."""
        state = self.core.state
        members = state.members if state is not None else None
        peers = list(self._peers)
        for name in joined:
            if members is not None and name not in members:
                continue
            i = bisect.bisect_left(peers, name)
            if i == len(peers) or peers[i] != name:
                peers.insert(i, name)
        for name in left:  # (a name in both has left, as before)
            i = bisect.bisect_left(peers, name)
            if i < len(peers) and peers[i] == name:
                del peers[i]
        self._peers = tuple(peers)
        self.events.emit("presence", PresenceEvent(self.id, self._peers))

    async def _deliver(self, handle: int, envelope: Envelope, *, now: bool = True) -> None:
        """Verify, open and hand a stored message to the handlers, once, in handle order
        (``now`` False for one missed while disconnected).

        Once is the delivery mark's to decide, not the replay guard's: the guard also
        records what :meth:`history` opened, and a push can arrive after a history read
        that already held its message (another relay learnt of it late). Such a message is
        a "duplicate" to the guard (same handle, same revision: no replay), but it was never
        handed to the handlers, so it is delivered."""
        if not self.core.delivery.is_new(handle):
            return  # already delivered (catch-up and live overlap)
        opened = await self._open(envelope, handle, live=True, now=now)
        if opened is not None:
            # Only a message that verified moves the mark: a forged or corrupt frame
            # with a far-future handle must not make later messages look delivered.
            self.core.delivery.delivered(handle)
            self.events.emit("message", opened)
            self.save_marks(every=2.0)

    async def handle_event(self, event: frames.Event) -> None:
        if isinstance(event, frames.MessagePushed):
            if self.core.delivery.on_push(event.handle) == "deliver":
                await self._deliver(event.handle, event.envelope)
        elif isinstance(event, frames.MessageEdited):
            self._edits_seen += 1
            opened = await self._open(event.envelope, event.handle, live=True, now=True, edit=True)
            if opened is not None:
                self.events.emit("message_edited", opened)
        elif isinstance(event, frames.EphemeralPushed):
            await self._handle_ephemeral(event.envelope)
        elif isinstance(event, frames.Presence):
            self._change_peers(event.joined, event.left)
        elif isinstance(event, frames.KeysPushed):
            await self.ingest_keys(event.keys)
        elif isinstance(event, frames.StatePushed):
            await self._handle_state(event.event)
        elif isinstance(event, frames.JoinRequested):
            await self._handle_join_request(event)
        else:
            self.events.emit("channel:raw_frame", event)

    async def _handle_state(self, event: StateEvent) -> None:
        state = self.core.state
        try:
            if state is not None and event.seq == state.head_seq + 1:
                new = self.core.extend_log([event])
                if new:
                    self._check_pinned_head()
                    await self.after_state(new)
            elif state is None or event.seq > state.head_seq:
                await self.sync_log()
            else:
                self.core.extend_log([event])  # a repeat: checked against the held hash
        except IntegrityError as exc:
            self._reject(None, "relay", str(exc))

    async def _handle_ephemeral(self, envelope: Envelope) -> None:
        decision = await self._decide(envelope, None, kind="eph", live=True, now=True)
        if decision is None:
            return
        if isinstance(decision, Rejected):
            self._reject(None, decision.sender, decision.reason)
            return
        message = decision.message
        if message.id in self._seen_ephemeral:
            self._reject(None, envelope.source, "replayed signal")
            return
        self._seen_ephemeral[message.id] = None
        if len(self._seen_ephemeral) > _EPHEMERAL_MEMORY:
            self._seen_ephemeral.popitem(last=False)
        self.events.emit(
            "ephemeral", EphemeralEvent(envelope.source, envelope.subject, message.body)
        )

    async def _handle_join_request(self, event: frames.JoinRequested) -> None:
        state = self.core.state
        if state is None or event.member_id not in state.members:
            await self._catch_up_log()
            state = self.core.state
        member = state.members.get(event.member_id) if state is not None else None
        if member is None:
            self._reject(None, event.member_id, "a join request for someone who is not a member")
            return
        # What handlers see of the newcomer are the keys its signed add event records.
        request = JoinRequest(
            self.id, member.name, member.ecdh_key, member.signing_key, member.role
        )
        self.events.emit("join_request", request)
        epochs = self.core.admission(member.name)
        if self.auto_admit and epochs:
            try:
                keys = tuple(self.core.wrap_for(member.name, epochs))
                await self.client.request(
                    frames.Admit(UNSENT, space_id=self.id, member=member.name, keys=keys)
                )
            except SpacenbError as exc:
                log.info("spacenb: auto-admit of %s failed: %s", member.name, exc)

    async def resync(self) -> None:
        """After a reconnect: subscribe again, catch up on the log and keys, deliver missed
        messages.

        Until the missed messages are delivered, pushed ones are held back: delivered
        first, they would move the mark past the missed ones. If the catch-up fails (the
        connection drops again), they stay held until the next one succeeds.
        """
        if not self._subscribed:
            return
        self._ahead.drop()
        delivery = self.core.delivery
        delivery.behind = True
        result = await self.client.request(frames.Subscribe(UNSENT, space_id=self.id))
        self._set_peers(result.peers)
        await self.sync_log()
        await self._fetch_keys()
        missed: list[frames.StoredMessage] = []
        before: int | None = None
        while True:
            page = await self._history_page(before)
            newer, more = delivery.missed([item.handle for item in page.items])
            missed[:0] = [item for item in page.items if item.handle in set(newer)]
            if not more or page.next_cursor is None:
                break
            before = page.next_cursor
        for item in missed:
            await self._deliver(item.handle, item.envelope, now=False)
        delivery.behind = False
        self.save_marks()

    async def _history_page(self, before: int | None) -> frames.HistoryPage:
        """One page of the catch-up. The relay cuts pages to fit a frame; should a page
        still be refused as too large (:class:`LimitExceededError`, from the relay or from
        this side's frame limit), ask again for half as many, down to one message."""
        while True:
            try:
                return await self.client.request(
                    frames.HistoryRequest(
                        UNSENT, space_id=self.id, before=before, limit=self._page_limit
                    )
                )
            except LimitExceededError:
                if self._page_limit == 1:
                    raise
                self._page_limit = max(1, self._page_limit // 2)
                log.info("spacenb: catching up with pages of %d messages", self._page_limit)

    def save_marks(self, *, every: float = 0.0) -> None:
        """Persist the replay marks and the newest verified log event (at most once per
        ``every`` seconds; at once on disconnect and close)."""
        secrets, replay = self._secrets, self.core.replay
        if secrets is None or not (replay.changed or self._head_changed):
            return
        now = asyncio.get_running_loop().time()
        if now - self._marks_saved < every:
            return
        self._marks_saved = now
        replay.changed = self._head_changed = False
        secrets.marks = dict(replay.marks)
        self.client.keystore.save_space(secrets)
