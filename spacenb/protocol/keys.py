"""Identity keys, space keys and their encodings.

A user has two P-256 keys: one signs (ECDSA), one agrees keys (ECDH). A space is a P-256
key pair too; its id is its encoded public key. Every public key has one binary form,
``version || suite || SEC1 compressed point`` (35 bytes), and one text form,
``<kind>.<base64url of the binary form>`` (PROTOCOL.md, "Keys").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..exceptions import InvalidKeyError, ProtocolError
from . import crypto
from .encoding import b64d, b64e, lp_encode

__all__ = [
    "KEY_VERSION",
    "SUITE_P256",
    "IdentityKeys",
    "LinkKeyPair",
    "PublicIdentity",
    "SpaceKeyPair",
    "check_public_key",
    "decode_public_key",
    "decode_space_id",
    "encode_public_key",
    "fingerprint",
    "scalar_from_seed",
]

KEY_VERSION = 1
SUITE_P256 = 1
KINDS = ("spc", "sig", "dh", "lnk")  # space id, identity signing, identity ECDH, invite link
_ENCODED_SIZE = 2 + crypto.POINT_SIZE


def encode_public_key(key: crypto.PublicKey, kind: str) -> str:
    """The text form of a public key: ``kind.`` + base64url(version, suite, point)."""
    if kind not in KINDS:
        raise ValueError(f"unknown key kind {kind!r}")
    raw = bytes([KEY_VERSION, SUITE_P256]) + crypto.public_key_to_point(key)
    return f"{kind}.{b64e(raw)}"


def decode_public_key(text: object, kind: str, *, field: str = "key") -> crypto.PublicKey:
    """Parse the text form of a public key of ``kind``.

    Raises :class:`InvalidKeyError` for a wrong kind, version or suite, or a point that is
    not on the curve.
    """
    raw = _key_bytes(text, kind, field)
    try:
        return crypto.public_key_from_point(raw[2:])
    except InvalidKeyError as exc:
        raise InvalidKeyError(exc.detail, field=field) from None


def check_public_key(text: object, kind: str, *, field: str = "key") -> str:
    """Check the text form of a public key of ``kind`` without decoding its point: its
    kind, base64url, length, version, suite and the compressed point's prefix (what a
    state event's keys must pass where it is checked; whether the point is on the curve
    is checked where the key is first used, PROTOCOL.md "Keys"). Returns the text;
    raises :class:`InvalidKeyError` as :func:`decode_public_key` does."""
    raw = _key_bytes(text, kind, field)
    if raw[2] not in (2, 3):
        raise InvalidKeyError("expected a 33-byte SEC1 compressed P-256 point", field=field)
    assert isinstance(text, str)
    return text


def _key_bytes(text: object, kind: str, field: str) -> bytes:
    """The binary form of a key text, its kind, length, version and suite checked."""
    if not isinstance(text, str) or "." not in text:
        raise InvalidKeyError(f"expected '{kind}.<base64url>'", field=field)
    prefix, _, body = text.partition(".")
    if prefix != kind:
        raise InvalidKeyError(f"expected a '{kind}' key, got '{prefix}'", field=field)
    try:
        raw = b64d(body, field=field)
    except ProtocolError as exc:
        raise InvalidKeyError(exc.detail, field=field) from None
    if len(raw) != _ENCODED_SIZE:
        raise InvalidKeyError(f"encoded key is {len(raw)} bytes, expected 35", field=field)
    if raw[0] != KEY_VERSION:
        raise InvalidKeyError(f"unsupported key version {raw[0]}", field=field)
    if raw[1] != SUITE_P256:
        raise InvalidKeyError(f"unsupported key suite {raw[1]}", field=field)
    return raw


def decode_space_id(space_id: object, *, field: str = "space_id") -> crypto.PublicKey:
    """The public key a space id encodes."""
    return decode_public_key(space_id, "spc", field=field)


def fingerprint(*public_keys: str) -> str:
    """A short, human-comparable digest of one or more encoded public keys.

    SHA-256 over the canonical encoding, first 16 bytes, as eight groups of four hex digits.
    """
    digest = crypto.sha256(lp_encode("spacenb/v1/fingerprint", *public_keys))[:16].hex()
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))


def scalar_from_seed(seed: bytes, label: str) -> bytes:
    """A valid P-256 private scalar derived from ``seed`` (for reproducible examples)."""
    wide = crypto.hkdf_sha256(seed, salt=b"spacenb/v1/seed", info=label.encode(), length=48)
    value = int.from_bytes(wide, "big") % (crypto.P256_ORDER - 1) + 1
    return value.to_bytes(32, "big")


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """A user's published keys, as the member directory holds them."""

    username: str
    signing_key: str  # "sig.…"
    ecdh_key: str  # "dh.…"

    def __post_init__(self) -> None:
        decode_public_key(self.signing_key, "sig", field="signing_key")
        decode_public_key(self.ecdh_key, "dh", field="ecdh_key")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.signing_key, self.ecdh_key)

    def signing_public_key(self) -> crypto.PublicKey:
        return decode_public_key(self.signing_key, "sig")

    def ecdh_public_key(self) -> crypto.PublicKey:
        return decode_public_key(self.ecdh_key, "dh")


_IDENTITY_PREFIX = "spacenb-identity-v1."


class IdentityKeys:
    """A user's private identity: an ECDSA signing key and an ECDH key (both P-256)."""

    __slots__ = ("_dh", "_sig", "ecdh_key", "signing_key")

    def __init__(self, signing: crypto.PrivateKey, ecdh: crypto.PrivateKey) -> None:
        self._sig = signing
        self._dh = ecdh
        self.signing_key = encode_public_key(signing.public_key(), "sig")
        self.ecdh_key = encode_public_key(ecdh.public_key(), "dh")

    @classmethod
    def generate(cls) -> IdentityKeys:
        return cls(crypto.generate_private_key(), crypto.generate_private_key())

    @classmethod
    def from_seed(cls, seed: bytes) -> IdentityKeys:
        """Deterministic keys from a seed: for test vectors and tutorials only."""
        return cls(
            crypto.private_key_from_bytes(scalar_from_seed(seed, "identity/sig")),
            crypto.private_key_from_bytes(scalar_from_seed(seed, "identity/dh")),
        )

    def to_bytes(self) -> bytes:
        """``version (1) || signing scalar (32) || ECDH scalar (32)``."""
        return (
            bytes([KEY_VERSION])
            + crypto.private_key_to_bytes(self._sig)
            + crypto.private_key_to_bytes(self._dh)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityKeys:
        if len(data) != 65 or data[0] != KEY_VERSION:
            raise InvalidKeyError("expected a 65-byte version-1 identity key blob")
        return cls(
            crypto.private_key_from_bytes(data[1:33]), crypto.private_key_from_bytes(data[33:])
        )

    def to_text(self) -> str:
        return _IDENTITY_PREFIX + b64e(self.to_bytes())

    @classmethod
    def from_text(cls, text: str) -> IdentityKeys:
        if not isinstance(text, str) or not text.startswith(_IDENTITY_PREFIX):
            raise InvalidKeyError(f"expected text starting with {_IDENTITY_PREFIX!r}")
        return cls.from_bytes(b64d(text[len(_IDENTITY_PREFIX) :], field="identity"))

    @classmethod
    def load_or_create(
        cls, read: Callable[[], str | None], write: Callable[[str], None]
    ) -> IdentityKeys:
        """The identity keys whose text (:meth:`to_text`) ``read`` returns, or, when it
        returns None (first use), new ones, whose text is handed to ``write`` to keep. The
        one identity loader: the keystore and the relay give it their own storage.

        Raises :class:`InvalidKeyError` if the text read is not identity keys; whatever
        ``read`` and ``write`` raise passes through.
        """
        text = read()
        if text is not None:
            return cls.from_text(text.strip())
        identity = cls.generate()
        write(identity.to_text() + "\n")
        return identity

    def public(self, username: str) -> PublicIdentity:
        return PublicIdentity(username, self.signing_key, self.ecdh_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.signing_key, self.ecdh_key)

    def sign(self, message: bytes) -> bytes:
        return crypto.sign(self._sig, message)

    def ecdh(self, peer: crypto.PublicKey) -> bytes:
        return crypto.ecdh(self._dh, peer)

    def __repr__(self) -> str:
        return f"IdentityKeys(fingerprint={self.fingerprint!r})"


class SpaceKeyPair:
    """A space's key pair. The space id is the encoded public key.

    The private key proves who created the space: the creation request is signed with it.
    """

    __slots__ = ("_key", "space_id")

    def __init__(self, key: crypto.PrivateKey) -> None:
        self._key = key
        self.space_id = encode_public_key(key.public_key(), "spc")

    @classmethod
    def generate(cls) -> SpaceKeyPair:
        return cls(crypto.generate_private_key())

    @classmethod
    def from_seed(cls, seed: bytes) -> SpaceKeyPair:
        return cls(crypto.private_key_from_bytes(scalar_from_seed(seed, "space")))

    def to_bytes(self) -> bytes:
        return crypto.private_key_to_bytes(self._key)

    @classmethod
    def from_bytes(cls, data: bytes) -> SpaceKeyPair:
        return cls(crypto.private_key_from_bytes(data))

    def sign(self, message: bytes) -> bytes:
        return crypto.sign(self._key, message)

    def __repr__(self) -> str:
        return f"SpaceKeyPair(space_id={self.space_id!r})"


class LinkKeyPair:
    """The key pair an invite-link token stands for (PROTOCOL.md, "Invite links").

    The state log records the public half (``lnk.…``); a redeemer proves it holds the token
    by signing with the private half, so the token itself never leaves its holders.
    """

    __slots__ = ("_key", "link_key")

    def __init__(self, key: crypto.PrivateKey) -> None:
        self._key = key
        self.link_key = encode_public_key(key.public_key(), "lnk")

    @classmethod
    def from_token_bytes(cls, secret: bytes) -> LinkKeyPair:
        return cls(crypto.private_key_from_bytes(scalar_from_seed(secret, "link")))

    def sign(self, message: bytes) -> bytes:
        return crypto.sign(self._key, message)

    def __repr__(self) -> str:
        return f"LinkKeyPair(link_key={self.link_key!r})"
