"""Wrapping a group key for one member (ECIES over P-256; PROTOCOL.md, "Key wrapping").

An ephemeral P-256 key agrees a secret with the recipient's identity ECDH key; HKDF-SHA256
with a label binding protocol version, space, epoch and recipient derives an AES-256-GCM
key that seals the group key. The member who wraps signs the result, so the recipient can
refuse a key that was not wrapped by someone it trusts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from ..exceptions import IntegrityError
from . import crypto
from .codec import Size
from .encoding import lp_encode
from .keys import IdentityKeys, decode_public_key

__all__ = ["WRAP_VERSION", "WrappedKey", "unwrap_group_key", "wrap_group_key"]

WRAP_VERSION = 1
_BLOB_SIZE = 1 + crypto.POINT_SIZE + crypto.GCM_IV_SIZE + crypto.AES_KEY_SIZE + crypto.GCM_TAG_SIZE


def _info(space_id: str, epoch: int, recipient: str) -> bytes:
    return lp_encode("spacenb/v1/wrap", space_id, epoch, recipient)


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """One group key, wrapped for one recipient, signed by the member who wrapped it.

    ``blob`` is ``version (1) || ephemeral point (33) || iv (12) || ciphertext+tag (48)``.
    """

    space_id: str
    epoch: int
    recipient: str
    wrapper: str
    blob: Annotated[bytes, Size(_BLOB_SIZE)]
    signature: Annotated[bytes, Size(crypto.SIGNATURE_SIZE)] = field(default=b"", repr=False)

    def signed_bytes(self) -> bytes:
        return lp_encode(
            "spacenb/v1/wrap-sig", self.space_id, self.epoch, self.recipient, self.wrapper,
            self.blob,
        )  # fmt: skip


def wrap_group_key(
    group_key: bytes,
    *,
    space_id: str,
    epoch: int,
    recipient: str,
    recipient_ecdh: crypto.PublicKey,
    wrapper: str,
    wrapper_identity: IdentityKeys,
    ephemeral_scalar: bytes | None = None,
    iv: bytes | None = None,
) -> WrappedKey:
    """Wrap ``group_key`` for ``recipient``. ``ephemeral_scalar``/``iv`` are for vectors."""
    eph = (
        crypto.private_key_from_bytes(ephemeral_scalar)
        if ephemeral_scalar is not None
        else crypto.generate_private_key()
    )
    eph_point = crypto.public_key_to_point(eph.public_key())
    recipient_point = crypto.public_key_to_point(recipient_ecdh)
    info = _info(space_id, epoch, recipient)
    kek = crypto.hkdf_sha256(
        crypto.ecdh(eph, recipient_ecdh), salt=eph_point + recipient_point, info=info
    )
    nonce = iv if iv is not None else crypto.random_bytes(crypto.GCM_IV_SIZE)
    blob = bytes([WRAP_VERSION]) + eph_point + nonce + crypto.aead_seal(kek, nonce, group_key, info)
    unsigned = WrappedKey(space_id, epoch, recipient, wrapper, blob)
    return WrappedKey(
        space_id, epoch, recipient, wrapper, blob, wrapper_identity.sign(unsigned.signed_bytes())
    )


def unwrap_group_key(
    wrapped: WrappedKey, recipient_identity: IdentityKeys, wrapper_signing: crypto.PublicKey
) -> bytes:
    """Check the wrapper's signature, then recover the group key.

    Raises :class:`IntegrityError` if the signature, the layout or the AEAD tag is wrong.
    """
    crypto.verify(wrapper_signing, wrapped.signature, wrapped.signed_bytes())
    blob = wrapped.blob
    if len(blob) != _BLOB_SIZE or blob[0] != WRAP_VERSION:
        raise IntegrityError("wrapped key does not verify")
    eph_point = blob[1 : 1 + crypto.POINT_SIZE]
    nonce = blob[1 + crypto.POINT_SIZE : 1 + crypto.POINT_SIZE + crypto.GCM_IV_SIZE]
    sealed = blob[1 + crypto.POINT_SIZE + crypto.GCM_IV_SIZE :]
    try:
        eph_pub = crypto.public_key_from_point(eph_point)
    except ValueError:
        raise IntegrityError("wrapped key does not verify") from None
    recipient_point = crypto.public_key_to_point(
        decode_public_key(recipient_identity.ecdh_key, "dh")
    )
    info = _info(wrapped.space_id, wrapped.epoch, wrapped.recipient)
    kek = crypto.hkdf_sha256(
        recipient_identity.ecdh(eph_pub), salt=eph_point + recipient_point, info=info
    )
    return crypto.aead_open(kek, nonce, sealed, info)
