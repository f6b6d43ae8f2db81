"""The committed test vectors (tests/vectors/*.json; PROTOCOL.md, "Test vectors").

Every deterministic byte is recomputed here with the library and compared; every stored
signature is verified; the state log is replayed by :class:`SpaceState` and the envelopes
are delivered by a :class:`MemberCore` that replayed it; and every field that is sealed or
signed is altered to show that the change is caught.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from spacenb.clock import FixedClock
from spacenb.exceptions import (
    IntegrityError,
    InvalidKeyError,
    InviteError,
    PermissionDeniedError,
    ProtocolError,
    SpacenbError,
    StaleStateError,
)
from spacenb.protocol import crypto
from spacenb.protocol.codec import to_obj
from spacenb.protocol.encoding import b64d, b64e, canonical_json, lp_encode
from spacenb.protocol.envelope import (
    Envelope,
    envelope_aad,
    open_envelope,
    seal_envelope,
    verify_envelope,
)
from spacenb.protocol.frames import (
    CreateSpace,
    GetStateLog,
    MessagePushed,
    StatePushed,
    auth_signed_bytes,
    log_read_signed_bytes,
    parse_client_frame,
    parse_server_frame,
)
from spacenb.protocol.keyring import Keyring
from spacenb.protocol.keys import (
    IdentityKeys,
    SpaceKeyPair,
    check_public_key,
    decode_public_key,
    decode_space_id,
    encode_public_key,
    scalar_from_seed,
)
from spacenb.protocol.member import MemberCore, Need, Opened, Rejected
from spacenb.protocol.statelog import (
    GENESIS_PREV,
    KINDS,
    SpaceState,
    StateEvent,
    key_commitment,
    link_id_of_key,
    link_keys_from_token,
    link_proof_bytes,
    make_event,
    make_genesis,
)
from spacenb.protocol.tickets import verify_ticket
from spacenb.protocol.wrap import WrappedKey, unwrap_group_key, wrap_group_key

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


@cache
def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def vectors(name: str) -> list[dict[str, Any]]:
    return list(load(name)["vectors"])


def named(name: str, vector: str) -> dict[str, Any]:
    (found,) = (v for v in vectors(name) if v["name"] == vector)
    return found


def identity(name: str) -> IdentityKeys:
    return IdentityKeys.from_seed(bytes.fromhex(named("identities.json", name)["seed_hex"]))


def space_pair(space_id: str) -> SpaceKeyPair:
    (seed,) = (s["seed_hex"] for s in vectors("space_keys.json") if s["space_id"] == space_id)
    return SpaceKeyPair.from_seed(bytes.fromhex(seed))


def sig_key(text: str) -> crypto.PublicKey:
    return decode_public_key(text, "sig")


def other_space_id(space_id: str) -> str:
    return str(next(s["space_id"] for s in vectors("space_keys.json") if s["space_id"] != space_id))


def flip(data: bytes, index: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


replace = dataclasses.replace


# --------------------------------------------------------------------------- generator


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("vector_generator", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


def test_generator_reproduces_committed_files() -> None:
    generator = _generator()
    committed = {p.name: p.read_text(encoding="utf-8") for p in sorted(VECTORS.glob("*.json"))}
    # Equal dicts: every committed file is generated (no stale v1 file is left behind) and
    # every generated file is committed, byte for byte.
    assert generator.build_all(generator.load_existing(VECTORS)) == committed


def test_generator_check_reports_no_change(capsys: pytest.CaptureFixture[str]) -> None:
    assert _generator().main(["--check"]) == 0
    assert capsys.readouterr().out == ""


def test_generator_replaces_a_signature_that_no_longer_verifies() -> None:
    """Stored signatures are reused only while they verify: a broken one is re-made, and
    the events after it change (their prev is the new hash), yet all of it verifies."""
    generator = _generator()
    previous = generator.load_existing(VECTORS)
    doc = json.loads(json.dumps(previous["state_log.json"]))
    doc["events"][3]["signature_hex"] = flip(bytes.fromhex(doc["events"][3]["signature_hex"])).hex()
    rebuilt = json.loads(generator.build_all({**previous, "state_log.json": doc})["state_log.json"])
    old = previous["state_log.json"]["events"]
    new = rebuilt["events"]
    assert [e["hash_hex"] for e in new[:3]] == [e["hash_hex"] for e in old[:3]]
    assert new[3]["signature_hex"] != old[3]["signature_hex"]
    assert all(n["hash_hex"] != o["hash_hex"] for n, o in zip(new[3:], old[3:], strict=True))
    SpaceState.from_events(_event_of(e) for e in new)


# --------------------------------------------------------------------------- keys


KEY_FORM = load("identities.json")["key_form"]


@pytest.mark.parametrize("case", KEY_FORM["off_curve"], ids=lambda c: c["why"])
def test_key_form_vector_off_the_curve(case: dict[str, Any]) -> None:
    """Of a valid form (what checking a state event's keys looks at), refused decoded
    (where the key is first used)."""
    assert check_public_key(case["text"], KEY_FORM["kind"]) == case["text"]
    with pytest.raises(InvalidKeyError):
        decode_public_key(case["text"], KEY_FORM["kind"])


@pytest.mark.parametrize("case", KEY_FORM["refused"], ids=lambda c: c["why"])
def test_key_form_vector_refused(case: dict[str, Any]) -> None:
    for check in (check_public_key, decode_public_key):
        with pytest.raises(InvalidKeyError):
            check(case["text"], KEY_FORM["kind"])


@pytest.mark.parametrize("vector", vectors("identities.json"), ids=lambda v: v["name"])
def test_identity_vector(vector: dict[str, Any]) -> None:
    seed = bytes.fromhex(vector["seed_hex"])
    keys = IdentityKeys.from_seed(seed)
    assert scalar_from_seed(seed, "identity/sig").hex() == vector["signing_scalar_hex"]
    assert scalar_from_seed(seed, "identity/dh").hex() == vector["ecdh_scalar_hex"]
    assert keys.signing_key == vector["signing_key"]
    assert keys.ecdh_key == vector["ecdh_key"]
    assert vector["signing_key"] == "sig." + b64e(
        bytes([1, 1]) + bytes.fromhex(vector["signing_point_hex"])
    )
    assert vector["ecdh_key"] == "dh." + b64e(
        bytes([1, 1]) + bytes.fromhex(vector["ecdh_point_hex"])
    )
    assert keys.fingerprint == vector["fingerprint"]
    assert keys.to_bytes().hex() == vector["private_blob_hex"]
    assert (
        vector["private_blob_hex"]
        == "01" + vector["signing_scalar_hex"] + vector["ecdh_scalar_hex"]
    )
    assert keys.to_text() == vector["private_text"]
    assert IdentityKeys.from_text(vector["private_text"]).signing_key == vector["signing_key"]


@pytest.mark.parametrize("vector", vectors("space_keys.json"), ids=lambda v: v["name"])
def test_space_key_vector(vector: dict[str, Any]) -> None:
    seed = bytes.fromhex(vector["seed_hex"])
    pair = SpaceKeyPair.from_seed(seed)
    assert pair.to_bytes().hex() == vector["scalar_hex"] == scalar_from_seed(seed, "space").hex()
    assert pair.space_id == vector["space_id"]
    assert vector["encoded_hex"] == "0101" + vector["point_hex"]
    assert b64d(vector["space_id"].removeprefix("spc.")).hex() == vector["encoded_hex"]
    point = crypto.public_key_to_point(decode_space_id(vector["space_id"]))
    assert point.hex() == vector["point_hex"]


# --------------------------------------------------------------------------- encodings


def _field(spec: dict[str, Any]) -> bytes | str | int:
    if "int" in spec:
        return int(spec["int"])
    if "text" in spec:
        return str(spec["text"])
    return bytes.fromhex(spec["hex"])


@pytest.mark.parametrize("case", load("encoding.json")["lp_encode"], ids=lambda c: c["name"])
def test_lp_encode_vector(case: dict[str, Any]) -> None:
    assert lp_encode(*(_field(f) for f in case["fields"])).hex() == case["encoded_hex"]


def test_base64url_vectors() -> None:
    doc = load("encoding.json")
    for case in doc["base64url"]:
        assert b64e(bytes.fromhex(case["bytes_hex"])) == case["text"]
        assert b64d(case["text"]).hex() == case["bytes_hex"]
    for case in doc["base64url_invalid"]:
        with pytest.raises(ProtocolError):
            b64d(case["text"])


@pytest.mark.parametrize("case", load("encoding.json")["canonical_json"], ids=lambda c: c["name"])
def test_canonical_json_vector(case: dict[str, Any]) -> None:
    canonical = canonical_json(case["value"])
    assert canonical.hex() == case["canonical_hex"]
    assert canonical.decode("utf-8") == case["canonical_text"]
    # The canonical form parses back to the value and is its own canonical form.
    assert json.loads(canonical) == case["value"]
    assert canonical_json(json.loads(canonical)) == canonical


def test_canonical_json_edge_cases_are_pinned() -> None:
    cases = {c["name"]: c for c in load("encoding.json")["canonical_json"]}
    assert cases["keys sorted by code point"]["canonical_text"] == (
        '{"":5,"0":9,"B":3,"_":8,"a":2,"aa":4,"b":1,"z":7,"é":6}'
    )
    assert cases["code point order, not UTF-16 order"]["canonical_text"] == (
        '{"~":4,"\ue000":3,"\uffff":2,"\U0001f600":1}'
    )
    assert bytes.fromhex(cases["non-ASCII text is raw UTF-8"]["canonical_hex"]).startswith(
        b'["\xc3\xa9","\xe2\x9c\x93","\xf0\x9f\x98\x80"'
    )
    assert cases["control characters and escapes"]["canonical_text"] == (
        '["\\u0000","\\u0001","\\b","\\t","\\n","\\u000b","\\f","\\r","\\u001f",'
        '"\\"","\\\\","/","\x7f"]'
    )
    assert cases["integers"]["canonical_text"] == "[0,1,-1,42,9007199254740991,-9007199254740991]"
    floats = cases["floats (application bodies only)"]["canonical_text"]
    assert floats == "[0.1,1.0,1e+16,-0.0,1.5e-07,123456.789]"
    assert "\u0080\u009f" in cases["non-ASCII text is raw UTF-8"]["canonical_text"]


@pytest.mark.parametrize(
    "case", load("encoding.json")["canonical_json_invalid"], ids=lambda c: c["why"]
)
def test_non_canonical_json_vector(case: dict[str, Any]) -> None:
    text = case["text"].encode("utf-8")
    assert canonical_json(json.loads(text)) != text


# --------------------------------------------------------------------------- envelopes


def _wire(frame_env: dict[str, Any]) -> Envelope:
    """Parse the wire form through the frame codec, as a client would receive it."""
    event = parse_server_frame(
        json.dumps({"t": "evt", "ev": "message", "handle": 1, "envelope": frame_env})
    )
    assert isinstance(event, MessagePushed)
    return event.envelope


def _aad(e: Envelope) -> bytes:
    return envelope_aad(
        e.kind, e.source, e.target, e.subject, e.epoch, e.content_type, e.head_seq, e.head
    )


@pytest.mark.parametrize("vector", vectors("envelopes.json"), ids=lambda v: v["name"])
def test_envelope_vector(vector: dict[str, Any]) -> None:
    sender = identity(vector["sender"])
    assert sender.signing_key == vector["sender_signing_key"]
    group_key = bytes.fromhex(vector["group_key_hex"])
    head = bytes.fromhex(vector["head_hex"])
    sealed, message = seal_envelope(
        sender,
        group_key,
        kind=vector["kind"],
        source=vector["source"],
        target=vector["target"],
        subject=vector["subject"],
        epoch=vector["epoch"],
        content_type=vector["content_type"] or None,
        body=vector["body"],
        head_seq=vector["head_seq"],
        head=head,
        seq=vector["seq"],
        sid=vector["sid"],
        rev=vector["rev"],
        clock=FixedClock(vector["clock_us"]),
        message_id=vector["message_id"],
        iv=bytes.fromhex(vector["iv_hex"]),
    )
    # Deterministic bytes, byte for byte.
    assert message.sent_at_ms == vector["sent_at_ms"] == vector["clock_us"] // 1000
    assert (message.seq, message.rev, message.sid) == (vector["seq"], vector["rev"], vector["sid"])
    assert message.to_bytes().hex() == vector["plaintext_hex"]
    assert json.loads(bytes.fromhex(vector["plaintext_hex"])) == {
        "body": vector["body"],
        "id": vector["message_id"],
        "rev": vector["rev"],
        "seq": vector["seq"],
        "sid": vector["sid"],
        "ts": vector["sent_at_ms"],
    }
    aad = _aad(sealed)
    assert aad.hex() == vector["aad_hex"]
    assert aad == lp_encode(
        f"spacenb/v2/aad/{vector['kind']}",
        vector["target"],
        vector["epoch"],
        vector["subject"],
        vector["content_type"],
        vector["source"],
        vector["head_seq"],
        head,
    )
    assert sealed.ciphertext.hex() == vector["ciphertext_hex"]
    assert sealed.signed_bytes().hex() == vector["signed_hex"]
    assert sealed.signed_bytes() == lp_encode(
        f"spacenb/v2/envelope/{vector['kind']}",
        vector["source"],
        vector["target"],
        vector["subject"],
        vector["epoch"],
        vector["content_type"],
        vector["head_seq"],
        head,
        bytes.fromhex(vector["iv_hex"]),
        bytes.fromhex(vector["ciphertext_hex"]),
    )
    # The fresh signature and the stored one both verify (ECDSA is randomized).
    verify_envelope(sealed, sig_key(vector["sender_signing_key"]))
    received = _wire(vector["wire"])
    assert received == replace(sealed, signature=bytes.fromhex(vector["signature_hex"]))
    assert to_obj(received) == vector["wire"]
    opened = open_envelope(received, group_key, sig_key(vector["sender_signing_key"]))
    assert opened == message
    assert crypto.aead_open(
        group_key, bytes.fromhex(vector["iv_hex"]), received.ciphertext, aad
    ) == bytes.fromhex(vector["plaintext_hex"])


@pytest.mark.parametrize("vector", vectors("envelopes.json"), ids=lambda v: v["name"])
def test_envelope_is_bound_to_the_vector_log(vector: dict[str, Any]) -> None:
    """Each envelope's head is an event of state_log.json, its sender was a member there,
    and it is sealed under the epoch current there, with the key the log committed to."""
    assert vector["target"] == load("envelopes.json")["space_id"] == _log_state().space_id
    state = _log_state()
    assert state.hash_at(vector["head_seq"]) == bytes.fromhex(vector["head_hex"])
    assert state.is_member_at(vector["sender"], vector["head_seq"])
    assert (
        state.signing_key_at(vector["sender"], vector["head_seq"]) == vector["sender_signing_key"]
    )
    assert state.epoch_at(vector["head_seq"]) == vector["epoch"]
    state.check_commitment(vector["epoch"], bytes.fromhex(vector["group_key_hex"]))


def _member(name: str, upto: int | None = None) -> MemberCore:
    state = _log_state()
    keys = {k["epoch"]: bytes.fromhex(k["key_hex"]) for k in load("state_log.json")["group_keys"]}
    core = MemberCore(
        state.space_id, name, identity(name), keyring=Keyring(state.space_id, "rotate", keys)
    )
    core.extend_log(_chain()[: None if upto is None else upto + 1])
    return core


def test_envelopes_are_delivered_by_a_member_that_replayed_the_log() -> None:
    core = _member("carol")
    for vector in vectors("envelopes.json"):
        result = core.open_message(_wire(vector["wire"]), vector["handle"], kind=vector["kind"])
        assert isinstance(result, Opened), (vector["name"], result)
        assert result.message.to_bytes().hex() == vector["plaintext_hex"]
        assert result.edit == (vector["rev"] > 0)


def test_envelope_bound_to_an_unseen_head_needs_the_log() -> None:
    vector = named("envelopes.json", "channel message")
    core = _member("carol", upto=vector["head_seq"] - 1)
    assert core.open_message(_wire(vector["wire"]), vector["handle"]) is Need.LOG


def test_envelope_bound_to_another_head_is_rejected() -> None:
    """Re-signed by its sender with a head the member's log does not have at that seq."""
    vector = named("envelopes.json", "channel message")
    sender = identity(vector["sender"])
    env = _wire(vector["wire"])
    forked = replace(env, head=flip(env.head))
    forked = replace(forked, signature=sender.sign(forked.signed_bytes()))
    result = _member("carol").open_message(forked, vector["handle"])
    assert isinstance(result, Rejected) and "fork" in result.reason


def _other_user(name: str) -> str:
    return "bob" if name == "alice" else "alice"


ENVELOPE_ALTERATIONS: dict[str, Callable[[Envelope], Envelope]] = {
    "kind": lambda e: replace(e, kind="eph" if e.kind == "msg" else "msg"),
    "source": lambda e: replace(e, source=_other_user(e.source)),
    "target": lambda e: replace(e, target=other_space_id(e.target)),
    "subject": lambda e: replace(e, subject=e.subject + "2"),
    "epoch": lambda e: replace(e, epoch=e.epoch + 1),
    "content_type": lambda e: replace(e, content_type="text/html"),
    "head_seq": lambda e: replace(e, head_seq=e.head_seq + 1),
    "head": lambda e: replace(e, head=flip(e.head, 31)),
    "iv": lambda e: replace(e, iv=flip(e.iv)),
    "ciphertext": lambda e: replace(e, ciphertext=flip(e.ciphertext)),
    "tag": lambda e: replace(e, ciphertext=flip(e.ciphertext, -1)),
    "signature": lambda e: replace(e, signature=flip(e.signature, 5)),
}
ENVELOPE_SIGNED_FIELDS = list(ENVELOPE_ALTERATIONS)


def test_every_envelope_field_is_altered() -> None:
    wire_fields = {f.name for f in dataclasses.fields(Envelope)}
    assert wire_fields <= set(ENVELOPE_ALTERATIONS)


def _alter_envelope(env: Envelope, name: str) -> Envelope:
    return ENVELOPE_ALTERATIONS[name](env)


@pytest.mark.parametrize("field", ENVELOPE_SIGNED_FIELDS)
@pytest.mark.parametrize("vector", vectors("envelopes.json"), ids=lambda v: v["name"])
def test_altered_envelope_is_refused(vector: dict[str, Any], field: str) -> None:
    signer = sig_key(vector["sender_signing_key"])
    group_key = bytes.fromhex(vector["group_key_hex"])
    original = _wire(vector["wire"])
    altered = _alter_envelope(original, field)
    assert altered != original
    with pytest.raises(IntegrityError):
        verify_envelope(altered, signer)
    with pytest.raises(IntegrityError):
        open_envelope(altered, group_key, signer)


@pytest.mark.parametrize("field", [f for f in ENVELOPE_SIGNED_FIELDS if f != "signature"])
@pytest.mark.parametrize("vector", vectors("envelopes.json"), ids=lambda v: v["name"])
def test_altered_envelope_resigned_by_sender_fails_aead(vector: dict[str, Any], field: str) -> None:
    """The AEAD binds the routing fields and the head too: even the sender cannot
    re-label a ciphertext."""
    sender = identity(vector["sender"])
    group_key = bytes.fromhex(vector["group_key_hex"])
    altered = _alter_envelope(_wire(vector["wire"]), field)
    resigned = replace(altered, signature=sender.sign(altered.signed_bytes()))
    verify_envelope(resigned, sig_key(sender.signing_key))
    with pytest.raises(IntegrityError):
        open_envelope(resigned, group_key, sig_key(sender.signing_key))


# --------------------------------------------------------------------------- key wraps


def _wrapped(vector: dict[str, Any]) -> WrappedKey:
    frame = {"t": "evt", "ev": "keys", "space_id": vector["space_id"], "keys": [vector["wire"]]}
    event = parse_server_frame(json.dumps(frame))
    (wrapped,) = event.keys  # type: ignore[union-attr]
    assert isinstance(wrapped, WrappedKey)
    return wrapped


@pytest.mark.parametrize("vector", vectors("wraps.json"), ids=lambda v: v["name"])
def test_wrap_vector(vector: dict[str, Any]) -> None:
    recipient = identity(vector["recipient"])
    wrapper = identity(vector["wrapper"])
    assert recipient.ecdh_key == vector["recipient_ecdh_key"]
    assert wrapper.signing_key == vector["wrapper_signing_key"]
    recipient_dh = decode_public_key(vector["recipient_ecdh_key"], "dh")
    eph = crypto.private_key_from_bytes(bytes.fromhex(vector["ephemeral_scalar_hex"]))
    eph_point = crypto.public_key_to_point(eph.public_key())
    assert eph_point.hex() == vector["ephemeral_point_hex"]
    info = lp_encode("spacenb/v1/wrap", vector["space_id"], vector["epoch"], vector["recipient"])
    assert info.hex() == vector["info_hex"]
    salt = eph_point + crypto.public_key_to_point(recipient_dh)
    assert salt.hex() == vector["salt_hex"]
    shared = crypto.ecdh(eph, recipient_dh)
    assert shared.hex() == vector["shared_secret_hex"]
    # Both sides of the agreement reach the same secret.
    assert recipient.ecdh(eph.public_key()) == shared
    kek = crypto.hkdf_sha256(shared, salt=salt, info=info)
    assert kek.hex() == vector["kek_hex"]

    made = wrap_group_key(
        bytes.fromhex(vector["group_key_hex"]),
        space_id=vector["space_id"],
        epoch=vector["epoch"],
        recipient=vector["recipient"],
        recipient_ecdh=recipient_dh,
        wrapper=vector["wrapper"],
        wrapper_identity=wrapper,
        ephemeral_scalar=bytes.fromhex(vector["ephemeral_scalar_hex"]),
        iv=bytes.fromhex(vector["iv_hex"]),
    )
    blob = bytes.fromhex(vector["blob_hex"])
    assert made.blob == blob
    assert len(blob) == 94
    assert blob[0] == 1 and blob[1:34] == eph_point
    assert blob[34:46].hex() == vector["iv_hex"]
    assert crypto.aead_open(kek, blob[34:46], blob[46:], info).hex() == vector["group_key_hex"]
    assert made.signed_bytes().hex() == vector["signed_hex"]
    assert made.signed_bytes() == lp_encode(
        "spacenb/v1/wrap-sig",
        vector["space_id"],
        vector["epoch"],
        vector["recipient"],
        vector["wrapper"],
        blob,
    )
    stored = _wrapped(vector)
    assert stored == dataclasses.replace(made, signature=bytes.fromhex(vector["signature_hex"]))
    for candidate in (made, stored):
        key = unwrap_group_key(candidate, recipient, sig_key(vector["wrapper_signing_key"]))
        assert key.hex() == vector["group_key_hex"]


WRAP_ALTERATIONS: dict[str, Callable[[WrappedKey], WrappedKey]] = {
    "space_id": lambda w: dataclasses.replace(w, space_id=other_space_id(w.space_id)),
    "epoch": lambda w: dataclasses.replace(w, epoch=w.epoch + 1),
    "recipient": lambda w: dataclasses.replace(w, recipient="alice"),
    "wrapper": lambda w: dataclasses.replace(w, wrapper="mallory"),
    "blob version": lambda w: dataclasses.replace(w, blob=flip(w.blob, 0)),
    # Flipping the point's prefix negates the point: same ECDH x coordinate, yet the
    # salt (which holds the point) changes, so the key-encryption key does too.
    "blob point prefix": lambda w: dataclasses.replace(w, blob=flip(w.blob, 1)),
    "blob point x": lambda w: dataclasses.replace(w, blob=flip(w.blob, 20)),
    "blob iv": lambda w: dataclasses.replace(w, blob=flip(w.blob, 34)),
    "blob ciphertext": lambda w: dataclasses.replace(w, blob=flip(w.blob, 50)),
    "blob tag": lambda w: dataclasses.replace(w, blob=flip(w.blob, 93)),
    "blob truncated": lambda w: dataclasses.replace(w, blob=w.blob[:-1]),
    "signature": lambda w: dataclasses.replace(w, signature=flip(w.signature, 40)),
}


@pytest.mark.parametrize("field", list(WRAP_ALTERATIONS))
@pytest.mark.parametrize("vector", vectors("wraps.json"), ids=lambda v: v["name"])
def test_altered_wrap_is_refused(vector: dict[str, Any], field: str) -> None:
    original = _wrapped(vector)
    altered = WRAP_ALTERATIONS[field](original)
    assert altered != original
    with pytest.raises(IntegrityError):
        unwrap_group_key(
            altered, identity(vector["recipient"]), sig_key(vector["wrapper_signing_key"])
        )


@pytest.mark.parametrize(
    "field", [f for f in WRAP_ALTERATIONS if f not in ("wrapper", "signature")]
)
@pytest.mark.parametrize("vector", vectors("wraps.json"), ids=lambda v: v["name"])
def test_altered_wrap_resigned_by_wrapper_fails_to_open(vector: dict[str, Any], field: str) -> None:
    """The KDF label and AEAD bind space, epoch and recipient, beyond the signature."""
    wrapper = identity(vector["wrapper"])
    altered = WRAP_ALTERATIONS[field](_wrapped(vector))
    resigned = dataclasses.replace(altered, signature=wrapper.sign(altered.signed_bytes()))
    with pytest.raises(IntegrityError):
        unwrap_group_key(resigned, identity(vector["recipient"]), sig_key(wrapper.signing_key))


# --------------------------------------------------------------------------- state events


def _event_of(v: dict[str, Any]) -> StateEvent:
    """The event as its vector's fields describe it."""
    return StateEvent(
        v["space_id"],
        v["seq"],
        bytes.fromhex(v["prev_hex"]),
        v["kind"],
        v["actor"],
        v["at_us"],
        bytes.fromhex(v["body_hex"]),
        bytes.fromhex(v["signature_hex"]),
    )


def _wire_event(v: dict[str, Any]) -> StateEvent:
    """Parse the wire form through the frame codec, as a pushed ``state`` event."""
    frame = {"t": "evt", "ev": "state", "space_id": v["space_id"], "event": v["wire"]}
    pushed = parse_server_frame(json.dumps(frame))
    assert isinstance(pushed, StatePushed) and pushed.space_id == v["space_id"]
    return pushed.event


def _signer_key(v: dict[str, Any]) -> crypto.PublicKey:
    if v["signer"] == "space":
        assert v["signer_key"] == v["space_id"]
        return decode_space_id(v["signer_key"])
    return sig_key(v["signer_key"])


def _check_event_bytes(v: dict[str, Any]) -> StateEvent:
    """Every deterministic byte of one event vector, and its signature."""
    body = canonical_json(v["body"])
    assert body.hex() == v["body_hex"]
    event = _event_of(v)
    assert _wire_event(v) == event
    assert to_obj(event) == v["wire"]
    assert event.fields() == v["body"]
    signed = event.signed_bytes()
    assert signed.hex() == v["signed_hex"]
    assert signed == lp_encode(
        f"spacenb/v2/state/{v['kind']}",
        v["space_id"],
        v["seq"],
        bytes.fromhex(v["prev_hex"]),
        v["actor"],
        v["at_us"],
        body,
    )
    assert event.hash().hex() == v["hash_hex"]
    assert event.hash() == crypto.sha256(
        lp_encode("spacenb/v2/state-hash", signed, bytes.fromhex(v["signature_hex"]))
    )
    crypto.verify(_signer_key(v), event.signature, signed)
    return event


def _rebuilt(v: dict[str, Any]) -> StateEvent:
    """The library's own builder, from the vector's inputs (a fresh signature)."""
    if v["kind"] == "genesis":
        body = v["body"]
        keeper = body["keeper"]
        return make_genesis(
            space_pair(v["space_id"]),
            owner=body["owner"],
            owner_signing_key=body["signing_key"],
            owner_ecdh_key=body["ecdh_key"],
            policy=body["policy"],
            private=body["private"],
            manual_admit=body["manual_admit"],
            name=body["name"],
            keeper=(keeper, body["keeper_signing_key"], body["keeper_ecdh_key"])
            if keeper
            else None,
            group_key=bytes.fromhex(v["group_key_hex"]),
            at_us=v["at_us"],
        )
    return make_event(
        identity(v["signer"]),
        space_id=v["space_id"],
        seq=v["seq"],
        prev=bytes.fromhex(v["prev_hex"]),
        kind=v["kind"],
        actor=v["actor"],
        at_us=v["at_us"],
        body=v["body"],
    )


def _log_events() -> list[dict[str, Any]]:
    return list(load("state_log.json")["events"])


@cache
def _chain() -> tuple[StateEvent, ...]:
    return tuple(_wire_event(v) for v in _log_events())


@cache
def _log_state() -> SpaceState:
    return SpaceState.from_events(_chain())


def _group_key(epoch: int) -> bytes:
    (key,) = (k["key_hex"] for k in load("state_log.json")["group_keys"] if k["epoch"] == epoch)
    return bytes.fromhex(key)


@pytest.mark.parametrize("vector", _log_events(), ids=lambda v: v["name"])
def test_state_event_vector(vector: dict[str, Any]) -> None:
    event = _check_event_bytes(vector)
    events = _log_events()
    seq = vector["seq"]
    assert events[seq] is vector
    assert vector["space_id"] == load("state_log.json")["space_id"]
    previous = GENESIS_PREV.hex() if seq == 0 else events[seq - 1]["hash_hex"]
    assert vector["prev_hex"] == previous
    if vector["kind"] == "genesis":
        assert vector["signer"] == "space"
    else:
        # Each event is signed by its actor (an add by the member it adds) with the
        # signing key the log records for it.
        assert vector["signer"] == vector["actor"]
        assert vector["signer_key"] == identity(vector["actor"]).signing_key
        if vector["kind"] == "add":
            assert vector["body"]["member"] == vector["actor"]
            assert vector["body"]["signing_key"] == vector["signer_key"]
        else:
            assert (
                SpaceState.from_events(_chain()[:seq]).members[vector["actor"]].signing_key
                == (vector["signer_key"])
            )
    if vector["kind"] == "genesis":
        vector = {**vector, "group_key_hex": _group_key(0).hex()}
    rebuilt = _rebuilt(vector)
    assert rebuilt.signed_bytes() == event.signed_bytes()
    assert replace(rebuilt, signature=event.signature) == event


def test_state_log_covers_every_kind_and_way_in() -> None:
    events = _log_events()
    assert {e["kind"] for e in events} == set(KINDS)
    assert sorted(e["body"]["via"] for e in events if e["kind"] == "add") == [
        "invite",
        "link",
        "open",
    ]
    assert [e["seq"] for e in events] == list(range(len(events)))


def test_state_log_verifies_and_derives_the_final_state() -> None:
    state = SpaceState.from_events(_chain())
    final = load("state_log.json")["final_state"]
    assert state.head_seq == final["head_seq"] == len(_chain()) - 1
    assert state.head.hex() == final["head_hex"] == _log_events()[-1]["hash_hex"]
    assert (state.owner, state.keeper, state.policy) == (
        final["owner"],
        final["keeper"],
        final["policy"],
    )
    assert (state.private, state.manual_admit, state.name, state.epoch) == (
        final["private"],
        final["manual_admit"],
        final["name"],
        final["epoch"],
    )
    assert {
        m.name: {
            "role": m.role,
            "signing_key": m.signing_key,
            "ecdh_key": m.ecdh_key,
            "since_seq": m.since_seq,
            "since_epoch": m.since_epoch,
        }
        for m in state.members.values()
    } == final["members"]
    assert sorted(state.banned) == final["banned"]
    assert sorted(state.invitations) == final["invitations"]
    assert {
        link.link_id: {
            "role": link.role,
            "max_uses": link.max_uses,
            "expires_at_us": link.expires_at_us,
            "created_at_us": link.created_at_us,
            "seq": link.seq,
            "uses": link.uses,
            "revoked": link.revoked,
        }
        for link in state.links.values()
    } == final["links"]
    assert {str(h): a for h, a in state.deleted.items()} == final["deleted"]
    assert {
        str(e.epoch): {
            "seq": e.seq,
            "recipients": sorted(e.recipients),
            "key_commitment": e.commitment,
        }
        for e in state.epochs.values()
    } == final["epochs"]
    # Every intermediate head is the hash of its event.
    for v in _log_events():
        assert state.hash_at(v["seq"]) == bytes.fromhex(v["hash_hex"])
        assert state.seq_of(bytes.fromhex(v["hash_hex"])) == v["seq"]


def _verified_by_a_newcomer(events: list[StateEvent], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The seqs whose signatures a member holding nothing verifies reading ``events``."""
    signed: list[bytes] = []
    real = crypto.verify

    def spy(key: crypto.PublicKey, signature: bytes, data: bytes) -> None:
        signed.append(bytes(data))
        real(key, signature, data)

    monkeypatch.setattr(crypto, "verify", spy)
    core = MemberCore(events[0].space_id, "erin", identity("relay"))
    core.extend_log(events)
    monkeypatch.undo()
    assert core.require_state().head == events[-1].hash()
    seqs = {e.signed_bytes(): e.seq for e in events}
    return [seqs[b] for b in signed if b in seqs]


def test_checkpoint_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    """A newcomer verifies genesis, every event before the keeper's checkpoint but the
    adds, the checkpoint and the events after it; the adds under it only by their rules
    and the hash chain."""
    doc = load("state_log.json")
    cp = doc["checkpoint"]
    vector = _log_events()[cp["seq"]]
    assert (vector["kind"], vector["signer"], vector["body"]) == ("checkpoint", cp["signer"], {})
    assert vector["body_hex"] == b"{}".hex()
    assert cp["signer"] == _log_state().keeper
    events = _log_events()
    assert cp["covers"] == [v["seq"] for v in events[1 : cp["seq"]] if v["kind"] == "add"]
    assert cp["covers"] == [1, 3, 5]
    assert cp["newcomer_verifies"] == [s for s in range(len(events)) if s not in cp["covers"]]
    assert _verified_by_a_newcomer(list(_chain()), monkeypatch) == cp["newcomer_verifies"]


@pytest.mark.parametrize("index", range(1, 12))
def test_an_event_altered_under_the_checkpoint_is_refused_by_a_newcomer(index: int) -> None:
    """Whatever event before the checkpoint the relay alters (re-signed by anyone, the
    rest re-linked), its own signature (an event the keeper's checkpoint does not stand
    for) or the checkpoint's no longer verifies."""
    chain = list(_chain())
    assert _log_events()[12]["kind"] == "checkpoint"
    chain[index] = _resign(replace(chain[index], at_us=chain[index].at_us + 1), "relay")
    for i in range(index + 1, len(chain)):
        chain[i] = replace(chain[i], prev=chain[i - 1].hash())
    core = MemberCore(chain[0].space_id, "erin", identity("relay"))
    with pytest.raises(IntegrityError, match="does not verify"):
        core.extend_log(chain)
    assert core.state is None


def test_state_log_epochs_and_key_commitments() -> None:
    doc = load("state_log.json")
    state = _log_state()
    commitments = {c["epoch"]: c for c in doc["key_commitments"]}
    assert set(commitments) == set(state.epochs) == {k["epoch"] for k in doc["group_keys"]}
    genesis, epoch_event = _log_events()[0], next(e for e in _log_events() if e["kind"] == "epoch")
    assert genesis["body"]["key_commitment"] == commitments[0]["key_commitment"]
    assert epoch_event["body"]["key_commitment"] == commitments[1]["key_commitment"]
    assert epoch_event["body"]["epoch"] == 1
    for epoch, c in commitments.items():
        _check_commitment_vector(c)
        assert c["space_id"] == doc["space_id"]
        assert c["group_key_hex"] == _group_key(epoch).hex()
        state.check_commitment(epoch, _group_key(epoch))
        with pytest.raises(IntegrityError):
            state.check_commitment(epoch, _group_key(1 - epoch))


def _check_commitment_vector(c: dict[str, Any]) -> None:
    key = bytes.fromhex(c["group_key_hex"])
    encoded = lp_encode("spacenb/v2/key-commitment", c["space_id"], c["epoch"], key)
    assert encoded.hex() == c["input_hex"]
    assert crypto.sha256(encoded).hex() == c["sha256_hex"]
    assert c["key_commitment"] == b64e(bytes.fromhex(c["sha256_hex"]))
    assert key_commitment(c["space_id"], c["epoch"], key) == c["key_commitment"]


def test_link_token_derivation_vector() -> None:
    link = load("state_log.json")["link"]
    raw = bytes.fromhex(link["token_bytes_hex"])
    assert len(raw) == 32 and link["token"] == b64e(raw)
    assert scalar_from_seed(raw, "link").hex() == link["scalar_hex"]
    keys = link_keys_from_token(link["token"])
    assert keys.link_key == link["link_key"]
    public = crypto.private_key_from_bytes(bytes.fromhex(link["scalar_hex"])).public_key()
    assert encode_public_key(public, "lnk") == link["link_key"]
    assert crypto.sha256(link["link_key"].encode()).hex() == link["link_key_sha256_hex"]
    assert link["link_id"] == link["link_key_sha256_hex"][:16] == link_id_of_key(keys.link_key)
    (made,) = (e for e in _log_events() if e["kind"] == "link")
    assert (made["body"]["link_id"], made["body"]["link_key"]) == (
        link["link_id"],
        link["link_key"],
    )


def test_link_proof_vector() -> None:
    doc = load("state_log.json")
    proof = doc["link_proof"]
    (add,) = (e for e in _log_events() if e["kind"] == "add" and e["body"]["via"] == "link")
    assert proof["member"] == add["actor"] == add["body"]["member"]
    assert proof["prev_hex"] == add["prev_hex"]  # bound to the head the add follows
    assert add["body"]["link_id"] == doc["link"]["link_id"]
    assert add["body"]["proof"] == proof["proof"] == b64e(bytes.fromhex(proof["signature_hex"]))
    signed = link_proof_bytes(proof["space_id"], proof["member"], bytes.fromhex(proof["prev_hex"]))
    assert signed.hex() == proof["signed_hex"]
    assert signed == lp_encode(
        "spacenb/v2/link-proof",
        proof["space_id"],
        proof["member"],
        bytes.fromhex(proof["prev_hex"]),
    )
    link_key = decode_public_key(doc["link"]["link_key"], "lnk")
    signature = bytes.fromhex(proof["signature_hex"])
    crypto.verify(link_key, signature, signed)
    for other in (
        link_proof_bytes(
            other_space_id(proof["space_id"]), proof["member"], bytes.fromhex(proof["prev_hex"])
        ),
        link_proof_bytes(proof["space_id"], "mallory", bytes.fromhex(proof["prev_hex"])),
        link_proof_bytes(proof["space_id"], proof["member"], bytes.fromhex(add["hash_hex"])),
    ):
        with pytest.raises(IntegrityError):
            crypto.verify(link_key, signature, other)


def test_link_proof_cannot_be_replayed_elsewhere_in_the_log() -> None:
    """The redeemer re-signs its add one event later, reusing the old proof: refused."""
    (add,) = (e for e in _log_events() if e["kind"] == "add" and e["body"]["via"] == "link")
    seq = add["seq"]
    state = SpaceState.from_events(_chain()[:seq])
    later = make_event(
        identity("keeper"),
        space_id=state.space_id,
        seq=seq,
        prev=state.head,
        kind="delete",
        actor="keeper",
        at_us=add["at_us"] - 1,
        body={"handle": 99, "author": "keeper"},
    )
    state.apply(later)
    replayed = make_event(
        identity(add["actor"]),
        space_id=state.space_id,
        seq=seq + 1,
        prev=state.head,
        kind="add",
        actor=add["actor"],
        at_us=add["at_us"],
        body=add["body"],
    )
    with pytest.raises(IntegrityError):
        state.apply(replayed)


def test_log_read_vector() -> None:
    doc = load("state_log.json")
    read = doc["log_read"]
    nonce = bytes.fromhex(read["nonce_hex"])
    signed = log_read_signed_bytes(read["space_id"], read["username"], nonce)
    assert signed.hex() == read["signed_hex"]
    assert signed == lp_encode("spacenb/v2/link-read", read["space_id"], read["username"], nonce)
    link_key = decode_public_key(doc["link"]["link_key"], "lnk")
    signature = bytes.fromhex(read["signature_hex"])
    crypto.verify(link_key, signature, signed)
    request = parse_client_frame(read["frame"])
    assert isinstance(request, GetStateLog)
    assert request == GetStateLog(
        id=request.id,
        space_id=read["space_id"],
        since=0,
        limit=request.limit,
        link_id=read["link_id"],
        proof=signature,
    )
    assert read["link_id"] == doc["link"]["link_id"]
    assert request.to_json() == read["frame"]
    for other in (
        log_read_signed_bytes(other_space_id(read["space_id"]), read["username"], nonce),
        log_read_signed_bytes(read["space_id"], "mallory", nonce),
        log_read_signed_bytes(read["space_id"], read["username"], flip(nonce)),
    ):
        with pytest.raises(IntegrityError):
            crypto.verify(link_key, signature, other)


# Tampering with one signed field of one event. Each alteration names the error the
# verifier raises first: the chain's own checks (space, seq, prev: ProtocolError or
# StaleStateError) and the body's schema and canonical form come before the actor's
# rights (PermissionDeniedError, InviteError) and those before the signature
# (IntegrityError); genesis verifies the space key's signature before its body's rules.

OTHER_ACTOR = {
    "genesis": "bob", "add via open": "carol", "invite": "bob", "add via invite": "bob",
    "link": "bob", "add via link": "bob", "role": "carol", "epoch (rotate)": "alice",
    "delete": "bob", "unlink": "carol", "remove": "carol", "leave": "carol",
    "checkpoint": "carol", "invite back": "dave",
}  # fmt: skip
# Who else could have made the event: then only the signature shows the forgery.
ACTOR_PERMITTED = {"genesis", "epoch (rotate)", "delete"}


def _body_change(name: str) -> dict[str, Any]:
    dave_dh = identity("dave").ecdh_key
    keeper_dh = identity("keeper").ecdh_key
    changes: dict[str, dict[str, Any]] = {
        "genesis": {"private": True},
        "add via open": {"ecdh_key": dave_dh},
        "invite": {"role": "viewer"},
        "add via invite": {"ecdh_key": dave_dh},  # the invitation pinned carol's keys
        "link": {"max_uses": 3},
        "add via link": {"ecdh_key": keeper_dh},
        "role": {"role": "viewer"},
        "epoch (rotate)": {"key_commitment": key_commitment(_log_state().space_id, 1, bytes(32))},
        "delete": {"handle": 4},
        "unlink": {"link_id": "0000000000000000"},  # no such link
        "remove": {"member": "carol"},
        "leave": {"member": "carol"},  # a member leaves only by itself
        "checkpoint": {"seq": 11},  # a checkpoint's body is empty
        "invite back": {"role": "editor"},
    }
    return changes[name]


BODY_CHANGE_ERROR: dict[str, type[SpacenbError]] = {
    "add via invite": PermissionDeniedError,
    "unlink": InviteError,
    "leave": PermissionDeniedError,
    "checkpoint": ProtocolError,
}


def _with_body(event: StateEvent, changes: dict[str, Any]) -> StateEvent:
    return replace(event, body=canonical_json({**json.loads(event.body), **changes}))


def _tamper(name: str, event: StateEvent, field: str) -> tuple[StateEvent, type[SpacenbError]]:
    genesis = event.kind == "genesis"
    if field == "space_id":
        altered = replace(event, space_id=other_space_id(event.space_id))
        return altered, IntegrityError if genesis else ProtocolError
    if field == "seq":
        return replace(event, seq=event.seq + 1), ProtocolError if genesis else StaleStateError
    if field == "prev":
        return replace(event, prev=flip(event.prev, 31)), (
            ProtocolError if genesis else StaleStateError
        )
    if field == "kind":
        other = "add" if genesis else ("unlink" if event.kind != "unlink" else "leave")
        return replace(event, kind=other), ProtocolError
    if field == "actor":
        permitted = name in ACTOR_PERMITTED
        return replace(event, actor=OTHER_ACTOR[name]), (
            IntegrityError if permitted else PermissionDeniedError
        )
    if field == "at_us":
        return replace(event, at_us=event.at_us + 1), IntegrityError
    if field == "body (re-encoded)":
        # The same JSON with one space: not canonical, refused before anything else.
        return replace(event, body=b"{ " + event.body[1:]), ProtocolError
    if field == "body (value)":
        return _with_body(event, _body_change(name)), BODY_CHANGE_ERROR.get(name, IntegrityError)
    if field == "signature":
        return replace(event, signature=flip(event.signature, 7)), IntegrityError
    if field == "signature (another key)":
        return replace(event, signature=identity("relay").sign(event.signed_bytes())), (
            IntegrityError
        )
    raise AssertionError(field)


EVENT_FIELDS = [
    "space_id", "seq", "prev", "kind", "actor", "at_us", "body (re-encoded)", "body (value)",
    "signature", "signature (another key)",
]  # fmt: skip
LOG_NAMES = [v["name"] for v in _log_events()]


def test_every_event_field_is_altered() -> None:
    signed = {f.name for f in dataclasses.fields(StateEvent)}
    assert {f.split(" ")[0] for f in EVENT_FIELDS} == signed
    assert set(OTHER_ACTOR) == set(LOG_NAMES)


@pytest.mark.parametrize("field", EVENT_FIELDS)
@pytest.mark.parametrize("index", range(len(LOG_NAMES)), ids=LOG_NAMES)
def test_altered_state_event_is_refused(index: int, field: str) -> None:
    chain = _chain()
    name, original = LOG_NAMES[index], chain[index]
    altered, error = _tamper(name, original, field)
    assert altered != original
    assert altered.hash() != original.hash()
    if not field.startswith("signature"):
        # Whatever the rules say, the stored signature no longer covers the bytes.
        assert altered.signed_bytes() != original.signed_bytes()
        with pytest.raises(IntegrityError):
            crypto.verify(
                _signer_key(_log_events()[index]), altered.signature, altered.signed_bytes()
            )
    if index == 0:
        with pytest.raises(error):
            SpaceState(altered)
    else:
        state = SpaceState.from_events(chain[:index])
        with pytest.raises(error):
            state.apply(altered)
        assert state.head_seq == index - 1 and state.head == original.prev  # unchanged
    with pytest.raises(error):
        SpaceState.from_events([*chain[:index], altered, *chain[index + 1 :]])


def _resign(event: StateEvent, signer: str) -> StateEvent:
    key: IdentityKeys | SpaceKeyPair = (
        space_pair(event.space_id) if signer == "space" else identity(signer)
    )
    return replace(event, signature=key.sign(event.signed_bytes()))


@pytest.mark.parametrize("index", range(len(LOG_NAMES) - 1), ids=LOG_NAMES[:-1])
def test_a_rewritten_event_breaks_the_chain_after_it(index: int) -> None:
    """Even re-signed by its rightful signer, a changed event has a new hash: the
    next event no longer follows it."""
    chain = list(_chain())
    signer = _log_events()[index]["signer"]
    rewritten = _resign(replace(chain[index], at_us=chain[index].at_us + 1), signer)
    chain[index] = rewritten
    state = SpaceState.from_events(chain[: index + 1])  # the rewrite itself is valid
    assert state.head == rewritten.hash() != _chain()[index].hash()
    with pytest.raises(StaleStateError):
        state.apply(chain[index + 1])
    with pytest.raises(StaleStateError):
        SpaceState.from_events(chain)


# --------------------------------------------------------------------------- genesis


@pytest.mark.parametrize("vector", vectors("genesis.json"), ids=lambda v: v["name"])
def test_genesis_vector(vector: dict[str, Any]) -> None:
    event = _check_event_bytes(vector)
    doc = load("genesis.json")
    assert vector["seq"] == 0 and vector["kind"] == "genesis" and vector["signer"] == "space"
    assert vector["prev_hex"] == doc["genesis_prev_hex"] == GENESIS_PREV.hex()
    assert vector["actor"] == vector["body"]["owner"]
    owner = identity(vector["body"]["owner"])
    assert (vector["body"]["signing_key"], vector["body"]["ecdh_key"]) == (
        owner.signing_key,
        owner.ecdh_key,
    )
    if vector["body"]["keeper"] is not None:
        keeper = identity(vector["body"]["keeper"])
        assert (vector["body"]["keeper_signing_key"], vector["body"]["keeper_ecdh_key"]) == (
            keeper.signing_key,
            keeper.ecdh_key,
        )
    rebuilt = _rebuilt(vector)
    assert rebuilt.signed_bytes() == event.signed_bytes()
    commitment = vector["key_commitment"]
    _check_commitment_vector(commitment)
    assert commitment["epoch"] == 0 and commitment["space_id"] == vector["space_id"]
    assert commitment["group_key_hex"] == vector["group_key_hex"]
    assert vector["body"]["key_commitment"] == commitment["key_commitment"]
    state = SpaceState(event)
    assert state.head == bytes.fromhex(vector["hash_hex"]) and state.head_seq == 0
    group_key = bytes.fromhex(vector["group_key_hex"])
    state.check_commitment(0, group_key)
    # Not signed by the owner: only the space key's signature makes a genesis.
    with pytest.raises(IntegrityError):
        crypto.verify(sig_key(owner.signing_key), event.signature, event.signed_bytes())


@pytest.mark.parametrize("vector", vectors("genesis.json"), ids=lambda v: v["name"])
def test_create_space_frame_vector(vector: dict[str, Any]) -> None:
    request = parse_client_frame(vector["frame"])
    assert isinstance(request, CreateSpace)
    assert request.to_json() == vector["frame"]
    assert request.genesis == _event_of(vector)
    state = SpaceState(request.genesis)
    alice = identity(vector["actor"])
    group_key = bytes.fromhex(vector["group_key_hex"])
    assert [k.recipient for k in request.keys] == [k["recipient"] for k in vector["keys"]]
    assert {k.recipient for k in request.keys} == set(state.members)  # owner (+ keeper)
    for wrapped, k in zip(request.keys, vector["keys"], strict=True):
        assert (wrapped.space_id, wrapped.epoch, wrapped.wrapper) == (
            vector["space_id"],
            0,
            k["wrapper"],
        )
        assert k["wrapper"] == vector["actor"]
        remade = wrap_group_key(
            group_key,
            space_id=vector["space_id"],
            epoch=0,
            recipient=k["recipient"],
            recipient_ecdh=decode_public_key(identity(k["recipient"]).ecdh_key, "dh"),
            wrapper=k["wrapper"],
            wrapper_identity=alice,
            ephemeral_scalar=bytes.fromhex(k["ephemeral_scalar_hex"]),
            iv=bytes.fromhex(k["iv_hex"]),
        )
        assert remade.blob.hex() == k["blob_hex"] == wrapped.blob.hex()
        assert remade.signed_bytes().hex() == k["signed_hex"] == wrapped.signed_bytes().hex()
        assert wrapped.signature.hex() == k["signature_hex"]
        key = unwrap_group_key(wrapped, identity(k["recipient"]), sig_key(alice.signing_key))
        assert key == group_key
        state.check_commitment(0, key)


@pytest.mark.parametrize("field", EVENT_FIELDS)
@pytest.mark.parametrize("vector", vectors("genesis.json"), ids=lambda v: v["name"])
def test_altered_genesis_is_refused(vector: dict[str, Any], field: str) -> None:
    original = _event_of(vector)
    altered, error = _tamper("genesis", original, field)
    if field == "body (value)":
        altered = _with_body(original, {"private": not vector["body"]["private"]})
    assert altered != original
    with pytest.raises(error):
        SpaceState(altered)


# --------------------------------------------------------------------------- auth

AUTH_FIELDS = ["nonce", "app_key", "username", "signing_key", "ecdh_key"]


def _auth_bytes(v: dict[str, Any]) -> bytes:
    return auth_signed_bytes(
        bytes.fromhex(v["nonce_hex"]), v["app_key"], v["username"], v["signing_key"], v["ecdh_key"]
    )


def test_auth_vector() -> None:
    (vector,) = vectors("auth.json")
    signed = _auth_bytes(vector)
    assert signed.hex() == vector["signed_hex"]
    crypto.verify(sig_key(vector["signing_key"]), bytes.fromhex(vector["signature_hex"]), signed)
    request = parse_client_frame(vector["frame"])
    assert request.to_json() == vector["frame"]
    assert json.loads(vector["frame"]) == {
        "t": "req",
        "op": "auth",
        "id": 1,
        "app_key": vector["app_key"],
        "username": vector["username"],
        "signing_key": vector["signing_key"],
        "ecdh_key": vector["ecdh_key"],
        "signature": b64e(bytes.fromhex(vector["signature_hex"])),
    }


@pytest.mark.parametrize("field", [*AUTH_FIELDS, "signature"])
def test_altered_auth_is_refused(field: str) -> None:
    (vector,) = vectors("auth.json")
    bob = named("identities.json", "bob")
    signature = bytes.fromhex(vector["signature_hex"])
    altered = dict(vector)
    if field == "nonce":
        altered["nonce_hex"] = flip(bytes.fromhex(vector["nonce_hex"]), 31).hex()
    elif field in ("signing_key", "ecdh_key"):
        altered[field] = bob[field]
    elif field == "signature":
        signature = flip(signature, 0)
    else:
        altered[field] = vector[field] + "x"
    with pytest.raises(IntegrityError):
        crypto.verify(sig_key(vector["signing_key"]), signature, _auth_bytes(altered))


# --------------------------------------------------------------------------- shard ticket


def test_ticket_vector() -> None:
    (vector,) = vectors("ticket.json")
    payload = canonical_json(
        {"exp": vector["expires_at_us"], "space_id": vector["space_id"], "user": vector["username"]}
    )
    assert payload.hex() == vector["payload_hex"]
    assert b64e(payload) == vector["payload_text"]
    signed = lp_encode("spacenb/v1/shard-ticket", payload)
    assert signed.hex() == vector["signed_hex"]
    assert (
        vector["ticket"]
        == f"{vector['payload_text']}.{b64e(bytes.fromhex(vector['signature_hex']))}"
    )
    ticket = verify_ticket(
        vector["ticket"],
        sig_key(vector["relay_signing_key"]),
        space_id=vector["space_id"],
        now_us=vector["expires_at_us"],
    )
    assert (ticket.space_id, ticket.username, ticket.expires_at_us) == (
        vector["space_id"],
        vector["username"],
        vector["expires_at_us"],
    )


@pytest.mark.parametrize("field", ["user", "space_id", "exp", "signature"])
def test_altered_ticket_is_refused(field: str) -> None:
    (vector,) = vectors("ticket.json")
    payload_text, signature_text = vector["ticket"].split(".")
    obj = json.loads(bytes.fromhex(vector["payload_hex"]))
    if field == "signature":
        signature_text = b64e(flip(b64d(signature_text), 10))
    else:
        obj[field] = obj[field] + 1 if field == "exp" else obj[field] + "x"
        payload_text = b64e(canonical_json(obj))
    with pytest.raises(IntegrityError):
        verify_ticket(
            f"{payload_text}.{signature_text}",
            sig_key(vector["relay_signing_key"]),
            space_id=obj["space_id"],
            now_us=0,
        )
