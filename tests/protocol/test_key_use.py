"""The keys a state event names are checked by their form when the event is checked, and
decoded where first used (PROTOCOL.md, "Keys"): every reader, verifying each event or
reading under a checkpoint, takes the same adds; a key whose point is not on the curve
is refused where it is used, with a clear error."""

from __future__ import annotations

import pytest

from spacenb.exceptions import IntegrityError, InvalidKeyError
from spacenb.protocol.encoding import b64d, b64e
from spacenb.protocol.keys import check_public_key, decode_public_key
from spacenb.protocol.member import MemberCore

from .chain import KEEPER, Chain, ident
from .p256 import P, x_without_a_point

BOB = ident("bob")


def _with_point(text: str, point: bytes) -> str:
    kind, _, body = text.partition(".")
    return f"{kind}.{b64e(b64d(body)[:2] + point)}"


OFF_CURVE = {
    "x with no y": b"\x02" + x_without_a_point().to_bytes(32, "big"),
    "x = p": b"\x03" + P.to_bytes(32, "big"),
}


@pytest.mark.parametrize("point", OFF_CURVE.values(), ids=OFF_CURVE.keys())
def test_the_form_check_passes_a_point_off_the_curve_that_decoding_refuses(point: bytes) -> None:
    text = _with_point(BOB.ecdh_key, point)
    assert check_public_key(text, "dh") == text
    with pytest.raises(InvalidKeyError, match="not a point on the P-256 curve"):
        decode_public_key(text, "dh")


@pytest.mark.parametrize(
    "text",
    [
        BOB.signing_key,  # a signing key where an ECDH key is expected
        "dh.AAAA",  # too short
        _with_point(BOB.ecdh_key, b"\x04" + bytes(32)),  # not a compressed point's prefix
        "dh." + b64e(b"\x02" + b64d(BOB.ecdh_key[3:])[1:]),  # version 2
        "dh." + b64e(b64d(BOB.ecdh_key[3:]) + b"\x00"),  # 36 bytes
        "dh.AA==",  # padded base64
    ],
)
def test_the_form_check_refuses_what_is_not_a_key_text(text: str) -> None:
    with pytest.raises(InvalidKeyError):
        check_public_key(text, "dh", field="ecdh_key")


def _bad_dh_add(chain: Chain) -> None:
    body = chain.add_body("bob") | {"ecdh_key": _with_point(BOB.ecdh_key, OFF_CURVE["x = p"])}
    chain.push(chain.event("add", "bob", body))


def test_an_add_with_an_off_curve_ecdh_key_is_taken_and_refused_when_a_key_is_wrapped() -> None:
    chain = Chain(keeper=True)
    _bad_dh_add(chain)
    assert "bob" in chain.state.members
    core = chain.core("alice")  # verifies every event
    with pytest.raises(InvalidKeyError, match="key-agreement key the log records for 'bob'"):
        core.wrap_for("bob", [0])
    with pytest.raises(InvalidKeyError, match="'bob' does not decode"):
        core.wrap_new_epoch(chain.keys[0], 1, ["alice", "bob"])


def test_every_reader_takes_the_same_adds_with_or_without_a_checkpoint() -> None:
    chain = Chain(keeper=True)
    _bad_dh_add(chain)
    chain.join("carol")
    chain.checkpoint(KEEPER)
    eager = MemberCore(chain.space_id, "erin", ident("erin"), trust_checkpoints=False)
    eager.extend_log(chain.events)
    newcomer = MemberCore(chain.space_id, "erin", ident("erin"))
    newcomer.extend_log(chain.events)
    assert eager.state is not None and newcomer.state is not None
    assert eager.state.head == newcomer.state.head == chain.state.head
    assert set(eager.state.members) == set(newcomer.state.members)


def test_an_add_with_an_off_curve_signing_key_is_refused_by_its_own_signature() -> None:
    """Its signature is the first use of its signing key: a reader verifying it refuses
    the add (nobody could have signed it), naming the key."""
    chain = Chain()
    bad = _with_point(BOB.signing_key, OFF_CURVE["x with no y"])
    event = chain.event("add", "bob", chain.add_body("bob") | {"signing_key": bad})
    with pytest.raises(InvalidKeyError, match="signing key of 'bob'"):
        chain.state.check(event)
    core = chain.core("alice")
    with pytest.raises(IntegrityError, match="not a point on the P-256 curve"):
        core.extend_log([event])


def test_under_a_checkpoint_an_off_curve_signing_key_is_refused_at_its_first_use() -> None:
    """A checkpoint's signer attests the add (a newcomer does not check its signature);
    the member's first envelope is where the key is used, and refused."""
    chain = Chain(keeper=True)
    bad = _with_point(BOB.signing_key, OFF_CURVE["x with no y"])
    body = chain.add_body("bob") | {"signing_key": bad}
    event = chain.event("add", "bob", body)
    chain.state.apply(event, verify=False)  # as a keeper that did not check would have
    chain.events.append(event)
    chain.checkpoint(KEEPER)
    newcomer = MemberCore(chain.space_id, "erin", ident("erin"))
    newcomer.extend_log(chain.events)
    state = newcomer.require_state()
    assert "bob" in state.members
    with pytest.raises(InvalidKeyError, match="not a point"):
        state.verify_key_at("bob", state.head_seq)
