"""Byte and text encodings shared by every part of the protocol.

- base64url without padding for binary fields in JSON frames;
- the canonical length-prefixed encoding that every signature and KDF label is computed over
  (PROTOCOL.md, "Canonical encoding");
- canonical JSON for sealed plaintexts.
"""

from __future__ import annotations

import binascii
import json
import string
import struct
from typing import Any

from ..exceptions import ProtocolError

__all__ = ["b64d", "b64e", "canonical_json", "lp_encode"]

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_PAD = (b"", b"", b"==", b"=")
# The value of each base64url character, and which of the last character's bits carry
# nothing (must be zero) when the text ends with a partial group of 2 or 3 characters.
_VALUE = {
    c: i
    for i, c in enumerate(string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_")
}
_SPARE_BITS = (0, 0, 0x0F, 0x03)


def b64e(data: bytes) -> str:
    """Encode bytes as unpadded base64url text."""
    # base64.urlsafe_b64encode(data).rstrip(b"="), without its two Python frames.
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode()


def b64d(text: object, *, field: str = "value") -> bytes:
    """Decode unpadded base64url text; anything else raises :class:`ProtocolError`."""
    if not isinstance(text, str):
        raise ProtocolError("expected base64url text", field=field)
    tail = len(text) % 4
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ProtocolError("not unpadded base64url", field=field) from None
    # "+", "/" and "=" are deleted, then "-" and "_" become "+" and "/": a text that held
    # any of the first three comes out shorter.
    standard = raw.translate(_TO_STANDARD, b"+/=")
    if tail == 1 or len(standard) != len(raw):
        raise ProtocolError("not unpadded base64url", field=field)
    try:
        # strict_mode refuses every byte outside the (translated) alphabet.
        data = binascii.a2b_base64(standard + _PAD[tail], strict_mode=True)
    except binascii.Error:
        raise ProtocolError("not unpadded base64url", field=field) from None
    # Only the last, partial group can carry stray bits: those of its last character.
    if tail and _VALUE[text[-1]] & _SPARE_BITS[tail]:
        raise ProtocolError("non-canonical base64url", field=field)
    return data


def lp_encode(*fields: bytes | str | int) -> bytes:
    """The canonical encoding: each field as a 4-byte big-endian length and its bytes.

    ``str`` is UTF-8; ``int`` is an unsigned 64-bit big-endian integer (so 8 bytes).
    Because every field carries its length, no two different field lists encode alike.
    """
    parts: list[bytes] = []
    for value in fields:
        kind = type(value)
        if kind is str:
            data = value.encode("utf-8")  # type: ignore[union-attr]
        elif kind is bytes:
            data = value
        elif isinstance(value, bool):
            raise TypeError("booleans are not a canonical field type")
        elif isinstance(value, int):
            if not 0 <= value < 2**64:
                raise ProtocolError("integer out of range for u64")
            data = _U64.pack(value)
        elif isinstance(value, str):
            data = value.encode("utf-8")
        else:
            data = bytes(value)
        parts.append(_U32.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys, no spaces and UTF-8 text: one byte string per value."""
    return _CANONICAL.encode(value).encode("utf-8")


# What ``json.dumps(value, sort_keys=True, ...)`` builds on every call, built once.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
