"""Sealing, signing, verifying and opening messages (PROTOCOL.md, "Envelopes").

A message is sealed once with the space's group key (AES-256-GCM, fresh 96-bit IV, the
associated data binding space, epoch, channel, content type, sender and kind) and the
resulting envelope is signed by the sender's identity key over its canonical encoding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson

from ..clock import Clock, SystemClock
from ..exceptions import IntegrityError, LimitExceededError, ProtocolError, UsageError
from . import crypto
from .codec import MAX_BYTES_FIELD, Size, echoed
from .encoding import canonical_json, lp_encode
from .keys import IdentityKeys

__all__ = [
    "MAX_CIPHERTEXT_BYTES",
    "MAX_SEALED_BYTES",
    "Envelope",
    "EnvelopeKind",
    "Message",
    "envelope_aad",
    "new_session_id",
    "open_envelope",
    "seal_envelope",
    "verify_envelope",
]

EnvelopeKind = Literal["msg", "eph"]
MESSAGE_ID_SIZE = 16
SESSION_ID_SIZE = 8
HEAD_SIZE = 32
MAX_CIPHERTEXT_BYTES = MAX_BYTES_FIELD  # 256 KiB: a message and its tag
MAX_SEALED_BYTES = MAX_CIPHERTEXT_BYTES - crypto.GCM_TAG_SIZE  # the sealed plaintext
_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")
_SESSION_ID = re.compile(r"[0-9a-f]{16}")
_PLAINTEXT_FIELDS = frozenset({"body", "id", "rev", "seq", "sid", "ts"})


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys do not repeat: parsers disagree on which of two values a
    repeated key means, so one ciphertext could show two readers two different bodies."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("a key repeats")
    return obj


def _plaintext_json(data: bytes) -> Any:
    """The sealed plaintext's JSON value, refusing a key that repeats anywhere in it.

    Fast path: senders write canonical JSON, and text that orjson writes back byte for
    byte (sorted keys, no spaces) cannot repeat a key, since the re-encoding of an object
    that did would be shorter. Anything else (another writer's spacing or float format,
    integers past 64 bits, lone surrogates, deep nesting) takes the stdlib parser with its
    repeated-key check, as all plaintexts did before."""
    try:
        obj = orjson.loads(data)
        if orjson.dumps(obj, option=orjson.OPT_SORT_KEYS) == data:
            return obj
    except (orjson.JSONDecodeError, TypeError):
        pass
    return json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)


@dataclass(frozen=True, slots=True)
class Message:
    """The sealed plaintext.

    ``id`` is fresh per seal. ``seq`` is the sender's sequence number in its session
    ``sid``: it increases with every message the session sends, and receivers refuse a
    message whose ``seq`` does not increase with its handle (a replay). An edit keeps the
    original's ``seq`` and raises ``rev``. ``sent_at_ms`` is the sender's clock,
    informational only.
    """

    id: str
    sent_at_ms: int
    body: Any
    seq: int = 0
    rev: int = 0
    sid: str = "0" * 16

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "body": self.body,
                "id": self.id,
                "rev": self.rev,
                "seq": self.seq,
                "sid": self.sid,
                "ts": self.sent_at_ms,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Message:
        try:
            obj = _plaintext_json(data)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError("sealed plaintext is not JSON", field="message") from exc
        if not isinstance(obj, dict) or set(obj) != _PLAINTEXT_FIELDS:
            raise ProtocolError(
                "sealed plaintext must have body, id, rev, seq, sid, ts", field="message"
            )
        msg_id, sid = obj["id"], obj["sid"]
        if not isinstance(msg_id, str) or not _MESSAGE_ID.fullmatch(msg_id):
            raise ProtocolError("message id must be 32 lowercase hex digits", field="message.id")
        if not isinstance(sid, str) or not _SESSION_ID.fullmatch(sid):
            raise ProtocolError("sid must be 16 lowercase hex digits", field="message.sid")
        for name in ("ts", "seq", "rev"):
            value = obj[name]
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                raise ProtocolError("must be a non-negative integer", field=f"message.{name}")
        return cls(msg_id, obj["ts"], obj["body"], obj["seq"], obj["rev"], sid)

    def check(self) -> None:
        """:class:`UsageError` unless ``seq``, ``rev`` and ``sid`` are well-formed."""
        for name in ("seq", "rev", "sent_at_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                raise UsageError("must be an integer in [0, 2^63)", field=name)
        if not isinstance(self.sid, str) or not _SESSION_ID.fullmatch(self.sid):
            raise UsageError("a session id is 16 lowercase hex digits", field="sid")


@echoed("signature", bulk="ciphertext")  # travels on unchanged: see codec.keep_wire
@dataclass(frozen=True, slots=True)
class Envelope:
    """What travels and is stored: cleartext routing fields, the sealed body, a signature."""

    kind: EnvelopeKind
    source: str  # sender username
    target: str  # space id
    subject: str  # channel (messages) or signal subject (ephemeral)
    epoch: int
    content_type: str  # "" when none
    head_seq: int  # the state-log event the sender held as its head
    # that event's hash: binds the message to the sender's view of the space
    head: Annotated[bytes, Size(HEAD_SIZE)]
    iv: Annotated[bytes, Size(crypto.GCM_IV_SIZE)]
    ciphertext: Annotated[bytes, Size(crypto.GCM_TAG_SIZE, MAX_CIPHERTEXT_BYTES)]
    signature: Annotated[bytes, Size(crypto.SIGNATURE_SIZE)] = field(default=b"", repr=False)

    def signed_bytes(self) -> bytes:
        """The canonical encoding the signature covers."""
        prefix = _routing(
            self.kind, self.source, self.target, self.subject, self.epoch,
            self.content_type, self.head_seq, self.head,
        )[0]  # fmt: skip
        return prefix + lp_encode(self.iv, self.ciphertext)

    def aad(self) -> bytes:
        """The AEAD associated data (:func:`envelope_aad` of its routing fields)."""
        return _routing(
            self.kind, self.source, self.target, self.subject, self.epoch,
            self.content_type, self.head_seq, self.head,
        )[1]  # fmt: skip


_ROUTING_CACHE: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}
_ROUTING_CACHE_SIZE = 1024


def _routing(
    kind: str,
    source: str,
    target: str,
    subject: str,
    epoch: int,
    content_type: str,
    head_seq: int,
    head: bytes,
) -> tuple[bytes, bytes]:
    """The signed bytes' fields before the IV (the canonical encoding is a concatenation of
    its fields' encodings, so the rest follows) and the associated data.

    Both depend only on the routing fields, which every message a sender sends on one
    channel at one state head shares: a reader of history encodes them once per such run,
    not twice per message. The cache is keyed by the exact values (ints and bytes by type
    too, so that ``True`` does not pass for ``1``) and emptied when full."""
    if type(epoch) is not int or type(head_seq) is not int or type(head) is not bytes:
        return _signed_prefix(
            kind, source, target, subject, epoch, content_type, head_seq, head
        ), envelope_aad(kind, source, target, subject, epoch, content_type, head_seq, head)
    key = (kind, source, target, subject, epoch, content_type, head_seq, head)
    got = _ROUTING_CACHE.get(key)
    if got is None:
        got = (
            _signed_prefix(kind, source, target, subject, epoch, content_type, head_seq, head),
            envelope_aad(kind, source, target, subject, epoch, content_type, head_seq, head),
        )
        if len(_ROUTING_CACHE) >= _ROUTING_CACHE_SIZE:
            _ROUTING_CACHE.clear()
        _ROUTING_CACHE[key] = got
    return got


def _signed_prefix(
    kind: str,
    source: str,
    target: str,
    subject: str,
    epoch: int,
    content_type: str,
    head_seq: int,
    head: bytes,
) -> bytes:
    return lp_encode(
        f"spacenb/v2/envelope/{kind}", source, target, subject, epoch, content_type, head_seq, head
    )


def envelope_aad(
    kind: str,
    source: str,
    target: str,
    subject: str,
    epoch: int,
    content_type: str,
    head_seq: int,
    head: bytes,
) -> bytes:
    """The AEAD associated data: binds the routing fields and the state head to the
    ciphertext."""
    return lp_encode(
        f"spacenb/v2/aad/{kind}", target, epoch, subject, content_type, source, head_seq, head
    )


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
    head_seq: int,
    head: bytes,
    seq: int,
    sid: str,
    rev: int = 0,
    clock: Clock | None = None,
    message_id: str | None = None,
    iv: bytes | None = None,
) -> tuple[Envelope, Message]:
    """Seal ``body`` once for the group and sign the envelope with ``identity``.

    ``head_seq``/``head`` are the state-log head the sender holds; ``seq``/``sid`` its
    sequence number and session (``rev`` > 0 for an edit). ``message_id`` and ``iv`` exist
    for test vectors; leave them unset otherwise.
    """
    if not isinstance(subject, str) or not subject:
        raise ProtocolError("channel must be a non-empty string", field="subject")
    if len(head) != HEAD_SIZE:
        raise ProtocolError("a state head is 32 bytes", field="head")
    message = Message(
        message_id or crypto.random_bytes(MESSAGE_ID_SIZE).hex(),
        (clock or SystemClock()).now_us() // 1000,
        body,
        seq,
        rev,
        sid,
    )
    message.check()
    try:
        plaintext = message.to_bytes()
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"payload is not JSON-serialisable: {exc}", field="payload") from exc
    if len(plaintext) > MAX_SEALED_BYTES:
        raise LimitExceededError(
            f"this message is {len(plaintext)} bytes sealed; one message holds at most "
            f'{MAX_SEALED_BYTES} (MAX_SEALED_BYTES, PROTOCOL.md "Limits"): send large '
            "content as a file (put_file) and the manifest in a message"
        )
    ctype = content_type or ""
    nonce = iv if iv is not None else crypto.random_bytes(crypto.GCM_IV_SIZE)
    # The same routing fields for every message of a run: their encodings are cached.
    prefix, aad = _routing(kind, source, target, subject, epoch, ctype, head_seq, head)
    ciphertext = crypto.aead_seal(group_key, nonce, plaintext, aad)
    signature = identity.sign(prefix + lp_encode(nonce, ciphertext))  # = signed_bytes()
    signed = Envelope(
        kind, source, target, subject, epoch, ctype, head_seq, head, nonce, ciphertext, signature
    )
    return signed, message


def verify_envelope(envelope: Envelope, signer: crypto.PublicKey) -> None:
    """Check the sender's signature; :class:`IntegrityError` if it does not verify."""
    crypto.verify(signer, envelope.signature, envelope.signed_bytes())


def open_envelope(
    envelope: Envelope, group_key: bytes, signer: crypto.PublicKey, *, verified: bool = False
) -> Message:
    """Verify the signature, then decrypt. Any failure raises :class:`IntegrityError`.

    ``verified``: this very envelope's signature was checked under ``signer`` already (by
    a verification worker); only then is the check skipped."""
    if not verified:
        verify_envelope(envelope, signer)
    plaintext = crypto.aead_open(group_key, envelope.iv, envelope.ciphertext, envelope.aad())
    try:
        return Message.from_bytes(plaintext)
    except ProtocolError:
        raise IntegrityError("sealed plaintext is malformed") from None


def new_session_id() -> str:
    """A fresh sender session id (16 hex digits): sequence numbers count within one."""
    return crypto.random_bytes(SESSION_ID_SIZE).hex()
