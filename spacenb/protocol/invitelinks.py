"""Invite-link tokens and proofs (PROTOCOL.md, "Invite links").

A link's token is a secret its holder shares; the state log records only the public half
of the key pair it stands for, and whoever redeems the link proves it holds the token by
signing :func:`link_proof_bytes` with the private half.
"""

from __future__ import annotations

from ..exceptions import InviteError, ProtocolError
from . import crypto
from .encoding import b64d, b64e, lp_encode
from .keys import LinkKeyPair

__all__ = ["link_id_of_key", "link_keys_from_token", "link_proof_bytes", "new_link_token"]


def new_link_token() -> str:
    """A fresh invite-link token (32 random bytes, base64url). Only its holder can join."""
    return b64e(crypto.random_bytes(32))


def link_keys_from_token(token: str) -> LinkKeyPair:
    """The key pair a link token stands for: the log records the public half, and a
    redeemer proves it holds the token by signing with the private half."""
    if not isinstance(token, str) or not token:
        raise InviteError("an invite token is a non-empty string")
    try:
        raw = b64d(token, field="token")
    except ProtocolError:
        raise InviteError("malformed invite token") from None
    if len(raw) != 32:
        raise InviteError("malformed invite token")
    return LinkKeyPair.from_token_bytes(raw)


def link_id_of_key(link_key: str) -> str:
    """A link's public id: 16 hex digits of the SHA-256 of its key text."""
    return crypto.sha256(link_key.encode("utf-8")).hex()[:16]


def link_proof_bytes(space_id: str, member: str, prev: bytes) -> bytes:
    """What a redeemer signs with the link key: binds the use to one member and one place
    in the log, so a proof cannot be replayed by another user or at another time."""
    return lp_encode("spacenb/v2/link-proof", space_id, member, prev)
