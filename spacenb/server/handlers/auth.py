"""``auth`` and ``ping``: the only requests accepted before authentication."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from ...exceptions import AuthenticationError, IntegrityError, ProtocolError
from ...protocol import crypto, frames
from ...protocol.keys import decode_public_key
from ...protocol.statelog import check_username

if TYPE_CHECKING:
    from ..core import RelayCore, Session


def auth(core: RelayCore, session: Session, req: frames.Auth) -> frames.AuthResult:
    """Sign up (first use of a username binds it to these keys) or sign in.

    A wrong app key also closes the connection. Raises :class:`AuthenticationError` for a
    wrong app key, a reserved username, a bad signature or a username bound to other keys;
    :class:`ConnectionLimitError` when the user or the address has as many connections
    signed in as the relay allows.
    """
    if session.username is not None:
        raise ProtocolError("this connection is already authenticated", field="op")
    if not hmac.compare_digest(req.app_key.encode(), core.app_key.encode()):
        session.closing = True
        raise AuthenticationError("wrong app key")
    check_username(req.username)
    if req.username == core.keeper:
        raise AuthenticationError(f"the username {req.username!r} is reserved for the keeper")
    signer = decode_public_key(req.signing_key, "sig", field="signing_key")
    decode_public_key(req.ecdh_key, "dh", field="ecdh_key")
    signed = frames.auth_signed_bytes(
        session.nonce, req.app_key, req.username, req.signing_key, req.ecdh_key
    )
    try:
        crypto.verify(signer, req.signature, signed)
    except IntegrityError:
        raise AuthenticationError("the auth signature does not verify") from None
    core.check_room(session, req.username)
    user = frames.UserEntry(req.username, req.signing_key, req.ecdh_key)
    stored, created = core.storage.register_user(user, core.now_us())
    if stored != user:
        raise AuthenticationError(f"username {req.username!r} is taken by another key")
    core.bind(session, req.username)
    return frames.AuthResult(req.username, created, core.keeper, core.shard_stores)


def ping(core: RelayCore, session: Session, req: frames.Ping) -> frames.Ok:
    """Liveness check; allowed before authentication."""
    return frames.Ok()
