"""Sealing, signing, verifying and opening messages (PROTOCOL.md, "Envelopes").

A message is sealed once with the space's group key (AES-256-GCM, fresh 96-bit IV, the
associated data binding space, epoch, channel, content type, sender and kind) and the
resulting envelope is signed by the sender's identity key over its canonical encoding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..clock import Clock, SystemClock
from ..exceptions import IntegrityError, ProtocolError
from . import crypto
from .encoding import canonical_json, lp_encode
from .keys import IdentityKeys

__all__ = [
    "Envelope",
    "EnvelopeKind",
    "Message",
    "envelope_aad",
    "open_envelope",
    "seal_envelope",
    "verify_envelope",
]

EnvelopeKind = Literal["msg", "eph"]
MESSAGE_ID_SIZE = 16
_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class Message:
    """The sealed plaintext: a fresh id per seal, the sender's clock, and the body."""

    id: str
    sent_at_ms: int
    body: Any

    def to_bytes(self) -> bytes:
        return canonical_json({"body": self.body, "id": self.id, "ts": self.sent_at_ms})

    @classmethod
    def from_bytes(cls, data: bytes) -> Message:
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError("sealed plaintext is not JSON", field="message") from exc
        if not isinstance(obj, dict) or set(obj) != {"body", "id", "ts"}:
            raise ProtocolError("sealed plaintext must have body, id, ts", field="message")
        msg_id, ts = obj["id"], obj["ts"]
        if not isinstance(msg_id, str) or not _MESSAGE_ID.fullmatch(msg_id):
            raise ProtocolError("message id must be 32 lowercase hex digits", field="message.id")
        if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
            raise ProtocolError("ts must be a non-negative integer", field="message.ts")
        return cls(obj["id"], obj["ts"], obj["body"])


@dataclass(frozen=True, slots=True)
class Envelope:
    """What travels and is stored: cleartext routing fields, the sealed body, a signature."""

    kind: EnvelopeKind
    source: str  # sender username
    target: str  # space id
    subject: str  # channel (messages) or signal subject (ephemeral)
    epoch: int
    content_type: str  # "" when none
    iv: bytes
    ciphertext: bytes
    signature: bytes = field(default=b"", repr=False)

    def signed_bytes(self) -> bytes:
        """The canonical encoding the signature covers."""
        return lp_encode(
            f"spacenb/v1/envelope/{self.kind}",
            self.source,
            self.target,
            self.subject,
            self.epoch,
            self.content_type,
            self.iv,
            self.ciphertext,
        )


def envelope_aad(
    kind: str, source: str, target: str, subject: str, epoch: int, content_type: str
) -> bytes:
    """The AEAD associated data: binds the routing fields to the ciphertext."""
    return lp_encode(f"spacenb/v1/aad/{kind}", target, epoch, subject, content_type, source)


def seal_envelope(
    identity: IdentityKeys,
    group_key: bytes,
    *,
    kind: EnvelopeKind = "msg",
    source: str,
    target: str,
    subject: str,
    epoch: int,
    content_type: str | None,
    body: Any,
    clock: Clock | None = None,
    message_id: str | None = None,
    iv: bytes | None = None,
) -> tuple[Envelope, Message]:
    """Seal ``body`` once for the group and sign the envelope with ``identity``.

    ``message_id`` and ``iv`` exist for test vectors; leave them unset otherwise.
    """
    if not isinstance(subject, str) or not subject:
        raise ProtocolError("channel must be a non-empty string", field="subject")
    message = Message(
        message_id or crypto.random_bytes(MESSAGE_ID_SIZE).hex(),
        (clock or SystemClock()).now_us() // 1000,
        body,
    )
    try:
        plaintext = message.to_bytes()
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"payload is not JSON-serialisable: {exc}", field="payload") from exc
    ctype = content_type or ""
    nonce = iv if iv is not None else crypto.random_bytes(crypto.GCM_IV_SIZE)
    aad = envelope_aad(kind, source, target, subject, epoch, ctype)
    ciphertext = crypto.aead_seal(group_key, nonce, plaintext, aad)
    unsigned = Envelope(kind, source, target, subject, epoch, ctype, nonce, ciphertext)
    signed = Envelope(
        kind, source, target, subject, epoch, ctype, nonce, ciphertext,
        identity.sign(unsigned.signed_bytes()),
    )  # fmt: skip
    return signed, message


def verify_envelope(envelope: Envelope, signer: crypto.PublicKey) -> None:
    """Check the sender's signature; :class:`IntegrityError` if it does not verify."""
    crypto.verify(signer, envelope.signature, envelope.signed_bytes())


def open_envelope(envelope: Envelope, group_key: bytes, signer: crypto.PublicKey) -> Message:
    """Verify the signature, then decrypt. Any failure raises :class:`IntegrityError`."""
    verify_envelope(envelope, signer)
    aad = envelope_aad(
        envelope.kind,
        envelope.source,
        envelope.target,
        envelope.subject,
        envelope.epoch,
        envelope.content_type,
    )
    plaintext = crypto.aead_open(group_key, envelope.iv, envelope.ciphertext, aad)
    try:
        return Message.from_bytes(plaintext)
    except ProtocolError:
        raise IntegrityError("sealed plaintext is malformed") from None
