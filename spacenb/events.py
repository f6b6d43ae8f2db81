"""The events a space delivers to handlers: frozen dataclasses (python-api.md, "Events")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .protocol.envelope import Message

__all__ = [
    "EphemeralEvent",
    "JoinRequest",
    "MessageDeletedEvent",
    "PresenceEvent",
    "RejectedEnvelopeEvent",
    "SpaceMessageEvent",
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
