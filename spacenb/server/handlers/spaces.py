"""Spaces and the channel directory: create, look up, list; user keys; shard tickets."""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

from ...exceptions import ProtocolError, ServerError
from ...protocol import crypto, frames
from ...protocol.keys import decode_space_id
from ...protocol.tickets import issue_ticket
from ..storage import SpaceRecord
from .base import (
    check_wrapped_keys,
    handles,
    may_see,
    member_space,
    user_of,
    visible_space,
)

if TYPE_CHECKING:
    from ..relay import Relay, Session

MAX_CHANNEL_NAME = 100
TICKET_LIFETIME_US = 10 * 60 * 1_000_000


def check_channel_name(name: str) -> str:
    """``name`` if it is a usable channel name (1 to 100 characters, no surrounding
    spaces, no control characters), else :class:`ProtocolError`."""
    if not name or len(name) > MAX_CHANNEL_NAME or name != name.strip():
        raise ProtocolError(
            f"a channel name has 1 to {MAX_CHANNEL_NAME} characters and no surrounding spaces",
            field="name",
        )
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ProtocolError("control characters are not allowed", field="name")
    return name


@handles(frames.CreateSpace)
def create_space(relay: Relay, session: Session, req: frames.CreateSpace) -> frames.SpaceInfo:
    """Create a space owned by the caller, and register its channel name when given.

    The space key's signature proves the caller minted the id; the epoch-0 key must be
    wrapped to the caller and may be wrapped to the keeper, who then becomes a member.
    Raises :class:`ChannelExistsError` if the name (or id) is taken.
    """
    user = user_of(session)
    space_key = decode_space_id(req.space_id)
    if req.name is not None:
        check_channel_name(req.name)
    signed = frames.create_space_signed_bytes(
        req.space_id, user, req.policy, req.private, req.manual_admit, req.name
    )
    crypto.verify(space_key, req.signature, signed)
    recipients = {user} if relay.keeper is None else {user, relay.keeper}
    check_wrapped_keys(
        relay, req.keys, space_id=req.space_id, wrapper=user, epochs={0}, recipients=recipients
    )
    if not any(k.recipient == user for k in req.keys):
        raise ProtocolError("the creator must wrap the epoch-0 key to itself", field="keys")
    members = [frames.MemberEntry(user, "owner")]
    if relay.keeper is not None and any(k.recipient == relay.keeper for k in req.keys):
        members.append(frames.MemberEntry(relay.keeper, "editor"))
    space = SpaceRecord(
        req.space_id, user, req.policy, req.private, req.manual_admit, req.name, 0,
        relay.now_us(),
    )  # fmt: skip
    relay.storage.create_space(space, members, req.keys)
    return relay.space_info(space)


@handles(frames.GetSpaceInfo)
def space_info(relay: Relay, session: Session, req: frames.GetSpaceInfo) -> frames.SpaceInfo:
    """The space's public record; ``not_found`` for a private space the caller may not see."""
    return relay.space_info(visible_space(relay, session, req.space_id))


@handles(frames.Resolve)
def resolve(relay: Relay, session: Session, req: frames.Resolve) -> frames.ResolveResult:
    """The space id of a channel name; None if unknown or private and not visible."""
    space_id = relay.storage.resolve_channel(req.name)
    space = None if space_id is None else relay.storage.get_space(space_id)
    if space is None or not may_see(relay, space, user_of(session)):
        return frames.ResolveResult(None)
    return frames.ResolveResult(space.space_id)


@handles(frames.ListChannels)
def list_channels(relay: Relay, session: Session, req: frames.ListChannels) -> frames.ChannelList:
    """Every public channel, by name (private channels are never listed)."""
    return frames.ChannelList(tuple(relay.storage.list_public_channels()))


@handles(frames.UserKeys)
def user_keys(relay: Relay, session: Session, req: frames.UserKeys) -> frames.UserKeysResult:
    """The published keys of those of ``usernames`` that exist."""
    return frames.UserKeysResult(tuple(relay.storage.get_users(req.usernames)))


@handles(frames.ShardTicket)
def shard_ticket(relay: Relay, session: Session, req: frames.ShardTicket) -> frames.TicketResult:
    """A ten-minute ticket letting a member upload shares of this space's files.

    Raises :class:`ServerError` if this relay runs no shard stores.
    """
    member_space(relay, session, req.space_id)
    if not relay.shard_stores:
        raise ServerError("this relay has no shard stores")
    expires_at_us = relay.now_us() + TICKET_LIFETIME_US
    ticket = issue_ticket(
        relay.relay_keys,
        space_id=req.space_id,
        username=user_of(session),
        expires_at_us=expires_at_us,
    )
    return frames.TicketResult(ticket, relay.shard_stores, relay.shards_needed, expires_at_us)
