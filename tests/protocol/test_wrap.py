"""spacenb.protocol.wrap: handing a group key to one member (ECIES, signed by the wrapper)."""

from __future__ import annotations

import dataclasses

import pytest

from spacenb.exceptions import IntegrityError
from spacenb.protocol import crypto
from spacenb.protocol.encoding import lp_encode
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair, scalar_from_seed
from spacenb.protocol.wrap import WRAP_VERSION, WrappedKey, unwrap_group_key, wrap_group_key

ALICE = IdentityKeys.from_seed(b"alice")
BOB = IdentityKeys.from_seed(b"bob")
KEEPER = IdentityKeys.from_seed(b"keeper")
MALLORY = IdentityKeys.from_seed(b"mallory")
SPACE = SpaceKeyPair.from_seed(b"space").space_id
GROUP_KEY = bytes(range(32))


def pub(identity: IdentityKeys) -> crypto.PublicKey:
    return identity.public("x").signing_public_key()


def wrap(
    *,
    to: IdentityKeys = BOB,
    recipient: str = "bob",
    by: IdentityKeys = ALICE,
    wrapper: str = "alice",
    epoch: int = 0,
    **extra: bytes,
) -> WrappedKey:
    return wrap_group_key(
        GROUP_KEY,
        space_id=SPACE,
        epoch=epoch,
        recipient=recipient,
        recipient_ecdh=to.public(recipient).ecdh_public_key(),
        wrapper=wrapper,
        wrapper_identity=by,
        **extra,
    )


def test_wrap_and_unwrap() -> None:
    wrapped = wrap(epoch=4)
    assert (wrapped.space_id, wrapped.epoch, wrapped.recipient, wrapped.wrapper) == (
        SPACE,
        4,
        "bob",
        "alice",
    )
    assert len(wrapped.blob) == 94 and wrapped.blob[0] == WRAP_VERSION == 1
    assert len(wrapped.signature) == 64
    assert wrapped.signed_bytes() == lp_encode(
        "spacenb/v1/wrap-sig", SPACE, 4, "bob", "alice", wrapped.blob
    )
    assert unwrap_group_key(wrapped, BOB, pub(ALICE)) == GROUP_KEY


def test_wrapping_to_oneself() -> None:
    """How the creator and the keeper keep their own keys at rest."""
    wrapped = wrap(to=KEEPER, recipient="keeper", by=KEEPER, wrapper="keeper")
    assert unwrap_group_key(wrapped, KEEPER, pub(KEEPER)) == GROUP_KEY


def test_every_wrap_is_fresh() -> None:
    a, b = wrap(), wrap()
    assert a.blob[1:34] != b.blob[1:34]  # ephemeral point
    assert a.blob[34:46] != b.blob[34:46]  # IV
    assert unwrap_group_key(a, BOB, pub(ALICE)) == unwrap_group_key(b, BOB, pub(ALICE))


def test_fixed_ephemeral_and_iv_are_deterministic() -> None:
    extra = {"ephemeral_scalar": scalar_from_seed(b"e", "wrap"), "iv": bytes(12)}
    a, b = wrap(**extra), wrap(**extra)
    assert a.blob == b.blob
    eph = crypto.private_key_from_bytes(extra["ephemeral_scalar"])
    assert a.blob[1:34] == crypto.public_key_to_point(eph.public_key())
    assert a.blob[34:46] == bytes(12)


def test_wrap_signed_by_another_key_is_refused() -> None:
    """Mallory wraps a key of her choosing and claims the keeper did it."""
    forged = wrap(by=MALLORY, wrapper="keeper")
    with pytest.raises(IntegrityError):
        unwrap_group_key(forged, BOB, pub(KEEPER))
    # Mallory's own signature is fine, but the recipient checks the claimed wrapper's key.
    assert unwrap_group_key(forged, BOB, pub(MALLORY)) == GROUP_KEY


def test_wrap_for_someone_else_cannot_be_opened() -> None:
    wrapped = wrap(to=BOB, recipient="bob")
    with pytest.raises(IntegrityError):
        unwrap_group_key(wrapped, MALLORY, pub(ALICE))


def test_wrap_to_bobs_key_relabelled_for_mallory_fails() -> None:
    """The recipient's name is bound into the KDF label, not only the signature."""
    wrapped = wrap(to=BOB, recipient="bob")
    relabelled = dataclasses.replace(wrapped, recipient="mallory")
    resigned = dataclasses.replace(relabelled, signature=ALICE.sign(relabelled.signed_bytes()))
    with pytest.raises(IntegrityError):
        unwrap_group_key(resigned, BOB, pub(ALICE))


def test_unsigned_wrap_is_refused() -> None:
    wrapped = dataclasses.replace(wrap(), signature=b"")
    with pytest.raises(IntegrityError):
        unwrap_group_key(wrapped, BOB, pub(ALICE))


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        bytes(93),
        bytes(95),
        b"\x02" + bytes(93),  # version 2
        b"\x01\x04" + bytes(92),  # not a compressed point
        b"\x01\x02" + b"\xff" * 32 + bytes(60),  # x >= p
    ],
    ids=["empty", "93 bytes", "95 bytes", "version 2", "bad point prefix", "x out of range"],
)
def test_malformed_blob_signed_by_the_wrapper_is_refused(blob: bytes) -> None:
    unsigned = WrappedKey(SPACE, 0, "bob", "alice", blob)
    signed = dataclasses.replace(unsigned, signature=ALICE.sign(unsigned.signed_bytes()))
    with pytest.raises(IntegrityError):
        unwrap_group_key(signed, BOB, pub(ALICE))


def test_wrapped_key_repr_hides_signature() -> None:
    wrapped = wrap()
    assert wrapped.signature.hex() not in repr(wrapped)
