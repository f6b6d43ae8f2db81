"""The events a space delivers to handlers: frozen dataclasses (python-api.md, "Events")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..protocol.envelope import Message
from ..protocol.statelog import StateEvent

__all__ = [
    "EphemeralEvent",
    "JoinRequest",
    "MessageDeletedEvent",
    "PresenceEvent",
    "RejectedEnvelopeEvent",
    "SpaceMessageEvent",
    "StateLogEntry",
    "TrustedIdentity",
]


@dataclass(frozen=True, slots=True)
class SpaceMessageEvent:
    """A verified, decrypted message (also used for edits: same handle, new message id)."""

    sender: str  # the reference's ``from``: server-stamped and signature-verified
    channel: str
    epoch: int
    content_type: str | None
    handle: int  # the relay's storage handle: a microsecond timestamp, stable across edits
    message: Message  # message.body is the payload; message.id is fresh per seal


@dataclass(frozen=True, slots=True)
class EphemeralEvent:
    sender: str
    subject: str
    data: Any


@dataclass(frozen=True, slots=True)
class MessageDeletedEvent:
    handle: int


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """Who is connected to the space now (pushed by the relay on every change)."""

    space_id: str
    peers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """Someone asks to join a space; answer with ``space.admit(member_id, identity_ecdh_pub)``."""

    space_id: str
    member_id: str
    identity_ecdh_pub: str  # "dh.…"
    signing_key: str  # "sig.…"
    role: str


@dataclass(frozen=True, slots=True)
class RejectedEnvelopeEvent:
    """An envelope a receiver dropped: unsigned, by a non-member, tampered or replayed."""

    space_id: str
    handle: int | None
    sender: str
    reason: str


@dataclass(frozen=True, slots=True)
class StateLogEntry:
    """One verified event of a space's signed state log, as ``space.state_log()`` shows it.

    ``member`` is whom the event concerns (None for a link, an epoch or genesis), ``role``
    the role it grants, ``epoch`` the epoch it starts (genesis starts 0), ``hash`` its hash
    in hex; ``body`` is the whole signed body.
    """

    seq: int
    kind: str
    actor: str
    member: str | None
    role: str | None
    epoch: int | None
    at: datetime
    hash: str
    body: dict[str, Any]

    @classmethod
    def of(cls, event: StateEvent) -> StateLogEntry:
        body = json.loads(event.body)
        epoch = 0 if event.kind == "genesis" else body.get("epoch")
        return cls(
            event.seq,
            event.kind,
            event.actor,
            body.get("member"),
            body.get("role"),
            epoch,
            datetime.fromtimestamp(event.at_us / 1_000_000, tz=UTC),
            event.hash().hex(),
            body,
        )


@dataclass(frozen=True, slots=True)
class TrustedIdentity:
    """Identity keys this client pinned for a user, as ``trusted_identities()`` lists them."""

    username: str
    fingerprint: str
    signing_key: str
    ecdh_key: str
    first_seen: datetime
    verified: bool
