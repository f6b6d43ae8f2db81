"""spacenb.protocol.crypto: the recipes over cryptography.hazmat."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from spacenb.exceptions import IntegrityError, InvalidKeyError, UsageError
from spacenb.protocol import crypto

from .p256 import N, P, x_without_a_point


@pytest.fixture(scope="module")
def key() -> crypto.PrivateKey:
    return crypto.private_key_from_bytes((12345).to_bytes(32, "big"))


def split(signature: bytes) -> tuple[int, int]:
    return int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")


def join(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# --------------------------------------------------------------------------- signatures


def test_sign_verify_round_trip(key: crypto.PrivateKey) -> None:
    signature = crypto.sign(key, b"message")
    assert len(signature) == crypto.SIGNATURE_SIZE == 64
    crypto.verify(key.public_key(), signature, b"message")
    crypto.verify(key.public_key(), bytearray(signature), b"message")


def test_signatures_are_always_low_s(key: crypto.PrivateKey) -> None:
    for i in range(64):  # a random high s turns up about every other signature
        r, s = split(crypto.sign(key, b"m%d" % i))
        assert 0 < r < N and 0 < s <= N // 2


def test_verify_rejects_other_message_and_other_key(key: crypto.PrivateKey) -> None:
    signature = crypto.sign(key, b"message")
    with pytest.raises(IntegrityError):
        crypto.verify(key.public_key(), signature, b"messagf")
    other = crypto.private_key_from_bytes((54321).to_bytes(32, "big"))
    with pytest.raises(IntegrityError):
        crypto.verify(other.public_key(), signature, b"message")


@pytest.mark.parametrize("size", [0, 1, 32, 63, 65, 72])
def test_verify_rejects_wrong_length(key: crypto.PrivateKey, size: int) -> None:
    signature = crypto.sign(key, b"m")
    wrong = (signature * 2)[:size]
    with pytest.raises(IntegrityError):
        crypto.verify(key.public_key(), wrong, b"m")


def test_verify_rejects_der_and_text(key: crypto.PrivateKey) -> None:
    der = key.sign(b"m", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(IntegrityError):
        crypto.verify(key.public_key(), der, b"m")
    with pytest.raises(IntegrityError):
        crypto.verify(key.public_key(), crypto.sign(key, b"m").hex(), b"m")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "reshape",
    [
        pytest.param(lambda r, s: (0, s), id="r=0"),
        pytest.param(lambda r, s: (r, 0), id="s=0"),
        pytest.param(lambda r, s: (N, s), id="r=n"),
        pytest.param(lambda r, s: (N + 1, s), id="r=n+1"),
        pytest.param(lambda r, s: (2**256 - 1, s), id="r=2^256-1"),
        pytest.param(lambda r, s: (r, N), id="s=n"),
        pytest.param(lambda r, s: (r, 2**256 - 1), id="s=2^256-1"),
    ],
)
def test_verify_rejects_out_of_range_scalars(
    key: crypto.PrivateKey, reshape: Callable[[int, int], tuple[int, int]]
) -> None:
    r, s = split(crypto.sign(key, b"m"))
    with pytest.raises(IntegrityError):
        crypto.verify(key.public_key(), join(*reshape(r, s)), b"m")


def test_verify_rejects_high_s_twin(key: crypto.PrivateKey) -> None:
    """(r, n - s) is the same signature re-shaped: valid ECDSA, refused by spacenb."""
    r, s = split(crypto.sign(key, b"m"))
    twin = (r, N - s)
    # The twin is a mathematically valid ECDSA signature (plain verification accepts it)...
    key.public_key().verify(encode_dss_signature(*twin), b"m", ec.ECDSA(hashes.SHA256()))
    # ...so only the low-s rule stops a second valid encoding of the same signature.
    with pytest.raises(IntegrityError):
        crypto.verify(key.public_key(), join(*twin), b"m")


# --------------------------------------------------------------------------- keys


def test_private_key_round_trip(key: crypto.PrivateKey) -> None:
    raw = crypto.private_key_to_bytes(key)
    assert len(raw) == 32 and int.from_bytes(raw, "big") == 12345
    again = crypto.private_key_from_bytes(raw)
    assert crypto.public_key_to_point(again.public_key()) == crypto.public_key_to_point(
        key.public_key()
    )


@pytest.mark.parametrize(
    "raw",
    [b"", bytes(31), bytes(33), bytes(32), N.to_bytes(32, "big"), b"\xff" * 32],
    ids=["empty", "31 bytes", "33 bytes", "zero", "n", "2^256-1"],
)
def test_private_key_from_bytes_rejects(raw: bytes) -> None:
    with pytest.raises(InvalidKeyError):
        crypto.private_key_from_bytes(raw)


def test_private_key_accepts_n_minus_1() -> None:
    crypto.private_key_from_bytes((N - 1).to_bytes(32, "big"))


def test_generated_keys_differ() -> None:
    a, b = crypto.generate_private_key(), crypto.generate_private_key()
    assert crypto.private_key_to_bytes(a) != crypto.private_key_to_bytes(b)


def test_public_point_round_trip(key: crypto.PrivateKey) -> None:
    point = crypto.public_key_to_point(key.public_key())
    assert len(point) == crypto.POINT_SIZE and point[0] in (2, 3)
    assert crypto.public_key_to_point(crypto.public_key_from_point(point)) == point


def test_public_key_from_point_rejects_x_with_no_y() -> None:
    x = x_without_a_point()
    for prefix in (b"\x02", b"\x03"):
        with pytest.raises(InvalidKeyError):
            crypto.public_key_from_point(prefix + x.to_bytes(32, "big"))


@pytest.mark.parametrize(
    "point",
    [
        b"",
        b"\x02" + bytes(31),
        b"\x02" + bytes(33),
        b"\x04" + bytes(32),  # uncompressed prefix with a compressed length
        b"\x00" + bytes(32),  # the point at infinity is not a public key
        b"\x02" + P.to_bytes(32, "big"),  # x = p is not a field element
        b"\x03" + b"\xff" * 32,
    ],
    ids=["empty", "too short", "too long", "prefix 04", "prefix 00", "x=p", "x=2^256-1"],
)
def test_public_key_from_point_rejects_malformed(point: bytes) -> None:
    with pytest.raises(InvalidKeyError):
        crypto.public_key_from_point(point)


def test_public_key_from_point_rejects_uncompressed_form(key: crypto.PrivateKey) -> None:
    full = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    with pytest.raises(InvalidKeyError):
        crypto.public_key_from_point(full)


# --------------------------------------------------------------------------- ECDH, KDF, hash


def test_ecdh_agrees() -> None:
    a, b = crypto.generate_private_key(), crypto.generate_private_key()
    shared = crypto.ecdh(a, b.public_key())
    assert len(shared) == 32
    assert shared == crypto.ecdh(b, a.public_key())


def test_hkdf_rfc5869_case_1() -> None:
    okm = crypto.hkdf_sha256(
        bytes([0x0B] * 22), salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_sha256() -> None:
    assert crypto.sha256(b"abc") == hashlib.sha256(b"abc").digest()
    assert crypto.sha256(b"abc").hex().startswith("ba7816bf")


def test_random_bytes() -> None:
    assert len(crypto.random_bytes(12)) == 12
    assert crypto.random_bytes(16) != crypto.random_bytes(16)


# --------------------------------------------------------------------------- AEAD

AEAD_KEY = bytes(range(32))
IV = bytes(12)


def test_aead_round_trip() -> None:
    sealed = crypto.aead_seal(AEAD_KEY, IV, b"plaintext", b"aad")
    assert len(sealed) == len(b"plaintext") + crypto.GCM_TAG_SIZE
    assert crypto.aead_open(AEAD_KEY, IV, sealed, b"aad") == b"plaintext"


@pytest.mark.parametrize(
    ("key", "iv", "tamper", "aad"),
    [
        (bytes(32), IV, None, b"aad"),  # wrong key
        (AEAD_KEY, b"\x01" + bytes(11), None, b"aad"),  # wrong IV
        (AEAD_KEY, IV, None, b"aaD"),  # wrong associated data
        (AEAD_KEY, IV, 0, b"aad"),  # ciphertext bit
        (AEAD_KEY, IV, -1, b"aad"),  # tag bit
        (AEAD_KEY, bytes(8), None, b"aad"),  # short IV
        (AEAD_KEY, bytes(16), None, b"aad"),  # long IV
    ],
    ids=["key", "iv", "aad", "ciphertext", "tag", "short iv", "long iv"],
)
def test_aead_open_refuses(key: bytes, iv: bytes, tamper: int | None, aad: bytes) -> None:
    sealed = bytearray(crypto.aead_seal(AEAD_KEY, IV, b"plaintext", b"aad"))
    if tamper is not None:
        sealed[tamper] ^= 1
    with pytest.raises(IntegrityError):
        crypto.aead_open(key, iv, bytes(sealed), aad)


@pytest.mark.parametrize("size", [0, 1, 15])
def test_aead_open_refuses_shorter_than_a_tag(size: int) -> None:
    with pytest.raises(IntegrityError):
        crypto.aead_open(AEAD_KEY, IV, bytes(size), b"")


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: crypto.aead_seal(bytes(31), bytes(12), b"p", b""), "key"),
        (lambda: crypto.aead_seal(bytes(33), bytes(12), b"p", b""), "key"),
        (lambda: crypto.aead_seal(bytes(32), bytes(11), b"p", b""), "iv"),
        (lambda: crypto.aead_seal(bytes(32), bytes(16), b"p", b""), "iv"),
        (lambda: crypto.aead_seal(bytes(32), bytes(12), "text", b""), "data"),
        (lambda: crypto.aead_seal(bytes(32), bytes(12), b"p", None), "aad"),
        (lambda: crypto.aead_open(bytes(16), bytes(12), bytes(32), b""), "key"),
        (lambda: crypto.hkdf_sha256(b"s", salt=b"", info=b"", length=0), "length"),
        (lambda: crypto.hkdf_sha256(b"s", salt=b"", info=b"", length=255 * 32 + 1), "length"),
        (lambda: crypto.hkdf_sha256(b"s", salt=b"", info=b"", length=2.0), "length"),
        (lambda: crypto.hkdf_sha256("s", salt=b"", info=b""), "secret"),
        (lambda: crypto.random_bytes(-1), "n"),
        (lambda: crypto.sha256("text"), "data"),
    ],
)
def test_bad_arguments_are_usage_errors(call: Callable[[], object], field: str) -> None:
    """Each recipe checks its own arguments: a bad one is a spacenb ``UsageError`` (also a
    ``ValueError``) naming it, never a bare ``ValueError``, ``TypeError`` or
    ``OverflowError`` from the library below."""
    with pytest.raises(UsageError) as info:
        call()
    assert info.value.field == field and isinstance(info.value, ValueError)


def test_aead_open_of_a_bad_iv_from_the_wire_is_an_integrity_error() -> None:
    key = bytes(32)
    sealed = crypto.aead_seal(key, bytes(12), b"p", b"")
    for iv in (bytes(11), bytes(13), bytes(256 << 10)):
        with pytest.raises(IntegrityError):
            crypto.aead_open(key, iv, sealed, b"")
    assert crypto.hkdf_sha256(b"s", salt=b"", info=b"", length=255 * 32) != b""
