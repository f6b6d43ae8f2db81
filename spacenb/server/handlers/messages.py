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
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    QuotaExceededError,
)
from ...protocol import frames
from ...protocol.envelope import Envelope
from ...protocol.relayrules import (
    check_current_epoch,
    check_envelope_author,
    check_envelope_binding,
    check_page_limit,
    history_page,
)
from ...protocol.statelog import SpaceState
from ..storage import StoredBefore
from .base import known_space, member_space, stored_size, user_of
from .membership import join_request_event

if TYPE_CHECKING:
    from ..core import RelayCore, Session


def checked_envelope(
    core: RelayCore, session: Session, envelope: Envelope, kind: str
) -> SpaceState:
    """The envelope's space, once the caller is its member and its author, its state head
    is in the log and the signature verifies. Raises :class:`ProtocolError`,
    :class:`PermissionDeniedError`, :class:`StaleStateError` or :class:`IntegrityError`."""
    user = user_of(session)
    check_envelope_author(envelope, kind, user)
    state = known_space(core, envelope.target)
    check_envelope_binding(state, envelope, user)
    return state


def _author_check(core: RelayCore, session: Session, space_id: str, handle: int) -> None:
    source = core.storage.message_source(space_id, handle)
    if source is None:
        raise NotFoundError(f"no message at handle {handle}")
    if source != user_of(session):
        raise PermissionDeniedError("only the message's author may change it")


def subscribe(core: RelayCore, session: Session, req: frames.Subscribe) -> frames.SubscribeResult:
    """Receive the space's events on this connection; the caller is now online there.

    Join requests still waiting in the space are pushed to the new subscriber, so a
    member who comes online can admit people who asked while it was away.
    """
    state, _ = member_space(core, session, req.space_id)
    core.subscribe(session, state.space_id)
    user = user_of(session)
    for pending in core.storage.join_requests(state.space_id):
        if pending.username != user and pending.username in state.members:
            core.push_to(join_request_event(core, state, pending), session)
    online = core.online(state.space_id)
    size = frames.MAX_PEERS_PAGE
    for start in range(size, len(online), size):  # the rest, right after the answer
        core.push_to(frames.Presence(state.space_id, online[start : start + size], ()), session)
    return frames.SubscribeResult(online[:size], state.epoch, state.head_seq)


def unsubscribe(core: RelayCore, session: Session, req: frames.UnsubscribeRequest) -> frames.Ok:
    """Stop receiving the space's events on this connection."""
    member_space(core, session, req.space_id)
    core.unsubscribe(session, req.space_id)
    return frames.Ok()


def stored_before(core: RelayCore, state: SpaceState, envelope: Envelope) -> int | None:
    """The handle of this very envelope if its space stored it already (a resend whose
    first answer was lost, PROTOCOL.md "Requests"), else None once it may be stored: it
    is sealed under the current epoch (else :class:`KeyUnavailableError`).

    Looked up here only for an envelope the epoch check refuses (a resend after a
    rotation still gets its handle): otherwise :meth:`Storage.add_message` finds a stored
    one itself, in the insert that records its signature (a :class:`StoredBefore`), and
    with several relays the commit thread does, in the batch's own transaction. So a new
    message costs no lookup of its own."""
    try:
        check_current_epoch(state, envelope)
    except KeyUnavailableError:
        if handle := core.storage.message_handle(state.space_id, envelope.signature):
            return handle
        raise
    return None


def send(core: RelayCore, session: Session, req: frames.Send) -> frames.HandleResult:
    """Store a message (committed before the answer) and push it to the subscribers; a
    resend of a stored envelope is answered with its handle, and nothing else happens."""
    envelope = req.envelope
    space = checked_envelope(core, session, envelope, "msg")
    if req.resend:
        handle = core.storage.resent_handle(envelope)  # or NotFoundError: never stored
        if isinstance(handle, StoredBefore):
            core.give_back_token(session)
        return frames.HandleResult(int(handle))
    before = stored_before(core, space, envelope)
    if before is not None:
        core.give_back_token(session)
        return frames.HandleResult(before)
    try:
        core.charge_message(user_of(session), len(envelope.ciphertext))
    except QuotaExceededError:
        if before := core.storage.message_handle(space.space_id, envelope.signature):
            core.give_back_token(session)  # stored already: a full quota does not matter
            return frames.HandleResult(before)
        raise
    handle = core.storage.add_message(envelope, core.now_us())
    if isinstance(handle, StoredBefore):  # the same envelope again: nothing is new
        core.charge_message(user_of(session), -len(envelope.ciphertext), count=-1)
        core.give_back_token(session)
        return frames.HandleResult(int(handle))
    core.push_message(frames.MessagePushed(handle, envelope), space.space_id)
    return frames.HandleResult(handle)


def edit(core: RelayCore, session: Session, req: frames.Edit) -> frames.HandleResult:
    """Replace the author's own message in place (same handle) and push ``edited``; a
    resend of an edit applied already is answered again, and nothing else happens."""
    envelope = req.envelope
    space = checked_envelope(core, session, envelope, "msg")
    _author_check(core, session, space.space_id, req.handle)
    before = core.storage.message_handle(space.space_id, envelope.signature)
    if before == req.handle:
        core.give_back_token(session)
        return frames.HandleResult(req.handle)
    if before is not None:
        raise ProtocolError(
            f"this envelope is stored already, as message {before}", field="envelope"
        )
    check_current_epoch(space, envelope)
    old = stored_size(core, space.space_id, req.handle)
    core.charge_message(user_of(session), len(envelope.ciphertext) - old, count=0)
    core.storage.replace_message(req.handle, envelope)
    core.push_space(frames.MessageEdited(req.handle, envelope), space.space_id)
    return frames.HandleResult(req.handle)


def ephemeral(core: RelayCore, session: Session, req: frames.SendEphemeral) -> frames.Ok:
    """Relay a signal to the space's other connections; never stored."""
    space = checked_envelope(core, session, req.envelope, "eph")
    core.push_signal(frames.EphemeralPushed(req.envelope), space.space_id, exclude=session)
    return frames.Ok()


def history(core: RelayCore, session: Session, req: frames.HistoryRequest) -> frames.HistoryPage:
    """A page of stored messages, oldest first, and the cursor to the next older page:
    at most ``limit`` messages and at most what one frame holds.

    Raises :class:`LimitExceededError` for ``limit`` over 1000.
    """
    member_space(core, session, req.space_id)
    check_page_limit(req.limit, frames.MAX_HISTORY_LIMIT)

    def read(before: int | None, limit: int) -> tuple[list[frames.StoredMessage], int | None]:
        return core.storage.history(req.space_id, before, limit)

    items, cursor = history_page(read, req.before, req.limit)
    return frames.HistoryPage(tuple(items), cursor)
