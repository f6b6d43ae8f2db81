"""A space's messages as one member handles them: sealing and sending (with resends of
an unknown outcome), edits, deletions and signals, history pages (read ahead), and the
core's decisions about what it receives, delivered to the handlers once."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

from ..exceptions import (
    ChannelNotFoundError,
    ConnectionLostError,
    IntegrityError,
    KeyUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    SpacenbTimeoutError,
    StaleStateError,
    UsageError,
)
from ..protocol import frames
from ..protocol.envelope import Envelope, seal_envelope
from ..protocol.frames import UNSENT
from ..protocol.member import Need, Opened, Rejected
from . import readahead, verify_pool
from .events import EphemeralEvent, SpaceMessageEvent
from .space_keys import SpaceKeys
from .space_log import stale_backoff

__all__ = ["History", "KnownMessage", "SpaceMessages"]

log = logging.getLogger("spacenb")
R = TypeVar("R")
_EPHEMERAL_MEMORY = 10_000
# A message whose send had an unknown outcome is sent again as it is, this many times at
# most, with a backoff bound of up to _RESEND_CAP (about 15 s in all at worst: enough for
# a relay to reconnect or its database to come back after a restart).
_RESENDS = 16
_RESEND_CAP = 2.0
# Failures after which a send may or may not have been stored.
_OUTCOME_UNKNOWN = (ConnectionLostError, ServerError, SpacenbTimeoutError)


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


class SpaceMessages(SpaceKeys):
    """The messages and history layer of :class:`~spacenb.aio.space.AsyncSpace`."""

    # ------------------------------------------------------------------ sending

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

    def _author_of(self, handle: int) -> str | None:
        meta = self._known_messages.get(handle)
        if meta is not None:
            return meta.author
        state = self.core.state
        if state is not None and handle in state.deleted:
            return None
        return self.core.author_of(handle)

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
