"""Invite links: mint, list and revoke (owner only). Redemption is part of ``join``."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from ...exceptions import InviteError, ProtocolError
from ...protocol import frames
from ..storage import link_id_of, token_hash
from .base import handles, owner_space

if TYPE_CHECKING:
    from ..relay import Relay, Session

TOKEN_BYTES = 24


@handles(frames.CreateLink)
def create_link(relay: Relay, session: Session, req: frames.CreateLink) -> frames.LinkInfo:
    """Mint a link; the answer is the only time its token is shown."""
    space = owner_space(relay, session, req.space_id)
    if req.role == "owner":
        raise ProtocolError("a link grants 'editor' or 'viewer'", field="role")
    if req.expires_in_sec == 0:
        raise ProtocolError("must be at least 1 second, or null", field="expires_in_sec")
    if req.max_uses == 0:
        raise ProtocolError("must be at least 1, or null", field="max_uses")
    now = relay.now_us()
    token = secrets.token_urlsafe(TOKEN_BYTES)
    link = frames.LinkInfo(
        link_id=link_id_of(token_hash(token)),
        space_id=space.space_id,
        role=req.role,
        expires_at_us=None if req.expires_in_sec is None else now + req.expires_in_sec * 10**6,
        max_uses=req.max_uses,
        uses=0,
        revoked=False,
        created_at_us=now,
        token=token,
    )
    relay.storage.create_link(link, token)
    return link


@handles(frames.ListLinks)
def list_links(relay: Relay, session: Session, req: frames.ListLinks) -> frames.LinkList:
    """The space's links with their use counts, without tokens."""
    owner_space(relay, session, req.space_id)
    return frames.LinkList(tuple(relay.storage.list_links(req.space_id)))


@handles(frames.RevokeLink)
def revoke_link(relay: Relay, session: Session, req: frames.RevokeLink) -> frames.Ok:
    """Revoke a link; :class:`InviteError` if the space has no such link."""
    owner_space(relay, session, req.space_id)
    if not relay.storage.revoke_link(req.space_id, req.token):
        raise InviteError("unknown invite link")
    return frames.Ok()
