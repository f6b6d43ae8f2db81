"""spacenb.protocol.keys: key encodings, identities, space keys, fingerprints."""

from __future__ import annotations

import re

import pytest

from spacenb.exceptions import InvalidKeyError, ProtocolError
from spacenb.protocol import crypto
from spacenb.protocol.encoding import b64d, b64e, lp_encode
from spacenb.protocol.keys import (
    IdentityKeys,
    PublicIdentity,
    SpaceKeyPair,
    decode_public_key,
    decode_space_id,
    encode_public_key,
    fingerprint,
    scalar_from_seed,
)

from .p256 import P, x_without_a_point

ALICE = IdentityKeys.from_seed(b"alice")
BOB = IdentityKeys.from_seed(b"bob")
FINGERPRINT = re.compile(r"^([0-9a-f]{4} ){7}[0-9a-f]{4}$")


def reencode(text: str, raw: bytes) -> str:
    return text.partition(".")[0] + "." + b64e(raw)


def raw_of(text: str) -> bytes:
    return b64d(text.partition(".")[2])


# --------------------------------------------------------------------------- public keys


@pytest.mark.parametrize("kind", ["spc", "sig", "dh"])
def test_public_key_round_trip(kind: str) -> None:
    key = crypto.generate_private_key().public_key()
    text = encode_public_key(key, kind)
    assert text.startswith(kind + ".")
    raw = raw_of(text)
    assert len(raw) == 35 and raw[:2] == b"\x01\x01"
    assert raw[2:] == crypto.public_key_to_point(key)
    assert crypto.public_key_to_point(decode_public_key(text, kind)) == raw[2:]


def test_encode_refuses_unknown_kind() -> None:
    with pytest.raises(ValueError):
        encode_public_key(ALICE.public("alice").signing_public_key(), "rsa")


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (ALICE.signing_key, "dh"),  # a signing key where an ECDH key is expected
        (ALICE.ecdh_key, "sig"),
        (ALICE.signing_key, "spc"),
        ("SIG" + ALICE.signing_key[3:], "sig"),  # kinds are case-sensitive
        (ALICE.signing_key.partition(".")[2], "sig"),  # no kind at all
        ("", "sig"),
        (".", "sig"),
        ("sig.", "sig"),
    ],
)
def test_decode_rejects_wrong_kind_or_shape(text: str, kind: str) -> None:
    with pytest.raises(InvalidKeyError):
        decode_public_key(text, kind)


@pytest.mark.parametrize("value", [None, 7, b"sig.AAAA", ["sig.x"]])
def test_decode_rejects_non_text(value: object) -> None:
    with pytest.raises(InvalidKeyError):
        decode_public_key(value, "sig")


def _variant(name: str) -> bytes:
    raw = raw_of(ALICE.signing_key)
    return {
        "version 0": b"\x00" + raw[1:],
        "version 2": b"\x02" + raw[1:],
        "suite 0": raw[:1] + b"\x00" + raw[2:],
        "suite 2": raw[:1] + b"\x02" + raw[2:],
        "34 bytes": raw[:-1],
        "36 bytes": raw + b"\x00",
        "empty": b"",
        "uncompressed prefix": raw[:2] + b"\x04" + raw[3:],
        "x with no y": raw[:2] + b"\x02" + x_without_a_point().to_bytes(32, "big"),
        "x = p": raw[:2] + b"\x03" + P.to_bytes(32, "big"),
    }[name]


@pytest.mark.parametrize(
    "variant",
    [
        "version 0",
        "version 2",
        "suite 0",
        "suite 2",
        "34 bytes",
        "36 bytes",
        "empty",
        "uncompressed prefix",
        "x with no y",
        "x = p",
    ],
)
def test_decode_rejects_bad_binary_form(variant: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        decode_public_key(reencode(ALICE.signing_key, _variant(variant)), "sig", field="who")
    assert info.value.field == "who"


@pytest.mark.parametrize("body", ["AQE=", "AQE+", "AQE ", "AQF"])
def test_decode_rejects_bad_base64_as_invalid_key(body: str) -> None:
    with pytest.raises(InvalidKeyError):
        decode_public_key("sig." + body, "sig")


def test_decode_rejects_non_canonical_base64() -> None:
    text = ALICE.signing_key
    # 35 bytes = 46 full characters + 1 holding 2 bits and 4 zero bits: set one.
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(text[-1])
    tweaked = (
        text[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last | 1]
    )
    assert tweaked != text
    with pytest.raises(InvalidKeyError):
        decode_public_key(tweaked, "sig")


def test_invalid_key_error_is_a_protocol_error() -> None:
    assert issubclass(InvalidKeyError, ProtocolError)
    assert InvalidKeyError.code == "bad_key"


def test_decode_space_id() -> None:
    pair = SpaceKeyPair.from_seed(b"space")
    decode_space_id(pair.space_id)
    with pytest.raises(InvalidKeyError) as info:
        decode_space_id(ALICE.signing_key)
    assert info.value.field == "space_id"


# --------------------------------------------------------------------------- fingerprints


def test_fingerprint_matches_the_definition() -> None:
    keys = (ALICE.signing_key, ALICE.ecdh_key)
    digest = crypto.sha256(lp_encode("spacenb/v1/fingerprint", *keys))[:16].hex()
    assert fingerprint(*keys) == " ".join(digest[i : i + 4] for i in range(0, 32, 4))
    assert FINGERPRINT.match(fingerprint(*keys))
    assert ALICE.fingerprint == fingerprint(*keys) == ALICE.public("alice").fingerprint


def test_fingerprint_depends_on_every_key_and_their_order() -> None:
    assert fingerprint(ALICE.signing_key, ALICE.ecdh_key) != fingerprint(
        ALICE.ecdh_key, ALICE.signing_key
    )
    assert fingerprint(ALICE.signing_key, ALICE.ecdh_key) != fingerprint(
        ALICE.signing_key, BOB.ecdh_key
    )
    assert fingerprint(ALICE.signing_key) != fingerprint(ALICE.signing_key, ALICE.ecdh_key)


# --------------------------------------------------------------------------- seeds


def test_scalar_from_seed_matches_the_definition() -> None:
    wide = crypto.hkdf_sha256(b"seed", salt=b"spacenb/v1/seed", info=b"identity/sig", length=48)
    expected = int.from_bytes(wide, "big") % (crypto.P256_ORDER - 1) + 1
    assert scalar_from_seed(b"seed", "identity/sig") == expected.to_bytes(32, "big")


def test_scalar_from_seed_separates_labels_and_seeds() -> None:
    scalars = {
        scalar_from_seed(seed, label)
        for seed in (b"a", b"b", b"")
        for label in ("identity/sig", "identity/dh", "space")
    }
    assert len(scalars) == 9
    for scalar in scalars:
        assert 0 < int.from_bytes(scalar, "big") < crypto.P256_ORDER


# --------------------------------------------------------------------------- identities


def test_identity_from_seed_is_deterministic() -> None:
    again = IdentityKeys.from_seed(b"alice")
    assert (again.signing_key, again.ecdh_key) == (ALICE.signing_key, ALICE.ecdh_key)
    assert ALICE.signing_key != BOB.signing_key
    assert ALICE.signing_key.partition(".")[2] != ALICE.ecdh_key.partition(".")[2]


def test_identity_private_blob_layout() -> None:
    blob = ALICE.to_bytes()
    assert len(blob) == 65 and blob[0] == 1
    assert blob[1:33] == scalar_from_seed(b"alice", "identity/sig")
    assert blob[33:] == scalar_from_seed(b"alice", "identity/dh")
    again = IdentityKeys.from_bytes(blob)
    assert (again.signing_key, again.ecdh_key) == (ALICE.signing_key, ALICE.ecdh_key)


def test_identity_text_round_trip() -> None:
    text = ALICE.to_text()
    assert text.startswith("spacenb-identity-v1.")
    again = IdentityKeys.from_text(text)
    assert again.to_bytes() == ALICE.to_bytes()


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        bytes(64),
        b"\x01" + bytes(65),
        b"\x02" + ALICE.to_bytes()[1:],
        b"\x01" + bytes(32) + ALICE.to_bytes()[33:],  # zero signing scalar
        b"\x01" + ALICE.to_bytes()[1:33] + b"\xff" * 32,  # ECDH scalar >= n
    ],
    ids=["empty", "64 bytes", "66 bytes", "version 2", "zero scalar", "scalar >= n"],
)
def test_identity_from_bytes_rejects(blob: bytes) -> None:
    with pytest.raises(InvalidKeyError):
        IdentityKeys.from_bytes(blob)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "spacenb-identity-v2." + b64e(ALICE.to_bytes()),
        b64e(ALICE.to_bytes()),
        "spacenb-identity-v1." + b64e(ALICE.to_bytes()) + "=",
        "spacenb-identity-v1." + b64e(ALICE.to_bytes()[:-1]),
    ],
)
def test_identity_from_text_rejects(text: str) -> None:
    with pytest.raises(ProtocolError):
        IdentityKeys.from_text(text)


def test_identity_signs_and_agrees() -> None:
    public = ALICE.public("alice")
    assert public == PublicIdentity("alice", ALICE.signing_key, ALICE.ecdh_key)
    crypto.verify(public.signing_public_key(), ALICE.sign(b"m"), b"m")
    assert ALICE.ecdh(BOB.public("bob").ecdh_public_key()) == BOB.ecdh(public.ecdh_public_key())


def test_identity_repr_shows_no_secret() -> None:
    text = repr(ALICE)
    assert ALICE.fingerprint in text
    assert ALICE.to_text().partition(".")[2] not in text
    assert ALICE.to_bytes()[1:33].hex() not in text


def test_generated_identities_differ() -> None:
    assert IdentityKeys.generate().signing_key != IdentityKeys.generate().signing_key


def test_public_identity_checks_its_keys() -> None:
    with pytest.raises(InvalidKeyError) as info:
        PublicIdentity("alice", ALICE.ecdh_key, ALICE.signing_key)  # swapped
    assert info.value.field == "signing_key"
    with pytest.raises(InvalidKeyError) as info:
        PublicIdentity("alice", ALICE.signing_key, "dh.AAAA")
    assert info.value.field == "ecdh_key"


# --------------------------------------------------------------------------- space keys


def test_space_key_pair() -> None:
    pair = SpaceKeyPair.from_seed(b"space")
    assert pair.space_id.startswith("spc.")
    assert pair.to_bytes() == scalar_from_seed(b"space", "space")
    assert SpaceKeyPair.from_bytes(pair.to_bytes()).space_id == pair.space_id
    crypto.verify(decode_space_id(pair.space_id), pair.sign(b"m"), b"m")
    assert pair.space_id in repr(pair)
    assert SpaceKeyPair.generate().space_id != SpaceKeyPair.generate().space_id
    with pytest.raises(InvalidKeyError):
        SpaceKeyPair.from_bytes(bytes(32))


def test_load_or_create_makes_keys_once_then_reads_them() -> None:
    kept: list[str] = []
    made = IdentityKeys.load_or_create(lambda: kept[0] if kept else None, kept.append)
    assert len(kept) == 1 and kept[0].endswith("\n")
    again = IdentityKeys.load_or_create(lambda: kept[0], kept.append)
    assert (again.to_text(), len(kept)) == (made.to_text(), 1)
    with pytest.raises(InvalidKeyError):
        IdentityKeys.load_or_create(lambda: "not identity keys", kept.append)
