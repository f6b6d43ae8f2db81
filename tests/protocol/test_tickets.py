"""spacenb.protocol.tickets: relay-signed upload tickets for shard stores."""

from __future__ import annotations

import json

import pytest

from spacenb.exceptions import IntegrityError, ProtocolError
from spacenb.protocol import crypto
from spacenb.protocol.encoding import b64d, b64e, canonical_json, lp_encode
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair, decode_space_id
from spacenb.protocol.tickets import Ticket, issue_ticket, verify_ticket

RELAY = IdentityKeys.from_seed(b"relay")
RELAY_KEY = RELAY.public("relay").signing_public_key()
SPACE = SpaceKeyPair.from_seed(b"space").space_id
OTHER_SPACE = SpaceKeyPair.from_seed(b"other").space_id
EXPIRES = 1_767_225_900_000_000


def ticket(**overrides: object) -> str:
    options: dict[str, object] = {"space_id": SPACE, "username": "bob", "expires_at_us": EXPIRES}
    options.update(overrides)
    return issue_ticket(RELAY, **options)  # type: ignore[arg-type]


def test_issue_and_verify() -> None:
    text = ticket()
    payload, _, signature = text.partition(".")
    assert json.loads(b64d(payload)) == {"exp": EXPIRES, "space_id": SPACE, "user": "bob"}
    assert b64d(payload) == canonical_json({"exp": EXPIRES, "space_id": SPACE, "user": "bob"})
    parsed = verify_ticket(text, RELAY_KEY, space_id=SPACE, now_us=EXPIRES - 1)
    assert parsed == Ticket(SPACE, "bob", EXPIRES)
    assert len(b64d(signature)) == 64
    crypto.verify(RELAY_KEY, b64d(signature), lp_encode("spacenb/v1/shard-ticket", b64d(payload)))


def test_a_space_key_can_sign_tickets_too() -> None:
    pair = SpaceKeyPair.from_seed(b"space")
    text = issue_ticket(pair, space_id=SPACE, username="bob", expires_at_us=EXPIRES)
    assert verify_ticket(text, decode_space_id(SPACE), space_id=SPACE, now_us=0).username == "bob"


def test_ticket_is_valid_until_its_expiry_inclusive() -> None:
    verify_ticket(ticket(), RELAY_KEY, space_id=SPACE, now_us=EXPIRES)
    with pytest.raises(IntegrityError, match="expired"):
        verify_ticket(ticket(), RELAY_KEY, space_id=SPACE, now_us=EXPIRES + 1)


def test_ticket_for_another_space_is_refused() -> None:
    with pytest.raises(IntegrityError):
        verify_ticket(ticket(), RELAY_KEY, space_id=OTHER_SPACE, now_us=0)


def test_ticket_signed_by_another_key_is_refused() -> None:
    forged = issue_ticket(
        IdentityKeys.from_seed(b"mallory"), space_id=SPACE, username="bob", expires_at_us=EXPIRES
    )
    with pytest.raises(IntegrityError):
        verify_ticket(forged, RELAY_KEY, space_id=SPACE, now_us=0)


@pytest.mark.parametrize(
    "change",
    [{"user": "mallory"}, {"exp": EXPIRES * 2}, {"space_id": OTHER_SPACE}],
    ids=["user", "exp", "space_id"],
)
def test_altered_payload_is_refused(change: dict[str, object]) -> None:
    payload, _, signature = ticket().partition(".")
    obj = {**json.loads(b64d(payload)), **change}
    altered = f"{b64e(canonical_json(obj))}.{signature}"
    with pytest.raises(IntegrityError):
        verify_ticket(altered, RELAY_KEY, space_id=str(obj["space_id"]), now_us=0)


def test_altered_signature_is_refused() -> None:
    payload, _, signature = ticket().partition(".")
    raw = bytearray(b64d(signature))
    raw[0] ^= 1
    with pytest.raises(IntegrityError):
        verify_ticket(f"{payload}.{b64e(bytes(raw))}", RELAY_KEY, space_id=SPACE, now_us=0)


@pytest.mark.parametrize(
    "text",
    [None, 5, "", "nodot", "a.b.c", "a.b", "!!.AAAA", "AAAA.!!", b"AA.AA"],
)
def test_malformed_ticket_is_a_protocol_or_integrity_error(text: object) -> None:
    with pytest.raises((ProtocolError, IntegrityError)):
        verify_ticket(text, RELAY_KEY, space_id=SPACE, now_us=0)


@pytest.mark.parametrize("text", [None, 5, "", "nodot", "a.b.c", b"AA.AA"])
def test_ticket_shape_errors_name_the_field(text: object) -> None:
    with pytest.raises(ProtocolError) as info:
        verify_ticket(text, RELAY_KEY, space_id=SPACE, now_us=0)
    assert info.value.field == "ticket"


def test_a_ticket_signed_by_any_of_several_keys_verifies() -> None:
    other = IdentityKeys.from_seed(b"another service").public("x").signing_public_key()
    assert verify_ticket(ticket(), [other, RELAY_KEY], space_id=SPACE, now_us=0).username == "bob"
    with pytest.raises(IntegrityError, match="not signed by a relay this store accepts"):
        verify_ticket(ticket(), [other], space_id=SPACE, now_us=0)
    with pytest.raises(IntegrityError):
        verify_ticket(ticket(), [], space_id=SPACE, now_us=0)
