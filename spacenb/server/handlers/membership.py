"""Joining and membership: join, admit, rotate, keys, members, roster, roles, invites,
removal and leaving (PROTOCOL.md, "Joining")."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...exceptions import (
    ChannelNotFoundError,
    KeyUnavailableError,
    PermissionDeniedError,
    ProtocolError,
)
from ...protocol import frames
from ...protocol.wrap import WrappedKey
from ..storage import PendingJoin
from .base import (
    check_username,
    check_wrapped_keys,
    handles,
    known_space,
    member_space,
    owner_space,
    user_of,
)

if TYPE_CHECKING:
    from ..relay import Relay, Session


def join_request_event(relay: Relay, pending: PendingJoin) -> frames.JoinRequested:
    """The ``join_request`` event of an open join request, with the joiner's keys."""
    (user,) = relay.storage.get_users([pending.username])
    return frames.JoinRequested(
        pending.space_id, pending.username, user.signing_key, user.ecdh_key, pending.role
    )


def announce_join(relay: Relay, pending: PendingJoin) -> None:
    """Tell the keeper that someone waits for keys, and the space's subscribers too unless
    the keeper admits there (a join into a channel of thousands would otherwise reach every
    one of them for nothing; members who come online later still get open requests)."""
    event = join_request_event(relay, pending)
    space = relay.storage.get_space(pending.space_id)
    keeper_admits = (
        space is not None
        and not space.manual_admit
        and relay.keeper is not None
        and relay.storage.get_role(pending.space_id, relay.keeper) is not None
    )
    if not keeper_admits:
        relay.push_space(event, pending.space_id)
    relay.push_keeper(event)


def push_keys(relay: Relay, space_id: str, keys: Sequence[WrappedKey]) -> None:
    """Push newly stored wrapped keys to every connection of each recipient."""
    by_recipient: dict[str, list[WrappedKey]] = defaultdict(list)
    for key in keys:
        by_recipient[key.recipient].append(key)
    for recipient, theirs in by_recipient.items():
        relay.push_user(frames.KeysPushed(space_id, tuple(theirs)), recipient)


@handles(frames.Join)
def join(relay: Relay, session: Session, req: frames.Join) -> frames.JoinResult:
    """Become a member (pending until a key-holder admits), or learn one's keys.

    A private space admits only allowlisted users and redeemers of a valid link. Raises
    :class:`PermissionDeniedError` for a private space without either,
    :class:`InviteError` for a bad link, :class:`ChannelNotFoundError` for no space.
    """
    user = user_of(session)
    space = known_space(relay, req.space_id)
    storage = relay.storage
    role = storage.get_role(space.space_id, user)
    if role is not None:
        keys = tuple(storage.keys_for(space.space_id, user))
        if not keys and storage.has_pending_join(space.space_id, user):
            announce_join(relay, PendingJoin(space.space_id, user, role))
        return frames.JoinResult(relay.space_info(space), role, keys, not keys)
    if req.token is None and space.private and not storage.is_allowed(space.space_id, user):
        raise PermissionDeniedError(
            "this space is private: ask a member to invite you, or use an invite link"
        )
    role = storage.join_space(space.space_id, user, "viewer", relay.now_us(), req.token)
    relay.push_space(frames.MemberChanged(space.space_id, user, role), space.space_id)
    announce_join(relay, PendingJoin(space.space_id, user, role))
    return frames.JoinResult(relay.space_info(space), role, (), True)


@handles(frames.Admit)
def admit(relay: Relay, session: Session, req: frames.Admit) -> frames.Ok:
    """Store group keys a member wrapped for a newcomer and close its join request."""
    space, _ = member_space(relay, session, req.space_id)
    if relay.storage.get_role(space.space_id, req.member) is None:
        raise PermissionDeniedError(f"{req.member!r} is not a member: they must join first")
    check_wrapped_keys(
        relay,
        req.keys,
        space_id=space.space_id,
        wrapper=user_of(session),
        epochs=range(space.epoch + 1),
        recipients={req.member},
    )
    relay.storage.add_keys(req.keys, admitted=req.member)
    push_keys(relay, space.space_id, relay.storage.keys_for(space.space_id, req.member))
    return frames.Ok()


@handles(frames.Rotate)
def rotate(relay: Relay, session: Session, req: frames.Rotate) -> frames.EpochResult:
    """Start the next epoch of a ``rotate`` space with keys wrapped to chosen members
    (owner or editor only).

    The new key must be wrapped to the keeper when it is a member. Raises
    :class:`KeyUnavailableError` unless ``epoch`` is the current epoch + 1.
    """
    space, role = member_space(relay, session, req.space_id)
    if role == "viewer":
        # A rotation chooses who reads what follows: that is management, not chat.
        raise PermissionDeniedError("only the owner or an editor may rotate the space's key")
    if space.policy != "rotate":
        raise PermissionDeniedError("only 'rotate' spaces change epochs")
    if req.epoch != space.epoch + 1:
        raise KeyUnavailableError(
            f"the space is at epoch {space.epoch}; rotate to {space.epoch + 1}"
        )
    members = {m.member_id for m in relay.storage.list_members(space.space_id)}
    check_wrapped_keys(
        relay,
        req.keys,
        space_id=space.space_id,
        wrapper=user_of(session),
        epochs={req.epoch},
        recipients=members,
    )
    if relay.keeper in members and not any(k.recipient == relay.keeper for k in req.keys):
        raise ProtocolError("the new key must also be wrapped for the keeper", field="keys")
    relay.storage.advance_epoch(space.space_id, req.epoch, req.keys)
    relay.push_space(frames.EpochChanged(space.space_id, req.epoch), space.space_id)
    push_keys(relay, space.space_id, req.keys)
    return frames.EpochResult(req.epoch)


@handles(frames.FetchKeys)
def keys(relay: Relay, session: Session, req: frames.FetchKeys) -> frames.KeysResult:
    """Every group key wrapped for the caller in this space."""
    member_space(relay, session, req.space_id)
    return frames.KeysResult(tuple(relay.storage.keys_for(req.space_id, user_of(session))))


@handles(frames.Members)
def members(relay: Relay, session: Session, req: frames.Members) -> frames.MemberList:
    """The space's members and roles."""
    member_space(relay, session, req.space_id)
    return frames.MemberList(tuple(relay.storage.list_members(req.space_id)))


@handles(frames.Roster)
def roster(relay: Relay, session: Session, req: frames.Roster) -> frames.RosterResult:
    """The members with their published keys and whether they are online."""
    member_space(relay, session, req.space_id)
    online = set(relay.online(req.space_id))
    return frames.RosterResult(
        tuple(
            frames.RosterEntry(
                m.member_id, m.role, u.signing_key, u.ecdh_key, m.member_id in online
            )
            for m, u in relay.storage.list_member_users(req.space_id)
        )
    )


@handles(frames.SetRole)
def set_role(relay: Relay, session: Session, req: frames.SetRole) -> frames.Ok:
    """The owner makes a member an ``editor`` or a ``viewer``."""
    space = owner_space(relay, session, req.space_id)
    if req.role == "owner":
        raise ProtocolError("a space has exactly one owner", field="role")
    if req.member == space.owner:
        raise PermissionDeniedError("the owner's role is fixed")
    if not relay.storage.set_role(space.space_id, req.member, req.role):
        raise ChannelNotFoundError(f"{req.member!r} is not a member of this space")
    relay.push_space(frames.MemberChanged(space.space_id, req.member, req.role), space.space_id)
    return frames.Ok()


@handles(frames.Invite)
def invite(relay: Relay, session: Session, req: frames.Invite) -> frames.Ok:
    """A member adds a username to the space's allowlist (it may join a private space)."""
    member_space(relay, session, req.space_id)
    relay.storage.allow(req.space_id, check_username(req.username))
    return frames.Ok()


def _drop(relay: Relay, space_id: str, username: str, *, disallow: bool) -> None:
    """End a membership: tell the subscribers (the leaver too), then unsubscribe it."""
    if not relay.storage.remove_member(space_id, username, disallow=disallow):
        raise ChannelNotFoundError(f"{username!r} is not a member of this space")
    relay.push_space(frames.MemberChanged(space_id, username, None), space_id)
    relay.drop_member(space_id, username)


@handles(frames.RemoveMember)
def remove_member(relay: Relay, session: Session, req: frames.RemoveMember) -> frames.Ok:
    """The owner removes a member, who also leaves the allowlist (so it cannot join a
    private space again without a new invitation). A ``rotate`` space's owner then rotates.
    """
    space = owner_space(relay, session, req.space_id)
    if req.member == space.owner:
        raise PermissionDeniedError("the owner cannot be removed")
    _drop(relay, space.space_id, req.member, disallow=True)
    return frames.Ok()


@handles(frames.Leave)
def leave(relay: Relay, session: Session, req: frames.Leave) -> frames.Ok:
    """A member other than the owner leaves."""
    space, role = member_space(relay, session, req.space_id)
    if role == "owner":
        raise PermissionDeniedError("the owner cannot leave the space")
    _drop(relay, space.space_id, user_of(session), disallow=False)
    return frames.Ok()
