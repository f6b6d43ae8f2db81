"""The only module that touches ``cryptography.hazmat``.

Everything above it (envelopes, key wraps, files) is written against these few recipes:
P-256 keys, raw ``r || s`` ECDSA signatures, ECDH, HKDF-SHA256, AES-256-GCM and SHA-256.
Every verification failure raises the one opaque :class:`IntegrityError`. Each recipe
checks its own arguments (key and IV sizes, HKDF's output length, data lengths) and
raises :class:`UsageError` for a bad one, so nothing from below (a bare ``ValueError``,
``TypeError`` or ``OverflowError``) escapes.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..exceptions import IntegrityError, InvalidKeyError, UsageError

__all__ = [
    "AES_KEY_SIZE",
    "GCM_IV_SIZE",
    "GCM_TAG_SIZE",
    "MAX_AEAD_BYTES",
    "MAX_HKDF_LENGTH",
    "P256_ORDER",
    "POINT_SIZE",
    "SIGNATURE_SIZE",
    "PrivateKey",
    "PublicKey",
    "aead_open",
    "aead_seal",
    "ecdh",
    "generate_private_key",
    "hkdf_sha256",
    "private_key_from_bytes",
    "private_key_to_bytes",
    "public_key_from_point",
    "public_key_to_point",
    "random_bytes",
    "sha256",
    "sign",
    "verify",
]

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
SIGNATURE_SIZE = 64
POINT_SIZE = 33  # SEC1 compressed point
SCALAR_SIZE = 32
AES_KEY_SIZE = 32
GCM_IV_SIZE = 12
GCM_TAG_SIZE = 16
MAX_AEAD_BYTES = 2**31 - 1  # the most AES-GCM takes in one call (plaintext or AAD)
MAX_HKDF_LENGTH = 255 * 32  # RFC 5869: 255 blocks of SHA-256
_CURVE = ec.SECP256R1()
_ECDSA = ec.ECDSA(hashes.SHA256())


def _need_bytes(value: object, name: str) -> None:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise UsageError(f"expected bytes, got {type(value).__name__}", field=name)


def _need_size(value: bytes, size: int, name: str) -> None:
    _need_bytes(value, name)
    if len(value) != size:
        raise UsageError(f"must be {size} bytes, got {len(value)}", field=name)


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise UsageError("a byte count is a non-negative integer", field="n")
    return os.urandom(n)


def sha256(data: bytes) -> bytes:
    _need_bytes(data, "data")
    return hashlib.sha256(data).digest()


def generate_private_key() -> PrivateKey:
    """A fresh P-256 private key."""
    return ec.generate_private_key(_CURVE)


def private_key_to_bytes(key: PrivateKey) -> bytes:
    """The private scalar as 32 big-endian bytes."""
    return key.private_numbers().private_value.to_bytes(SCALAR_SIZE, "big")


def private_key_from_bytes(data: bytes) -> PrivateKey:
    """A P-256 private key from its 32-byte scalar (``1 <= d < n``)."""
    if len(data) != SCALAR_SIZE:
        raise InvalidKeyError(f"a P-256 private scalar is {SCALAR_SIZE} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if not 0 < value < P256_ORDER:
        raise InvalidKeyError("private scalar out of range")
    return ec.derive_private_key(value, _CURVE)


def public_key_to_point(key: PublicKey) -> bytes:
    """The SEC1 compressed point (33 bytes)."""
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


def public_key_from_point(data: bytes) -> PublicKey:
    """A P-256 public key from a SEC1 compressed point; rejects points not on the curve."""
    if len(data) != POINT_SIZE or data[0] not in (2, 3):
        raise InvalidKeyError("expected a 33-byte SEC1 compressed P-256 point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, data)
    except ValueError as exc:
        raise InvalidKeyError("not a point on the P-256 curve") from exc


def sign(key: PrivateKey, message: bytes) -> bytes:
    """ECDSA P-256/SHA-256 over ``message``, as 64 raw bytes ``r || s`` with low ``s``."""
    _need_bytes(message, "message")
    r, s = decode_dss_signature(key.sign(message, _ECDSA))
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(key: PublicKey, signature: bytes, message: bytes) -> None:
    """Check a raw ``r || s`` signature; raise :class:`IntegrityError` if it is not valid.

    Rejects wrong lengths, ``r`` or ``s`` outside ``[1, n-1]`` and high ``s`` (so every
    message has exactly one accepted signature per key and nonce).
    """
    _need_bytes(message, "message")
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_SIZE:
        raise IntegrityError("signature does not verify")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < P256_ORDER and 0 < s <= P256_ORDER // 2):
        raise IntegrityError("signature does not verify")
    try:
        key.verify(encode_dss_signature(r, s), message, _ECDSA)
    except InvalidSignature:
        raise IntegrityError("signature does not verify") from None


def ecdh(private: PrivateKey, public: PublicKey) -> bytes:
    """The raw ECDH shared secret (the x coordinate, 32 bytes)."""
    return private.exchange(ec.ECDH(), public)


def hkdf_sha256(secret: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``length`` bytes, 1 to 8160; :class:`UsageError` else."""
    for value, name in ((secret, "secret"), (salt, "salt"), (info, "info")):
        _need_bytes(value, name)
    if not isinstance(length, int) or isinstance(length, bool):
        raise UsageError("the output length is an integer", field="length")
    if not 1 <= length <= MAX_HKDF_LENGTH:
        raise UsageError(f"must be 1 to {MAX_HKDF_LENGTH} bytes, got {length}", field="length")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def _aead_arguments(key: bytes, iv: bytes, data: bytes | memoryview, aad: bytes) -> None:
    _need_size(key, AES_KEY_SIZE, "key")
    _need_bytes(iv, "iv")
    _need_bytes(data, "data")
    _need_bytes(aad, "aad")
    if len(data) > MAX_AEAD_BYTES or len(aad) > MAX_AEAD_BYTES:
        raise UsageError(f"AES-GCM takes at most {MAX_AEAD_BYTES} bytes at once", field="data")


def aead_seal(key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: ciphertext followed by the 16-byte tag. ``key`` is 32 bytes and ``iv``
    12 (a fresh one for every seal), else :class:`UsageError`."""
    _aead_arguments(key, iv, plaintext, aad)
    _need_size(iv, GCM_IV_SIZE, "iv")
    return _aesgcm(key).encrypt(iv, plaintext, aad)


_last_aead: tuple[bytes, AESGCM] | None = None


def _aesgcm(key: bytes) -> AESGCM:
    """The cipher for ``key``: the last one made is kept (messages of one epoch share a
    key), so that a run of seals or opens does not set up a cipher each."""
    global _last_aead
    last = _last_aead
    if last is not None and last[0] == key:
        return last[1]
    aead = AESGCM(key)
    if type(key) is bytes:  # (immutable: a bytearray could change under the cache)
        _last_aead = (key, aead)
    return aead


def aead_open(key: bytes, iv: bytes, ciphertext: bytes | memoryview, aad: bytes) -> bytes:
    """Undo :func:`aead_seal`; a wrong key, IV, AAD or tag raises :class:`IntegrityError`
    (an IV or ciphertext of the wrong size too: they come from the wire), a key that is
    not 32 bytes :class:`UsageError`."""
    _aead_arguments(key, iv, ciphertext, aad)
    if len(iv) != GCM_IV_SIZE or len(ciphertext) < GCM_TAG_SIZE:
        raise IntegrityError("ciphertext does not authenticate")
    try:
        return _aesgcm(key).decrypt(iv, ciphertext, aad)
    except InvalidTag:
        raise IntegrityError("ciphertext does not authenticate") from None
