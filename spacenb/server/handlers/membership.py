"""Joining and the state log: join, admit, keys, add_keys, and every other signed change
(append).

Each change arrives as a state event signed by its actor. The relay checks it with the
same rules every member applies (:class:`~spacenb.protocol.statelog.SpaceState`), stores
it in one transaction with its effects, and pushes it to the space's subscribers, who
verify it again before they believe it (PROTOCOL.md, "The state log").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...exceptions import (
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    StaleStateError,
)
from ...protocol import frames
from ...protocol.relayrules import check_link_usable, check_wrapped_keys
from ...protocol.relayrules import keys_page as page_of_keys
from ...protocol.statelog import SpaceState, StateEvent
from ...protocol.wrap import WrappedKey
from ..storage import PendingJoin
from .base import (
    known_space,
    member_space,
    stored_size,
    user_of,
)

if TYPE_CHECKING:
    from ..core import RelayCore, Session


def join_request_event(
    core: RelayCore, state: SpaceState, pending: PendingJoin
) -> frames.JoinRequested:
    """The ``join_request`` event of an open join request, with the keys the log records."""
    member = state.members[pending.username]
    return frames.JoinRequested(
        pending.space_id, pending.username, member.signing_key, member.ecdh_key, pending.role
    )


def announce_join(core: RelayCore, state: SpaceState, pending: PendingJoin) -> None:
    """Tell the keeper that someone waits for keys, and the space's subscribers too unless
    the keeper admits there (a join into a channel of thousands would otherwise reach every
    one of them for nothing; members who come online later still get open requests)."""
    event = join_request_event(core, state, pending)
    if state.keeper_admits() and state.keeper == core.keeper:
        core.push_keeper(event)
    else:
        core.push_space(event, pending.space_id)


def after_foreign_event(core: RelayCore, state: SpaceState, event: StateEvent) -> None:
    """What an event another relay of the service appended (now applied to the cached
    state) means for this relay's connections: a departed member's are unsubscribed, and
    a join that waits for a member's admission is announced to the subscribers here (a
    keeper's join is announced to the keeper's relay by the relay that stored it)."""
    if event.kind in ("remove", "leave"):
        core.drop_member(state.space_id, event.fields()["member"])
    elif event.kind == "add":
        member = event.fields()["member"]
        role = state.role_of(member)
        keeper_admits = state.keeper_admits() and state.keeper == core.keeper
        if role is not None and not keeper_admits:
            pending = PendingJoin(state.space_id, member, role)
            core.push_space(join_request_event(core, state, pending), state.space_id)


def push_keys(core: RelayCore, space_id: str, keys: Sequence[WrappedKey]) -> None:
    """Push newly stored wrapped keys to every connection of each recipient (in events of
    at most :data:`~spacenb.protocol.frames.MAX_KEYS_PAGE` keys)."""
    by_recipient: dict[str, list[WrappedKey]] = defaultdict(list)
    for key in keys:
        by_recipient[key.recipient].append(key)
    size = frames.MAX_KEYS_PAGE
    for recipient, theirs in by_recipient.items():
        for start in range(0, len(theirs), size):
            chunk = tuple(theirs[start : start + size])
            core.push_user(frames.KeysPushed(space_id, chunk), recipient)


def keys_page(
    core: RelayCore, space_id: str, recipient: str, since_epoch: int | None = None
) -> tuple[tuple[WrappedKey, ...], int | None]:
    """The keys wrapped for ``recipient`` from ``since_epoch`` on, one page of them, and
    the epoch the next page starts at (None if this is the last)."""
    return page_of_keys(core.storage.keys_for(space_id, recipient), since_epoch)


def store_event(
    core: RelayCore,
    state: SpaceState,
    event: StateEvent,
    *,
    keys: Sequence[WrappedKey] = (),
    join: PendingJoin | None = None,
    close_join: str | None = None,
    delete_handle: int | None = None,
) -> None:
    """Store a checked event with its effects (those of :meth:`Storage.append_event`) and
    make it the head. If the log already has an event at its seq (another relay on the
    same database stored one first), catch the cached state up and raise
    :class:`StaleStateError`."""
    try:
        core.storage.append_event(
            event,
            keys=keys,
            join=join,
            close_join=close_join,
            delete_handle=delete_handle,
            now_us=core.now_us(),
        )
    except StaleStateError:
        core.catch_up(state)
        raise
    core.apply_state(state, event)


def _check_identity(core: RelayCore, user: str, signing_key: str, ecdh_key: str) -> None:
    """An ``add`` must carry the keys its member signed up with."""
    (registered,) = core.storage.get_users([user])
    if (registered.signing_key, registered.ecdh_key) != (signing_key, ecdh_key):
        raise PermissionDeniedError("an add event carries the keys its member signed in with")


def join(core: RelayCore, session: Session, req: frames.Join) -> frames.JoinResult:
    """Become a member by appending one's own signed ``add`` event (pending until a
    key-holder admits), or, already a member (no event), learn one's keys.

    Raises :class:`PermissionDeniedError` for a private space without an invitation or a
    link, :class:`InviteError` for a bad link, :class:`ChannelNotFoundError` for no space,
    :class:`StaleStateError` if the event does not follow the log's head.
    """
    user = user_of(session)
    state = known_space(core, req.space_id)
    storage = core.storage
    role = state.role_of(user)
    if req.event is None:
        if role is None:
            raise PermissionDeniedError("not a member of this space: join with an add event")
        keys, _more = keys_page(core, state.space_id, user)  # the rest: ask ``keys``
        if not keys and storage.has_join_request(state.space_id, user):
            announce_join(core, state, PendingJoin(state.space_id, user, role))
        return frames.JoinResult(core.space_info(state), role, keys, not keys)
    event = req.event
    if event.kind != "add" or event.actor != user:
        raise ProtocolError("join takes the caller's own 'add' event", field="event")
    body = state.check(event)
    _check_identity(core, user, body["signing_key"], body["ecdh_key"])
    if body["via"] == "link":
        # SpaceState.check decided revocation, use and expiry at the event's signed time;
        # the relay's own clock has the last word on expiry.
        check_link_usable(state.links[body["link_id"]], core.now_us())
    pending = PendingJoin(state.space_id, user, body["role"])
    store_event(core, state, event, join=pending)
    announce_join(core, state, pending)
    return frames.JoinResult(core.space_info(state), body["role"], (), True)


def admit(core: RelayCore, session: Session, req: frames.Admit) -> frames.Ok:
    """Store group keys a key-holder wrapped for a newcomer and close its join request."""
    state, _ = member_space(core, session, req.space_id)
    user = user_of(session)
    if req.member not in state.members:
        raise PermissionDeniedError(f"{req.member!r} is not a member: they must join first")
    check_wrapped_keys(
        state,
        req.keys,
        wrapper=user,
        allowed=lambda k: (
            k.recipient == req.member
            and state.may_wrap(user, k.epoch)
            and state.may_hold(req.member, k.epoch)
        ),
    )
    core.storage.add_keys(req.keys, admitted=req.member)
    push_keys(core, state.space_id, core.storage.keys_for(state.space_id, req.member))
    return frames.Ok()


def keys(core: RelayCore, session: Session, req: frames.FetchKeys) -> frames.KeysResult:
    """The group keys wrapped for the caller in this space, a page at a time."""
    member_space(core, session, req.space_id)
    keys, next_epoch = keys_page(core, req.space_id, user_of(session), req.since_epoch)
    return frames.KeysResult(keys, next_epoch)


def add_keys(core: RelayCore, session: Session, req: frames.AddKeys) -> frames.Ok:
    """Store keys the caller wrapped for members the log entitles to them, and push them:
    how a rotation hands out the keys that did not fit in its ``append``."""
    state, _ = member_space(core, session, req.space_id)
    user = user_of(session)
    check_wrapped_keys(
        state,
        req.keys,
        wrapper=user,
        allowed=lambda k: state.may_wrap(user, k.epoch) and state.may_hold(k.recipient, k.epoch),
    )
    core.storage.add_keys(req.keys)
    push_keys(core, state.space_id, req.keys)
    return frames.Ok()


def append(core: RelayCore, session: Session, req: frames.Append) -> frames.AppendResult:
    """Append the caller's signed state event (anything but genesis and add), with its
    effects: an ``epoch`` stores and pushes the new key's wraps, a ``remove`` or ``leave``
    unsubscribes the departed member, a ``delete`` removes the stored ciphertext.

    Raises what :meth:`SpaceState.check` raises, :class:`ChannelNotFoundError` for an
    unknown space or message.
    """
    user = user_of(session)
    state = known_space(core, req.space_id)
    event: StateEvent = req.event
    if event.actor != user:
        raise PermissionDeniedError("a state event is signed by the caller")
    if event.kind in ("genesis", "add"):
        raise ProtocolError(
            f"'{event.kind}' events go through create_space and join", field="event"
        )
    if event.kind != "epoch" and req.keys:
        raise ProtocolError("only an 'epoch' event carries keys", field="keys")
    body = state.check(event)
    storage = core.storage
    close_join = body["member"] if event.kind in ("remove", "leave") else None
    delete_handle: int | None = None
    if event.kind == "epoch":
        recipients = set(body["recipients"])
        check_wrapped_keys(
            state,
            req.keys,
            wrapper=user,
            allowed=lambda k: k.epoch == body["epoch"] and k.recipient in recipients,
        )
        # All of them, or (a rotation of more members than one frame holds) the caller's
        # own among the first, the rest to follow with add_keys.
        if user not in {k.recipient for k in req.keys}:
            raise ProtocolError("the keys of an epoch event include the caller's own", field="keys")
    elif event.kind == "delete":
        source = storage.message_source(state.space_id, body["handle"])
        if source is None:
            raise NotFoundError(f"no message at handle {body['handle']}")
        if source != body["author"]:
            raise PermissionDeniedError("the delete event names another author")
        delete_handle = body["handle"]
        freed = stored_size(core, state.space_id, body["handle"])
    # keys: an epoch's wraps (no other event carries any, checked above)
    store_event(
        core, state, event, keys=req.keys, close_join=close_join, delete_handle=delete_handle
    )
    if event.kind == "delete":
        core.charge_message(body["author"], -freed, count=-1)
    if event.kind == "epoch":
        push_keys(core, state.space_id, req.keys)
    elif event.kind in ("remove", "leave"):
        core.drop_member(state.space_id, body["member"])
    return frames.AppendResult(event.seq)
