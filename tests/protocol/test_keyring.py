"""spacenb.protocol.keyring: epochs, policies and the rules for adding keys."""

from __future__ import annotations

import pytest

from spacenb.exceptions import KeyUnavailableError, ProtocolError
from spacenb.protocol.keyring import HISTORY_POLICIES, Keyring, check_policy

SPACE = "spc.example"
K0, K1, K2 = bytes([0] * 32), bytes([1] * 32), bytes([2] * 32)


def test_policies() -> None:
    assert HISTORY_POLICIES == ("static", "rotate")
    assert check_policy("static") == "static"
    assert check_policy("rotate") == "rotate"


@pytest.mark.parametrize("policy", ["", "Static", "ROTATE", None, 0, ["static"]])
def test_unknown_policy_is_refused(policy: object) -> None:
    with pytest.raises(ProtocolError):
        check_policy(policy)
    with pytest.raises(ProtocolError):
        Keyring(SPACE, policy)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", HISTORY_POLICIES)
def test_fresh_keyring_holds_a_random_epoch_0(policy: str) -> None:
    ring = Keyring.fresh(SPACE, policy)  # type: ignore[arg-type]
    assert ring.epochs == [0] and ring.current_epoch == 0 and len(ring) == 1
    assert len(ring.key(0)) == 32
    assert Keyring.fresh(SPACE, policy).key(0) != ring.key(0)  # type: ignore[arg-type]


def test_static_space_has_only_epoch_0() -> None:
    ring = Keyring(SPACE, "static", {0: K0})
    with pytest.raises(ProtocolError):
        ring.add(1, K1)
    with pytest.raises(ProtocolError):
        ring.mint_next()
    with pytest.raises(ProtocolError):
        Keyring(SPACE, "static", {3: K1})
    assert ring.epochs == [0]


def test_rotate_mints_the_next_epoch() -> None:
    ring = Keyring(SPACE, "rotate", {0: K0})
    assert ring.mint_next() == 1
    assert ring.mint_next() == 2
    assert ring.current_epoch == 2 and ring.epochs == [0, 1, 2]
    assert len({ring.key(0), ring.key(1), ring.key(2)}) == 3
    assert ring.key(0) == K0


def test_mint_on_an_empty_rotate_ring_starts_at_0() -> None:
    ring = Keyring(SPACE, "rotate")
    assert len(ring) == 0
    assert ring.mint_next() == 0


def test_newcomer_holds_only_later_epochs() -> None:
    ring = Keyring(SPACE, "rotate", {3: K1})
    assert ring.current_epoch == 3
    assert ring.has(3) and not ring.has(2)
    with pytest.raises(KeyUnavailableError, match="epoch 2"):
        ring.key(2)
    ring.add(5, K2)  # epochs need not be contiguous
    assert ring.epochs == [3, 5] and ring.current_epoch == 5
    assert ring.mint_next() == 6


def test_adding_the_same_key_again_is_harmless() -> None:
    ring = Keyring(SPACE, "rotate", {0: K0})
    ring.add(0, bytearray(K0))
    assert ring.key(0) == K0 and len(ring) == 1


def test_a_different_key_for_a_held_epoch_is_refused() -> None:
    ring = Keyring(SPACE, "rotate", {0: K0})
    with pytest.raises(ProtocolError, match="already held"):
        ring.add(0, K1)
    assert ring.key(0) == K0


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(31), bytes(33)])
def test_group_keys_are_32_bytes(key: bytes) -> None:
    with pytest.raises(ProtocolError):
        Keyring(SPACE, "rotate").add(0, key)


@pytest.mark.parametrize("epoch", [-1, "0", 1.0, None])
def test_epochs_are_non_negative_integers(epoch: object) -> None:
    with pytest.raises(ProtocolError):
        Keyring(SPACE, "rotate").add(epoch, K0)  # type: ignore[arg-type]


def test_empty_keyring_has_no_current_epoch() -> None:
    ring = Keyring(SPACE, "static")
    with pytest.raises(KeyUnavailableError):
        ring.current_epoch  # noqa: B018
    with pytest.raises(KeyUnavailableError):
        ring.key(0)


def test_items_are_sorted_and_repr_hides_keys() -> None:
    ring = Keyring(SPACE, "rotate", {2: K2, 0: K0, 1: K1})
    assert list(ring.items()) == [(0, K0), (1, K1), (2, K2)]
    text = repr(ring)
    assert SPACE in text and "[0, 1, 2]" in text
    assert K1.hex() not in text and repr(K1) not in text


def test_keys_are_copied_not_aliased() -> None:
    mutable = bytearray(K1)
    ring = Keyring(SPACE, "rotate")
    ring.add(0, mutable)
    mutable[0] = 9
    assert ring.key(0) == K1
