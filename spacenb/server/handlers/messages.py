"""Messages and live state: subscribe, send, edit, ephemeral, history.

The relay verifies every envelope's signature against the key the space's log records
for its sender, and requires ``source`` = the authenticated user, ``target`` = the space,
and a state head that is in the log with the epoch current; the body stays sealed.
(Deleting is a state event: see :mod:`.membership`.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...exceptions import (
    KeyUnavailableError,
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    StaleStateError,
)
from ...protocol import crypto, frames
from ...protocol.codec import json_size
from ...protocol.envelope import Envelope
from ...protocol.statelog import SpaceState
from .base import handles, member_space, stored_size, user_of
from .membership import join_request_event

if TYPE_CHECKING:
    from ..relay import Relay, Session


def checked_envelope(relay: Relay, session: Session, envelope: Envelope, kind: str) -> SpaceState:
    """The envelope's space, once the caller is its member and its author, its state head
    is in the log and the signature verifies. Raises :class:`ProtocolError`,
    :class:`PermissionDeniedError`, :class:`StaleStateError` or :class:`IntegrityError`."""
    if envelope.kind != kind:
        raise ProtocolError(f"must be {kind!r} here", field="envelope.kind")
    user = user_of(session)
    if envelope.source != user:
        raise PermissionDeniedError("envelope.source must be the authenticated user")
    state, _ = member_space(relay, session, envelope.target)
    known = state.hash_at(envelope.head_seq)
    if known is None:
        raise StaleStateError("the envelope is bound to a state event the log does not have")
    if known != envelope.head:
        raise ProtocolError(
            "the state head is not the log's event at head_seq", field="envelope.head"
        )
    signer = state.verify_key_at(user, state.head_seq)
    assert signer is not None  # member_space checked the caller is a member
    crypto.verify(signer, envelope.signature, envelope.signed_bytes())
    return state


def _current_epoch(state: SpaceState, envelope: Envelope) -> None:
    if envelope.epoch != state.epoch or state.epoch_at(envelope.head_seq) != state.epoch:
        raise KeyUnavailableError(
            f"the space is at epoch {state.epoch} (since state event "
            f"{state.epochs[state.epoch].seq}); seal new messages under it"
        )


def _author_check(relay: Relay, session: Session, space_id: str, handle: int) -> None:
    source = relay.storage.message_source(space_id, handle)
    if source is None:
        raise NotFoundError(f"no message at handle {handle}")
    if source != user_of(session):
        raise PermissionDeniedError("only the message's author may change it")


# The JSON of a stored message with empty texts and ciphertext, its three integers counted
# at their widest (16 digits) and its comma: what every one weighs besides its contents.
_EMPTY = Envelope("msg", "", "", "", 0, "", 0, bytes(32), bytes(12), b"", bytes(64))
_FIXED = json_size(frames.StoredMessage(0, _EMPTY)) + 3 * 15 + 1


def _size_bound(item: frames.StoredMessage) -> int:
    """At least the JSON size of ``item`` in a page (and its comma), cheaply. ``source``
    (a username) and ``target`` (a space id) are never escaped; ``subject`` and
    ``content_type`` are counted as if every character were (``\\u00XX``)."""
    envelope = item.envelope
    return (
        _FIXED
        + (4 * len(envelope.ciphertext) + 2) // 3
        + len(envelope.source)
        + len(envelope.target)
        + 6 * (len(envelope.subject) + len(envelope.content_type))
    )


def history_page(
    relay: Relay, space_id: str, before: int | None, limit: int
) -> tuple[list[frames.StoredMessage], int | None]:
    """The newest ``limit`` messages below ``before`` that fit in one answer, oldest first,
    and the cursor to older ones (None when there are none).

    Read newest first in chunks sized by what the page can still hold, so a page of large
    messages never loads more than a few of them beyond what it returns. Sizes are bounded
    cheaply until the bounds near the page's room, and counted exactly from there on.
    """
    page: list[frames.StoredMessage] = []  # newest first
    budget = frames.PAGE_BYTES
    used, exact = 2, False  # the brackets; ``used`` is a bound until ``exact``
    chunk, cursor = 16, before
    while len(page) < limit:
        items, older = relay.storage.history(space_id, cursor, min(chunk, limit - len(page)))
        for item in reversed(items):
            if not exact:
                bound = _size_bound(item)
                if used + bound <= budget:
                    used += bound
                    page.append(item)
                    continue
                exact = True
                used = 2 + sum(json_size(i) + 1 for i in page)
            size = json_size(item) + 1
            if used + size > budget and page:
                page.reverse()
                return page, page[0].handle
            used += size
            page.append(item)
        if older is None:
            page.reverse()
            return page, None
        cursor = older
        average = max(used // len(page), 1)
        chunk = max(16, (budget - used) // average + 1)
    page.reverse()
    return page, (page[0].handle if page and cursor is not None else None)


@handles(frames.Subscribe)
def subscribe(relay: Relay, session: Session, req: frames.Subscribe) -> frames.SubscribeResult:
    """Receive the space's events on this connection; the caller is now online there.

    Join requests still waiting in the space are pushed to the new subscriber, so a
    member who comes online can admit people who asked while it was away.
    """
    state, _ = member_space(relay, session, req.space_id)
    relay.subscribe(session, state.space_id)
    user = user_of(session)
    for pending in relay.storage.join_requests(state.space_id):
        if pending.username != user and pending.username in state.members:
            relay.push_to(join_request_event(relay, state, pending), session)
    online = relay.online(state.space_id)
    size = frames.MAX_PEERS_PAGE
    for start in range(size, len(online), size):  # the rest, right after the answer
        relay.push_to(frames.Presence(state.space_id, online[start : start + size], ()), session)
    return frames.SubscribeResult(online[:size], state.epoch, state.head_seq)


@handles(frames.Unsubscribe)
def unsubscribe(relay: Relay, session: Session, req: frames.Unsubscribe) -> frames.Ok:
    """Stop receiving the space's events on this connection."""
    member_space(relay, session, req.space_id)
    relay.unsubscribe(session, req.space_id)
    return frames.Ok()


@handles(frames.Send)
def send(relay: Relay, session: Session, req: frames.Send) -> frames.HandleResult:
    """Store a message (committed before the answer) and push it to the subscribers."""
    envelope = req.envelope
    space = checked_envelope(relay, session, envelope, "msg")
    _current_epoch(space, envelope)
    relay.charge_message(user_of(session), len(envelope.ciphertext))
    handle = relay.storage.add_message(envelope, relay.now_us())
    relay.push_message(frames.MessagePushed(handle, envelope), space.space_id)
    return frames.HandleResult(handle)


@handles(frames.Edit)
def edit(relay: Relay, session: Session, req: frames.Edit) -> frames.HandleResult:
    """Replace the author's own message in place (same handle) and push ``edited``."""
    envelope = req.envelope
    space = checked_envelope(relay, session, envelope, "msg")
    _author_check(relay, session, space.space_id, req.handle)
    _current_epoch(space, envelope)
    old = stored_size(relay, space.space_id, req.handle)
    relay.charge_message(user_of(session), len(envelope.ciphertext) - old, count=0)
    relay.storage.replace_message(req.handle, envelope)
    relay.push_space(frames.MessageEdited(req.handle, envelope), space.space_id)
    return frames.HandleResult(req.handle)


@handles(frames.SendEphemeral)
def ephemeral(relay: Relay, session: Session, req: frames.SendEphemeral) -> frames.Ok:
    """Relay a signal to the space's other connections; never stored."""
    space = checked_envelope(relay, session, req.envelope, "eph")
    relay.push_signal(frames.EphemeralPushed(req.envelope), space.space_id, exclude=session)
    return frames.Ok()


@handles(frames.History)
def history(relay: Relay, session: Session, req: frames.History) -> frames.HistoryPage:
    """A page of stored messages, oldest first, and the cursor to the next older page:
    at most ``limit`` messages and at most what one frame holds.

    Raises :class:`LimitExceededError` for ``limit`` over 1000.
    """
    member_space(relay, session, req.space_id)
    if req.limit > frames.MAX_HISTORY_LIMIT:
        raise LimitExceededError(f"limit is at most {frames.MAX_HISTORY_LIMIT}")
    if req.limit < 1:
        raise ProtocolError("must be at least 1", field="limit")
    items, cursor = history_page(relay, req.space_id, req.before, req.limit)
    return frames.HistoryPage(tuple(items), cursor)
