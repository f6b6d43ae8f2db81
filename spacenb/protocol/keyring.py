"""A space's group keys: epoch → 32-byte AES-256 key, and the history policy.

``static`` spaces have one key (epoch 0) for their whole history. ``rotate`` spaces mint a
new key per epoch; a member holds only the epochs it was admitted to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from ..exceptions import KeyUnavailableError, ProtocolError
from . import crypto

__all__ = ["HISTORY_POLICIES", "HistoryPolicy", "Keyring", "check_policy"]

HistoryPolicy = Literal["static", "rotate"]
HISTORY_POLICIES: tuple[HistoryPolicy, ...] = ("static", "rotate")


def check_policy(policy: object) -> HistoryPolicy:
    """Return ``policy`` if it is a known history policy, else raise :class:`ProtocolError`."""
    if policy == "static":
        return "static"
    if policy == "rotate":
        return "rotate"
    raise ProtocolError(f"history policy must be 'static' or 'rotate', not {policy!r}")


class Keyring:
    """The group keys of one space that this member holds."""

    __slots__ = ("_keys", "policy", "space_id")

    def __init__(
        self, space_id: str, policy: HistoryPolicy, keys: Mapping[int, bytes] | None = None
    ) -> None:
        self.space_id = space_id
        self.policy = check_policy(policy)
        self._keys: dict[int, bytes] = {}
        for epoch, key in (keys or {}).items():
            self.add(epoch, key)

    @classmethod
    def fresh(cls, space_id: str, policy: HistoryPolicy) -> Keyring:
        """A keyring with a new random key for epoch 0."""
        return cls(space_id, policy, {0: crypto.random_bytes(crypto.AES_KEY_SIZE)})

    def add(self, epoch: int, key: bytes) -> None:
        """Hold ``key`` for ``epoch``. A different key for a held epoch is refused."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ProtocolError("epoch must be a non-negative integer")
        if len(key) != crypto.AES_KEY_SIZE:
            raise ProtocolError("a group key is 32 bytes")
        if self.policy == "static" and epoch != 0:
            raise ProtocolError("a static space has only epoch 0")
        held = self._keys.get(epoch)
        if held is not None and held != key:
            raise ProtocolError(f"a different key for epoch {epoch} is already held")
        self._keys[epoch] = bytes(key)

    def mint_next(self) -> int:
        """Add a fresh random key for the epoch after the current one; return that epoch."""
        if self.policy != "rotate":
            raise ProtocolError("only 'rotate' spaces have more than one epoch")
        epoch = self.current_epoch + 1 if self._keys else 0
        self._keys[epoch] = crypto.random_bytes(crypto.AES_KEY_SIZE)
        return epoch

    @property
    def current_epoch(self) -> int:
        """The newest epoch held (the one new messages are sealed under)."""
        if not self._keys:
            raise KeyUnavailableError(f"no group key held for space {self.space_id}")
        return max(self._keys)

    @property
    def epochs(self) -> list[int]:
        return sorted(self._keys)

    def key(self, epoch: int) -> bytes:
        """The key of ``epoch``; :class:`KeyUnavailableError` if it is not held."""
        try:
            return self._keys[epoch]
        except KeyError:
            raise KeyUnavailableError(
                f"no group key for epoch {epoch} of space {self.space_id}: "
                "this member was not admitted to that epoch"
            ) from None

    def has(self, epoch: int) -> bool:
        return epoch in self._keys

    def items(self) -> Iterable[tuple[int, bytes]]:
        return sorted(self._keys.items())

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Keyring(space_id={self.space_id!r}, policy={self.policy!r}, epochs={self.epochs})"
