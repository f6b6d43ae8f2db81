"""spacenb.protocol.envelope: seal once for the group, sign, verify, open.

v2 envelopes carry the sender's state-log head (``head_seq``, ``head``) in the signed
bytes and the AAD, and the sealed plaintext carries the sender's sequence number, edit
revision and session id (``seq``, ``rev``, ``sid``)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spacenb.clock import FixedClock
from spacenb.exceptions import IntegrityError, ProtocolError
from spacenb.protocol import crypto
from spacenb.protocol.encoding import lp_encode
from spacenb.protocol.envelope import (
    Envelope,
    Message,
    envelope_aad,
    new_session_id,
    open_envelope,
    seal_envelope,
    verify_envelope,
)
from spacenb.protocol.keyring import Keyring
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair

ALICE = IdentityKeys.from_seed(b"alice")
MALLORY = IdentityKeys.from_seed(b"mallory")
ALICE_PUB = ALICE.public("alice").signing_public_key()
SPACE = SpaceKeyPair.from_seed(b"space").space_id
RING = Keyring(SPACE, "rotate", {0: bytes(32), 1: bytes([1]) * 32})
HEAD_SEQ = 7
HEAD = bytes(range(32))  # the hash of the state event the sender holds as its head
SEQ = 1_767_225_600_123_456
SID = "0123456789abcdef"


def seal(body: Any = "hi", **overrides: Any) -> tuple[Envelope, Message]:
    options: dict[str, Any] = {
        "source": "alice",
        "target": SPACE,
        "subject": "default",
        "epoch": 1,
        "content_type": "text/plain",
        "body": body,
        "head_seq": HEAD_SEQ,
        "head": HEAD,
        "seq": SEQ,
        "sid": SID,
        "clock": FixedClock(1_767_225_600_123_456),
    }
    options.update(overrides)
    return seal_envelope(ALICE, RING.key(options["epoch"]), **options)


def aad(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "kind": "msg",
        "source": "alice",
        "target": SPACE,
        "subject": "default",
        "epoch": 1,
        "content_type": "text/plain",
        "head_seq": HEAD_SEQ,
        "head": HEAD,
    }
    fields.update(overrides)
    return envelope_aad(**fields)


def test_seal_and_open() -> None:
    env, message = seal({"text": "hello"})
    assert env.kind == "msg" and env.source == "alice" and env.target == SPACE
    assert env.subject == "default" and env.epoch == 1 and env.content_type == "text/plain"
    assert (env.head_seq, env.head) == (HEAD_SEQ, HEAD)
    assert len(env.iv) == 12 and len(env.signature) == 64
    assert message.sent_at_ms == 1_767_225_600_123  # milliseconds from the clock
    assert re.fullmatch(r"[0-9a-f]{32}", message.id)
    assert (message.seq, message.rev, message.sid) == (SEQ, 0, SID)
    assert open_envelope(env, RING.key(1), ALICE_PUB) == message
    assert open_envelope(env, RING.key(1), ALICE_PUB).body == {"text": "hello"}


def test_signed_bytes_and_aad_follow_the_protocol() -> None:
    env, _ = seal()
    assert env.signed_bytes() == lp_encode(
        "spacenb/v2/envelope/msg",
        "alice",
        SPACE,
        "default",
        1,
        "text/plain",
        HEAD_SEQ,
        HEAD,
        env.iv,
        env.ciphertext,
    )
    assert aad() == lp_encode(
        "spacenb/v2/aad/msg", SPACE, 1, "default", "text/plain", "alice", HEAD_SEQ, HEAD
    )


_NAMES = st.sampled_from(["alice", "bob", "", "é", "alice\x00"])


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["msg", "eph"]),
            _NAMES,
            st.sampled_from([SPACE, "spc.other"]),
            _NAMES,
            st.integers(0, 3),
            st.sampled_from(["", "text/plain"]),
            st.integers(0, 3),
            st.sampled_from([HEAD, bytes(32)]),
            st.binary(min_size=12, max_size=12),
            st.binary(min_size=16, max_size=40),
        ),
        max_size=30,
    )
)
def test_signed_bytes_and_aad_are_the_encoding_of_each_envelope(
    rows: list[tuple[Any, ...]],
) -> None:
    """The routing fields' encodings are computed once per distinct routing and reused:
    every envelope still gets exactly its own bytes, whatever came before it."""
    for row in rows:
        env = Envelope(*row, signature=bytes(64))
        kind, source, target, subject, epoch, ctype, head_seq, head, iv, ciphertext = row
        assert env.signed_bytes() == lp_encode(
            f"spacenb/v2/envelope/{kind}", source, target, subject, epoch, ctype, head_seq,
            head, iv, ciphertext,
        )  # fmt: skip
        assert env.aad() == envelope_aad(
            kind, source, target, subject, epoch, ctype, head_seq, head
        ) == lp_encode(
            f"spacenb/v2/aad/{kind}", target, epoch, subject, ctype, source, head_seq, head
        )  # fmt: skip


def test_a_boolean_is_not_taken_for_a_cached_integer() -> None:
    env, _ = seal()
    env.signed_bytes()  # the routing with epoch 1 is now cached
    with pytest.raises(TypeError):
        dataclasses.replace(env, epoch=True).signed_bytes()
    with pytest.raises(TypeError):
        dataclasses.replace(env, head_seq=True).aad()


def test_envelope_fields_are_in_protocol_order() -> None:
    assert [f.name for f in dataclasses.fields(Envelope)] == [
        "kind", "source", "target", "subject", "epoch", "content_type", "head_seq", "head",
        "iv", "ciphertext", "signature",
    ]  # fmt: skip


def test_plaintext_is_canonical_json() -> None:
    env, message = seal({"b": 1, "a": "é"}, message_id="ab" * 16)
    plaintext = crypto.aead_open(RING.key(1), env.iv, env.ciphertext, aad())
    assert plaintext == (
        '{"body":{"a":"é","b":1},"id":"' + "ab" * 16 + '","rev":0,"seq":' + str(SEQ)
        + ',"sid":"' + SID + '","ts":1767225600123}'
    ).encode()  # fmt: skip
    assert plaintext == message.to_bytes()
    assert len(env.ciphertext) == len(plaintext) + 16


def test_an_edit_keeps_seq_and_sid_and_raises_rev() -> None:
    _, first = seal("v1")
    edit, second = seal("v2", rev=1, head_seq=HEAD_SEQ + 3, head=bytes(32))
    opened = open_envelope(edit, RING.key(1), ALICE_PUB)
    assert opened == second
    assert (opened.seq, opened.sid, opened.rev) == (first.seq, first.sid, 1)
    assert opened.id != first.id  # every seal has a fresh message id
    assert (edit.head_seq, edit.head) == (HEAD_SEQ + 3, bytes(32))


def test_every_seal_is_fresh() -> None:
    (a, ma), (b, mb) = seal("same"), seal("same")
    assert ma.id != mb.id
    assert a.iv != b.iv
    assert a.ciphertext != b.ciphertext


def test_missing_content_type_is_empty_text() -> None:
    env, _ = seal(content_type=None)
    assert env.content_type == ""
    open_envelope(env, RING.key(1), ALICE_PUB)


def test_ephemeral_kind_is_separated_from_messages() -> None:
    env, message = seal(kind="eph", subject="typing")
    assert env.kind == "eph"
    assert open_envelope(env, RING.key(1), ALICE_PUB) == message
    as_message = dataclasses.replace(env, kind="msg")
    with pytest.raises(IntegrityError):
        open_envelope(as_message, RING.key(1), ALICE_PUB)
    resigned = dataclasses.replace(as_message, signature=ALICE.sign(as_message.signed_bytes()))
    with pytest.raises(IntegrityError):  # the AAD label differs too
        open_envelope(resigned, RING.key(1), ALICE_PUB)


def test_open_with_the_wrong_key_fails() -> None:
    env, _ = seal()
    with pytest.raises(IntegrityError):
        open_envelope(env, bytes([7]) * 32, ALICE_PUB)


def test_open_with_another_epochs_key_fails() -> None:
    env, _ = seal(epoch=1)
    with pytest.raises(IntegrityError):
        open_envelope(env, RING.key(0), ALICE_PUB)


def test_relabelled_epoch_fails() -> None:
    env, _ = seal(epoch=0)
    relabelled = dataclasses.replace(env, epoch=1)
    with pytest.raises(IntegrityError):
        open_envelope(relabelled, RING.key(0), ALICE_PUB)
    with pytest.raises(IntegrityError):
        open_envelope(relabelled, RING.key(1), ALICE_PUB)


def test_wrong_signer_fails() -> None:
    env, _ = seal()
    with pytest.raises(IntegrityError):
        verify_envelope(env, MALLORY.public("mallory").signing_public_key())
    with pytest.raises(IntegrityError):
        open_envelope(env, RING.key(1), MALLORY.public("mallory").signing_public_key())


def test_forgery_claiming_another_source_fails() -> None:
    """Mallory holds the group key but cannot sign as Alice."""
    forged, _ = seal_envelope(
        MALLORY,
        RING.key(1),
        source="alice",
        target=SPACE,
        subject="default",
        epoch=1,
        content_type=None,
        body="I am alice",
        head_seq=HEAD_SEQ,
        head=HEAD,
        seq=SEQ,
        sid=SID,
    )
    with pytest.raises(IntegrityError):
        open_envelope(forged, RING.key(1), ALICE_PUB)


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "eph"},
        {"source": "bob"},
        {"target": SpaceKeyPair.from_seed(b"other").space_id},
        {"subject": "random"},
        {"epoch": 0},
        {"content_type": "text/html"},
        {"head_seq": HEAD_SEQ + 1},
        {"head": bytes(32)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_routing_fields_are_bound_by_the_aead(change: dict[str, Any]) -> None:
    """A member who holds the group key and re-signs cannot re-label someone's ciphertext
    (nor bind it to another state head than the one it was sealed under)."""
    env, _ = seal()
    relabelled = dataclasses.replace(env, **change)
    resigned = dataclasses.replace(relabelled, signature=ALICE.sign(relabelled.signed_bytes()))
    verify_envelope(resigned, ALICE_PUB)
    with pytest.raises(IntegrityError):
        open_envelope(resigned, RING.key(1), ALICE_PUB)


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "eph"},
        {"source": "bob"},
        {"target": SpaceKeyPair.from_seed(b"other").space_id},
        {"subject": "random"},
        {"epoch": 0},
        {"content_type": "text/html"},
        {"head_seq": HEAD_SEQ + 1},
        {"head": bytes(32)},
        {"iv": bytes(12)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_field_is_signed(change: dict[str, Any]) -> None:
    env, _ = seal()
    altered = dataclasses.replace(env, **change)
    assert altered.signed_bytes() != env.signed_bytes()
    with pytest.raises(IntegrityError):
        verify_envelope(altered, ALICE_PUB)


@pytest.mark.parametrize("head", [b"", bytes(31), bytes(33)], ids=["empty", "31", "33"])
def test_head_is_32_bytes(head: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        seal(head=head)
    assert info.value.field == "head"


def test_unsigned_envelope_fails() -> None:
    env, _ = seal()
    with pytest.raises(IntegrityError):
        open_envelope(dataclasses.replace(env, signature=b""), RING.key(1), ALICE_PUB)


def test_envelope_repr_hides_signature() -> None:
    env, _ = seal()
    assert env.signature.hex() not in repr(env)
    assert repr(env.signature) not in repr(env)


@pytest.mark.parametrize("subject", ["", None, 3])
def test_subject_is_required(subject: object) -> None:
    with pytest.raises(ProtocolError):
        seal(subject=subject)


@pytest.mark.parametrize(
    "body", [math.nan, {1, 2}, b"bytes", object(), {"x": math.inf}, {1: "a", "b": 2}]
)
def test_body_must_be_json(body: object) -> None:
    with pytest.raises(ProtocolError) as info:
        seal(body)
    assert info.value.field == "payload"


json_bodies = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)


@given(json_bodies)
def test_any_json_body_round_trips(body: Any) -> None:
    env, message = seal(body)
    assert open_envelope(env, RING.key(1), ALICE_PUB).body == message.body == body


# --------------------------------------------------------------------------- plaintexts


def _seal_raw(plaintext: bytes) -> Envelope:
    """An envelope from a member whose client seals arbitrary bytes (a hostile member)."""
    iv = bytes(12)
    raw_aad = aad(content_type="")
    unsigned = Envelope(
        "msg",
        "alice",
        SPACE,
        "default",
        1,
        "",
        HEAD_SEQ,
        HEAD,
        iv,
        crypto.aead_seal(RING.key(1), iv, plaintext, raw_aad),
    )
    return dataclasses.replace(unsigned, signature=ALICE.sign(unsigned.signed_bytes()))


_ID = '"id":"' + "ab" * 16 + '"'
_GOOD = '"body":1,' + _ID + ',"rev":0,"seq":5,"sid":"0123456789abcdef","ts":1'


def _plain(text: str) -> bytes:
    return ("{" + text + "}").encode()


def test_a_well_formed_raw_plaintext_opens() -> None:
    opened = open_envelope(_seal_raw(_plain(_GOOD)), RING.key(1), ALICE_PUB)
    assert opened == Message("ab" * 16, 1, 1, 5, 0, "0123456789abcdef")


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"body": 1, "id": "x"}',
        _plain('"body":1,' + _ID + ',"ts":1'),
        _plain(_GOOD + ',"extra":0'),
        _plain(_GOOD.replace(_ID, '"id":5')),
        _plain(_GOOD.replace(_ID, '"id":"x"')),
        _plain(_GOOD.replace(_ID, '"id":"' + "AB" * 16 + '"')),
        _plain(_GOOD.replace('"ts":1', '"ts":"1"')),
        _plain(_GOOD.replace('"seq":5', '"seq":-1')),
        _plain(_GOOD.replace('"seq":5', '"seq":true')),
        _plain(_GOOD.replace('"seq":5', '"seq":5.5')),
        _plain(_GOOD.replace('"seq":5', f'"seq":{2**63}')),
        _plain(_GOOD.replace('"rev":0', '"rev":null')),
        _plain(_GOOD.replace("0123456789abcdef", "0123456789ABCDEF")),
        _plain(_GOOD.replace("0123456789abcdef", "0123456789abcde")),
        _plain(_GOOD.replace('"sid":"0123456789abcdef"', '"sid":7')),
        b"[" * 100_000,
        b'{"body":' + b"[" * 100_000 + b"]" * 100_000 + b',"id":"x","ts":1}',
    ],
    ids=[
        "empty",
        "text",
        "not utf-8",
        "list",
        "missing ts",
        "v1 plaintext without seq, rev, sid",
        "extra field",
        "id not text",
        "id not 32 hex",
        "id upper-case",
        "ts not int",
        "seq negative",
        "seq boolean",
        "seq float",
        "seq too large",
        "rev null",
        "sid upper-case",
        "sid too short",
        "sid not text",
        "deep nesting",
        "deep body",
    ],
)
def test_malformed_plaintext_is_an_integrity_error(plaintext: bytes) -> None:
    with pytest.raises(IntegrityError):
        open_envelope(_seal_raw(plaintext), RING.key(1), ALICE_PUB)


def test_message_bytes_round_trip() -> None:
    message = Message("ab" * 16, 5, {"k": [1, None]})
    assert (message.seq, message.rev, message.sid) == (0, 0, "0" * 16)
    assert Message.from_bytes(message.to_bytes()) == message
    edited = Message("cd" * 16, 6, "x", seq=2**63 - 1, rev=3, sid="fedcba9876543210")
    assert Message.from_bytes(edited.to_bytes()) == edited
    assert edited.to_bytes() == (
        b'{"body":"x","id":"' + b"cd" * 16 + b'","rev":3,"seq":9223372036854775807,'
        b'"sid":"fedcba9876543210","ts":6}'
    )
    with pytest.raises(ProtocolError):
        Message.from_bytes(b"[" * 100_000)


def test_message_from_bytes_names_the_field() -> None:
    with pytest.raises(ProtocolError) as info:
        Message.from_bytes(_plain(_GOOD.replace("0123456789abcdef", "nothex0123456789")))
    assert info.value.field == "message.sid"
    with pytest.raises(ProtocolError) as info:
        Message.from_bytes(_plain(_GOOD.replace('"rev":0', '"rev":-2')))
    assert info.value.field == "message.rev"


def test_new_session_id() -> None:
    ids = {new_session_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[0-9a-f]{16}", sid) for sid in ids)
    env, message = seal(sid=new_session_id())
    assert open_envelope(env, RING.key(1), ALICE_PUB).sid == message.sid


@pytest.mark.parametrize(
    "text",
    [
        b'{"body":"a","body":"b","id":"'
        + b"0" * 32
        + b'","rev":0,"seq":1,"sid":"'
        + b"0" * 16
        + b'","ts":1}',
        b'{"body":{"x":1,"x":2},"id":"'
        + b"0" * 32
        + b'","rev":0,"seq":1,"sid":"'
        + b"0" * 16
        + b'","ts":1}',
    ],
)
def test_a_plaintext_with_a_repeated_key_is_refused(text: bytes) -> None:
    """Parsers disagree on which value a repeated key means: refused, at any depth."""
    with pytest.raises(ProtocolError, match="not JSON"):
        Message.from_bytes(text)


@pytest.mark.parametrize(
    "body",
    [
        '{"x":1,"x":1}',  # the same value twice: still refused
        '{"b":1,"a":2,"a":2}',  # unsorted too
        '[{"k":[{"z":0,"z":0}]}]',  # deep inside a list
        '{"x" : 1, "x" : 2}',  # spaced: not canonical, the stdlib path decides
    ],
)
def test_a_repeated_key_is_refused_off_the_canonical_fast_path(body: str) -> None:
    """Canonical plaintexts are read by orjson; anything it would not write back byte
    for byte goes to the checking stdlib parser, so no repeated key slips through."""
    with pytest.raises(ProtocolError, match="not JSON"):
        Message.from_bytes(_plain(_GOOD.replace('"body":1', '"body":' + body)))


@pytest.mark.parametrize(
    "body",
    ['{"b": 1, "a": 2}', "1e+16", "-0", r'"\u00e9\ud83d\ude00"', "1234567890123456789012345678"],
)
def test_non_canonical_plaintexts_read_as_the_stdlib_reads_them(body: str) -> None:
    message = Message.from_bytes(_plain(_GOOD.replace('"body":1', '"body":' + body)))
    assert message.body == json.loads(body)
