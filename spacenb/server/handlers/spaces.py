"""Spaces and the channel directory: create, look up, list, read a state log; user keys;
shard tickets.

Public channel names are one namespace: the first to create a name has it. A private
channel's name is registered under its owner (``name``, a separator no name can hold,
``owner``): it collides with nobody else's name, so trying a name tells an outsider
nothing about private channels, and only members and invited users find it by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...exceptions import (
    ChannelExistsError,
    IntegrityError,
    LimitExceededError,
    PermissionDeniedError,
    ProtocolError,
    ServerError,
)
from ...protocol import crypto, frames
from ...protocol.keys import decode_public_key
from ...protocol.relayrules import (
    check_channel_name,
    check_link_usable,
    check_page_limit,
    check_wrapped_keys,
    may_see,
    private_prefix,
    registered_name,
)
from ...protocol.statelog import SpaceState
from ...protocol.tickets import issue_ticket
from ..storage import SpaceRecord
from .base import known_space, member_space, user_of, visible_space

if TYPE_CHECKING:
    from ..core import RelayCore, Session

TICKET_LIFETIME_US = 10 * 60 * 1_000_000


def create_space(core: RelayCore, session: Session, req: frames.CreateSpace) -> frames.SpaceInfo:
    """Create a space from its genesis event, owned by the caller, and register its channel
    name when it has one.

    The genesis must verify (it is signed by the space key, whose public half is the
    id), name the caller with its registered keys as owner, and name this relay's keeper
    with its registered keys, if any. The epoch-0 key must be wrapped to the caller and,
    when genesis admits the keeper, to the keeper. Raises :class:`ChannelExistsError` if
    the name (or id) is taken.
    """
    user = user_of(session)
    genesis = req.genesis
    state = SpaceState(genesis)  # verifies the space key's signature and the body
    (owner,) = core.storage.get_users([user])
    if state.owner != user or (
        state.members[user].signing_key,
        state.members[user].ecdh_key,
    ) != (owner.signing_key, owner.ecdh_key):
        raise PermissionDeniedError("genesis must name the caller, with its keys, as owner")
    if state.name is not None:
        check_channel_name(state.name)
    if state.keeper is not None:
        keeper = core.storage.get_users([state.keeper]) if state.keeper == core.keeper else []
        recorded = state.members[state.keeper]
        if not keeper or (keeper[0].signing_key, keeper[0].ecdh_key) != (
            recorded.signing_key,
            recorded.ecdh_key,
        ):
            raise PermissionDeniedError("genesis names a keeper that is not this relay's")
    first = set(state.members)
    check_wrapped_keys(
        state,
        req.keys,
        wrapper=user,
        allowed=lambda k: k.epoch == 0 and k.recipient in first,
    )
    if {k.recipient for k in req.keys} != first:
        raise ProtocolError(
            "the epoch-0 key must be wrapped to the owner and to an admitted keeper",
            field="keys",
        )
    name = None if state.name is None else registered_name(state.name, state.private, user)
    space = SpaceRecord(state.space_id, name, state.private, core.now_us())
    try:
        core.storage.create_space(space, genesis, req.keys)
    except ChannelExistsError:
        if state.private and state.name is not None:
            raise ChannelExistsError(
                f"you own a private channel named {state.name!r} already"
            ) from None
        raise
    core.remember_state(state)
    return core.space_info(state)


def space_info(core: RelayCore, session: Session, req: frames.GetSpaceInfo) -> frames.SpaceInfo:
    """The space's public record; ``not_found`` for a private space the caller may not see."""
    return core.space_info(visible_space(core, session, req.space_id))


def state_log(core: RelayCore, session: Session, req: frames.GetStateLog) -> frames.StateLogPage:
    """Events ``since`` … of the space's log. A private space's log goes to its members,
    to invited users and to a link holder who proves it holds the link's token."""
    state = known_space(core, req.space_id)
    user = user_of(session)
    if not may_see(state, user) and not _proves_link(core, state, session, req):
        raise PermissionDeniedError(
            "this space is private: ask a member to invite you, or use an invite link"
        )
    check_page_limit(req.limit, frames.MAX_LOG_PAGE)
    events, _cut = frames.fitting(state.events[req.since : req.since + req.limit])
    return frames.StateLogPage(tuple(events), state.head_seq)


def _proves_link(
    core: RelayCore, state: SpaceState, session: Session, req: frames.GetStateLog
) -> bool:
    """Whether the request proves it holds a link's token. Raises :class:`InviteError`
    for a proven link that can no longer be used (revoked, expired, used up)."""
    link = state.links.get(req.link_id or "")
    if link is None or req.proof is None:
        return False
    signed = frames.log_read_signed_bytes(state.space_id, user_of(session), session.nonce)
    try:
        crypto.verify(decode_public_key(link.link_key, "lnk"), req.proof, signed)
    except IntegrityError:
        return False
    check_link_usable(link, core.now_us())
    return True


def resolve(core: RelayCore, session: Session, req: frames.Resolve) -> frames.ResolveResult:
    """The space id of a channel name; None if unknown or private and not visible.

    A private channel the caller may see comes first (its members pinned it by name), then
    the public channel of that name.
    """
    user = user_of(session)
    for scoped in core.storage.channels_named_under(private_prefix(req.name)):
        state = core.state(scoped)
        if state is not None and state.name == req.name and may_see(state, user):
            return frames.ResolveResult(state.space_id)
    space_id = core.storage.resolve_channel(req.name)
    state = None if space_id is None else core.state(space_id)
    if state is None or not may_see(state, user):
        return frames.ResolveResult(None)
    return frames.ResolveResult(state.space_id)


def list_channels(
    core: RelayCore, session: Session, req: frames.ListChannels
) -> frames.ChannelList:
    """Public channels by name, a page at a time (private channels are never listed)."""
    limit = frames.MAX_CHANNELS_PAGE
    page = core.storage.public_channels_page(req.after, limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return frames.ChannelList(tuple(page), page[-1].name if more else None)


def user_keys(core: RelayCore, session: Session, req: frames.UserKeys) -> frames.UserKeysResult:
    """The published keys of those of ``usernames`` that exist (at most 1000 asked).

    Raises :class:`LimitExceededError` for more.
    """
    if len(req.usernames) > frames.MAX_USER_KEYS:
        raise LimitExceededError(
            f"user_keys takes at most {frames.MAX_USER_KEYS} usernames (MAX_USER_KEYS), "
            f"got {len(req.usernames)}"
        )
    return frames.UserKeysResult(tuple(core.storage.get_users(req.usernames)))


def shard_ticket(core: RelayCore, session: Session, req: frames.ShardTicket) -> frames.TicketResult:
    """A ten-minute ticket letting a member upload shares of this space's files.

    Raises :class:`ServerError` if this relay runs no shard stores.
    """
    member_space(core, session, req.space_id)
    if not core.shard_stores:
        raise ServerError("this relay has no shard stores")
    expires_at_us = core.now_us() + TICKET_LIFETIME_US
    ticket = issue_ticket(
        core.relay_keys,
        space_id=req.space_id,
        username=user_of(session),
        expires_at_us=expires_at_us,
    )
    return frames.TicketResult(ticket, core.shard_stores, core.shards_needed, expires_at_us)
