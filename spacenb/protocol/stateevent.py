"""One event of a space's signed state log (PROTOCOL.md, "The state log"): its fields, the
schema of each kind's body, how it is signed and hashed, and the genesis that starts a log.

Whether an event may follow a log's head is :class:`~spacenb.protocol.statelog.SpaceState`'s
to say; this module only builds events and reads their form.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson as _orjson

from ..exceptions import ProtocolError
from . import crypto
from .codec import Size, memoized
from .encoding import b64e, canonical_json, lp_encode
from .keys import IdentityKeys, SpaceKeyPair

__all__ = [
    "GENESIS_PREV",
    "HASH_SIZE",
    "KINDS",
    "USERNAME_RE",
    "EventKind",
    "StateEvent",
    "check_username",
    "key_commitment",
    "make_event",
    "make_genesis",
]

GENESIS_PREV = bytes(32)
HASH_SIZE = 32

EventKind = Literal[
    "genesis",
    "add",
    "invite",
    "role",
    "remove",
    "leave",
    "epoch",
    "link",
    "unlink",
    "delete",
    "checkpoint",
]
KINDS: tuple[str, ...] = (
    "genesis", "add", "invite", "role", "remove", "leave", "epoch", "link", "unlink", "delete",
    "checkpoint",
)  # fmt: skip

# One schema per kind: field name -> allowed JSON types ("str?" allows null).
_SCHEMAS: dict[str, dict[str, str]] = {
    "genesis": {
        "owner": "str", "signing_key": "str", "ecdh_key": "str", "policy": "str",
        "private": "bool", "manual_admit": "bool", "name": "str?", "keeper": "str?",
        "keeper_signing_key": "str?", "keeper_ecdh_key": "str?", "key_commitment": "str",
    },
    "add": {
        "member": "str", "signing_key": "str", "ecdh_key": "str", "role": "str", "via": "str",
        "link_id": "str?", "proof": "str?",
    },
    "invite": {"member": "str", "role": "str", "signing_key": "str?", "ecdh_key": "str?"},
    "role": {"member": "str", "role": "str"},
    "remove": {"member": "str"},
    "leave": {"member": "str"},
    "epoch": {"epoch": "int", "recipients": "list", "key_commitment": "str"},
    "link": {
        "link_id": "str", "link_key": "str", "role": "str", "max_uses": "int?",
        "expires_at_us": "int?",
    },
    "unlink": {"link_id": "str"},
    "delete": {"handle": "int", "author": "str"},
    "checkpoint": {},
}  # fmt: skip
_MAX_INT = 2**53 - 1
_MAX_TEXT = 4096


USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")


def check_username(value: object, *, field: str = "username") -> str:
    """``value`` if it is a valid username, else :class:`ProtocolError` naming ``field``."""
    if not isinstance(value, str) or not USERNAME_RE.fullmatch(value):
        raise ProtocolError("usernames match [a-z0-9][a-z0-9_.-]{0,31}", field=field)
    return value


def _check_body(kind: str, body: Any) -> dict[str, Any]:
    """The body as a dict, if it has exactly the fields of ``kind`` with the right types."""
    schema = _SCHEMAS[kind]
    if not isinstance(body, dict) or set(body) != set(schema):
        raise ProtocolError(
            f"a {kind!r} event has exactly the fields {sorted(schema)}", field="event.body"
        )
    for name, spec in schema.items():
        value = body[name]
        where = f"event.body.{name}"
        if spec.endswith("?"):
            if value is None:
                continue
            spec = spec[:-1]
        if spec == "str":
            if not isinstance(value, str) or len(value) > _MAX_TEXT or not _is_unicode(value):
                raise ProtocolError("expected text (valid Unicode)", field=where)
        elif spec == "bool":
            if not isinstance(value, bool):
                raise ProtocolError("expected true or false", field=where)
        elif spec == "int":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_INT:
                raise ProtocolError("expected an integer in [0, 2^53 - 1]", field=where)
        elif spec == "list" and (
            not isinstance(value, list)
            or not all(isinstance(v, str) and _is_unicode(v) for v in value)
        ):
            raise ProtocolError("expected a list of usernames", field=where)
    return body


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


@memoized  # served again in every log a newcomer reads
@dataclass(frozen=True, slots=True)
class StateEvent:
    """One signed change of a space's state. ``body`` is canonical JSON (UTF-8 bytes)."""

    space_id: str
    seq: int
    prev: Annotated[bytes, Size(HASH_SIZE)]  # hash of event seq - 1; 32 zero bytes for genesis
    kind: str
    actor: str
    at_us: int  # the actor's clock when it signed (informational, but for link expiry)
    body: bytes
    signature: Annotated[bytes, Size(crypto.SIGNATURE_SIZE)] = field(default=b"", repr=False)

    def signed_bytes(self) -> bytes:
        """What the actor (the space key, for genesis) signs."""
        return lp_encode(
            f"spacenb/v2/state/{self.kind}", self.space_id, self.seq, self.prev, self.actor,
            self.at_us, self.body,
        )  # fmt: skip

    def hash(self) -> bytes:
        """The event's hash, which the next event carries as ``prev``."""
        return crypto.sha256(
            lp_encode("spacenb/v2/state-hash", self.signed_bytes(), self.signature)
        )

    def fields(self) -> dict[str, Any]:
        """The parsed body, checked against the kind's schema and canonical form.

        Raises :class:`ProtocolError` naming the field.
        """
        if self.kind not in _SCHEMAS:
            raise ProtocolError(f"unknown state event kind {self.kind!r}"[:200], field="event.kind")
        data = self.body
        if data.isascii() and b"\\" not in data:
            # Fast path (a newcomer parses every event of the log): ASCII without escapes,
            # whose schema allows only text, integers, booleans, null and lists of text,
            # which orjson writes as the canonical form does; anything else, or a body that
            # orjson writes otherwise, takes the path below.
            try:
                obj = _orjson.loads(data)
            except _orjson.JSONDecodeError:
                pass
            else:
                body = _check_body(self.kind, obj)
                if _orjson.dumps(body, option=_orjson.OPT_SORT_KEYS) == data:
                    return body
                if canonical_json(body) != data:
                    raise ProtocolError("not in canonical form", field="event.body")
                return body
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ProtocolError("not JSON", field="event.body") from None
        body = _check_body(self.kind, obj)
        if canonical_json(body) != data:
            raise ProtocolError("not in canonical form", field="event.body")
        return body


def make_event(
    signer: IdentityKeys | SpaceKeyPair,
    *,
    space_id: str,
    seq: int,
    prev: bytes,
    kind: str,
    actor: str,
    at_us: int,
    body: dict[str, Any],
) -> StateEvent:
    """Build and sign an event (the body is checked against its kind's schema first)."""
    if kind not in _SCHEMAS:
        raise ProtocolError(f"unknown state event kind {kind!r}", field="kind")
    data = canonical_json(_check_body(kind, body))
    unsigned = StateEvent(space_id, seq, prev, kind, actor, at_us, data)
    return StateEvent(
        space_id, seq, prev, kind, actor, at_us, data, signer.sign(unsigned.signed_bytes())
    )


def key_commitment(space_id: str, epoch: int, group_key: bytes) -> str:
    """What the state log records of an epoch's key: a hash that binds it without showing it."""
    return b64e(crypto.sha256(lp_encode("spacenb/v2/key-commitment", space_id, epoch, group_key)))


def make_genesis(
    space_key: SpaceKeyPair,
    *,
    owner: str,
    owner_signing_key: str,
    owner_ecdh_key: str,
    policy: str,
    private: bool,
    manual_admit: bool,
    name: str | None,
    keeper: tuple[str, str, str] | None,
    group_key: bytes,
    at_us: int,
) -> StateEvent:
    """The first event of a space, signed by the space key. ``keeper`` is the keeper's
    ``(username, signing key, ecdh key)`` when the keeper is admitted, else None."""
    return make_event(
        space_key,
        space_id=space_key.space_id,
        seq=0,
        prev=GENESIS_PREV,
        kind="genesis",
        actor=owner,
        at_us=at_us,
        body={
            "owner": owner,
            "signing_key": owner_signing_key,
            "ecdh_key": owner_ecdh_key,
            "policy": policy,
            "private": private,
            "manual_admit": manual_admit,
            "name": name,
            "keeper": keeper[0] if keeper else None,
            "keeper_signing_key": keeper[1] if keeper else None,
            "keeper_ecdh_key": keeper[2] if keeper else None,
            "key_commitment": key_commitment(space_key.space_id, 0, group_key),
        },
    )
