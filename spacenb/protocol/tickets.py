"""Shard-store upload tickets (PROTOCOL.md, "Shard tickets").

A shard store may run on another machine and knows nothing of memberships. The relay,
which does, signs a short-lived ticket saying "this user is a member of this space until
T"; the store checks the ticket against the relay's public key before it accepts a share.
Text form: ``base64url(canonical JSON payload) "." base64url(raw r||s signature)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..exceptions import IntegrityError, ProtocolError
from . import crypto
from .encoding import b64d, b64e, canonical_json, lp_encode

__all__ = ["Ticket", "issue_ticket", "verify_ticket"]


class _Signer(Protocol):
    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Ticket:
    space_id: str
    username: str
    expires_at_us: int


def _signed_bytes(payload: bytes) -> bytes:
    return lp_encode("spacenb/v1/shard-ticket", payload)


def issue_ticket(signer: _Signer, *, space_id: str, username: str, expires_at_us: int) -> str:
    """A ticket for ``username`` to upload shares of ``space_id`` until ``expires_at_us``."""
    payload = canonical_json({"exp": expires_at_us, "space_id": space_id, "user": username})
    return f"{b64e(payload)}.{b64e(signer.sign(_signed_bytes(payload)))}"


def verify_ticket(
    ticket: object,
    relay_key: crypto.PublicKey | Sequence[crypto.PublicKey],
    *,
    space_id: str,
    now_us: int,
) -> Ticket:
    """Check a ticket's signature (by ``relay_key``, or by any one of several keys),
    space and expiry; :class:`IntegrityError` if any fails."""
    if not isinstance(ticket, str) or ticket.count(".") != 1:
        raise ProtocolError("a ticket is 'payload.signature'", field="ticket")
    body, sig = ticket.split(".")
    payload = b64d(body, field="ticket")
    signature, signed = b64d(sig, field="ticket"), _signed_bytes(payload)
    keys = tuple(relay_key) if isinstance(relay_key, Sequence) else (relay_key,)
    for key in keys:
        try:
            crypto.verify(key, signature, signed)
            break
        except IntegrityError:
            continue
    else:
        raise IntegrityError("ticket is not signed by a relay this store accepts")
    obj = json.loads(payload)
    parsed = Ticket(str(obj["space_id"]), str(obj["user"]), int(obj["exp"]))
    if parsed.space_id != space_id:
        raise IntegrityError("ticket is for another space")
    if parsed.expires_at_us < now_us:
        raise IntegrityError("ticket has expired")
    return parsed
