"""The shard-store wire format (PROTOCOL.md, "Shard stores").

Every websocket message is binary: ``u32 header length (big-endian) || header || payload``,
where the header is a UTF-8 JSON object and the payload raw share bytes (often empty).
Requests carry an ``op`` and a client-chosen ``id``; each reply carries the ``id`` back
with ``ok`` true (and any result fields) or false with an error ``code`` and ``message``.
Replies may come out of order, so a client can pipeline many requests on one socket.

Both the store and the client use this one codec; malformed input raises
:class:`ProtocolError` naming the field.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..exceptions import ProtocolError, SpacenbError, error_for_code
from .manifest import check_share_name

__all__ = [
    "MAX_HAS_NAMES",
    "MAX_HEADER_BYTES",
    "GetShare",
    "HasShares",
    "PutShare",
    "Reply",
    "ShardRequest",
    "error_reply",
    "ok_reply",
    "parse_reply",
    "parse_request",
    "request_id_of",
]

MAX_HEADER_BYTES = 64 << 10
MAX_HAS_NAMES = 512  # 512 names fit well inside the header limit
_MAX_ID = 2**53 - 1
_U32 = struct.Struct(">I")


def _pack(header: dict[str, Any], payload: bytes | memoryview = b"") -> bytes:
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _U32.pack(len(raw)) + raw + payload


def _unpack(message: bytes | str) -> tuple[dict[str, Any], memoryview]:
    if not isinstance(message, bytes | bytearray | memoryview):
        raise ProtocolError("shard-store messages are binary", field="frame")
    if len(message) < _U32.size:
        raise ProtocolError("shorter than its length prefix", field="frame")
    (length,) = _U32.unpack_from(message)
    if length > MAX_HEADER_BYTES or _U32.size + length > len(message):
        raise ProtocolError("header length out of range", field="frame")
    try:
        header = json.loads(bytes(message[_U32.size : _U32.size + length]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("header is not UTF-8 JSON", field="header") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object", field="header")
    return header, memoryview(message)[_U32.size + length :]  # no copy of the share


def _id_of(header: dict[str, Any]) -> int:
    value = header.get("id")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_ID:
        raise ProtocolError("expected an integer request id", field="id")
    return value


def _text(header: dict[str, Any], name: str) -> str:
    value = header.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= 4096:
        raise ProtocolError("expected a non-empty string", field=name)
    return value


def _exact_fields(header: dict[str, Any], fields: set[str]) -> None:
    unknown = sorted(set(header) - fields)
    if unknown:
        raise ProtocolError("unknown field", field=str(unknown[0]))


@dataclass(frozen=True, slots=True)
class PutShare:
    """Store ``data`` under ``name`` (its SHA-256), authorised by a relay ``ticket``."""

    id: int
    space_id: str
    ticket: str
    name: str
    data: bytes | memoryview

    def to_bytes(self) -> bytes:
        header = {
            "op": "put", "id": self.id, "space_id": self.space_id,
            "ticket": self.ticket, "name": self.name,
        }  # fmt: skip
        return _pack(header, self.data)


@dataclass(frozen=True, slots=True)
class GetShare:
    """Fetch the share called ``name``; the reply's payload is its bytes."""

    id: int
    name: str

    def to_bytes(self) -> bytes:
        return _pack({"op": "get", "id": self.id, "name": self.name})


@dataclass(frozen=True, slots=True)
class HasShares:
    """Which of ``names`` the store holds; the reply has ``present``, one bool per name."""

    id: int
    names: tuple[str, ...]

    def to_bytes(self) -> bytes:
        return _pack({"op": "has", "id": self.id, "names": list(self.names)})


ShardRequest = PutShare | GetShare | HasShares


def parse_request(message: bytes | str) -> ShardRequest:
    """Parse one client message; :class:`ProtocolError` naming the field if malformed."""
    header, payload = _unpack(message)
    request_id = _id_of(header)
    op = header.get("op")
    if op == "put":
        _exact_fields(header, {"op", "id", "space_id", "ticket", "name"})
        name = check_share_name(header.get("name"))
        return PutShare(
            request_id, _text(header, "space_id"), _text(header, "ticket"), name, payload
        )
    if payload:
        raise ProtocolError("only put carries a payload", field="payload")
    if op == "get":
        _exact_fields(header, {"op", "id", "name"})
        return GetShare(request_id, check_share_name(header.get("name")))
    if op == "has":
        _exact_fields(header, {"op", "id", "names"})
        names = header.get("names")
        if not isinstance(names, list) or len(names) > MAX_HAS_NAMES:
            raise ProtocolError(f"expected a list of at most {MAX_HAS_NAMES}", field="names")
        return HasShares(
            request_id,
            tuple(check_share_name(n, field=f"names[{i}]") for i, n in enumerate(names)),
        )
    raise ProtocolError("must be one of 'put', 'get', 'has'", field="op")


def request_id_of(message: bytes | str) -> int | None:
    """The request id of a message, if it can be read (to address an error reply)."""
    try:
        return _id_of(_unpack(message)[0])
    except ProtocolError:
        return None


def ok_reply(
    request_id: int, payload: bytes = b"", *, present: Sequence[bool] | None = None
) -> bytes:
    """A success reply: to a ``put`` (nothing), a ``get`` (the share as ``payload``) or a
    ``has`` (``present``, one bool per name asked)."""
    header: dict[str, Any] = {"id": request_id, "ok": True}
    if present is not None:
        header["present"] = list(present)
    return _pack(header, payload)


def error_reply(request_id: int | None, error: SpacenbError) -> bytes:
    """A refusal: ``error.code`` and its message."""
    return _pack({"id": request_id, "ok": False, "code": error.code, "message": str(error)})


@dataclass(frozen=True, slots=True)
class Reply:
    """A store's answer: the request id, the result fields, the payload, or an error."""

    id: int | None
    fields: dict[str, Any]
    payload: bytes | memoryview  # a view into the message: a share is not copied
    error: SpacenbError | None


def parse_reply(message: bytes | str) -> Reply:
    """Parse one store message; :class:`ProtocolError` if it is malformed."""
    header, payload = _unpack(message)
    request_id = None if header.get("id") is None else _id_of(header)
    ok = header.pop("ok", None)
    header.pop("id", None)
    if ok is True:
        return Reply(request_id, header, payload, None)
    if ok is False:
        code, text = header.get("code"), header.get("message")
        error = error_for_code(str(code), str(text))
        return Reply(request_id, {}, b"", error)
    raise ProtocolError("expected true or false", field="ok")
