"""Where a user's identity keys, group keys and pinned identities live between sessions.

A keystore is a directory (default ``$SPACENB_HOME`` or ``~/.spacenb``) or ``":memory:"``.
Layout under ``<root>/<username>/``: ``keystore.json`` (``{"version": 2}``),
``identity.key``, ``pins.json`` (the identity keys pinned for other users and the space id
pinned for each channel name, on first sight) and ``spaces/<digest>.json`` (a space's
keys, the newest state-log event verified, and the replay marks). Files are written
atomically and readable by the owner only (:mod:`spacenb.privatefile`).

A keystore written by protocol v1 (an ``identity.key`` with no ``keystore.json``) is
refused with :class:`UnsupportedVersionError`, and nothing in it is changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..exceptions import ProtocolError, UnsupportedVersionError
from ..privatefile import write_private
from ..protocol.encoding import b64d, b64e
from ..protocol.keyring import HistoryPolicy, Keyring
from ..protocol.keys import IdentityKeys, SpaceKeyPair

__all__ = ["KEYSTORE_VERSION", "Keystore", "Pin", "SpaceSecrets", "default_keystore_root"]

KEYSTORE_VERSION = 2


def default_keystore_root() -> Path:
    """``$SPACENB_HOME``, else ``~/.spacenb``."""
    env = os.environ.get("SPACENB_HOME")
    return Path(env) if env else Path.home() / ".spacenb"


@dataclass
class SpaceSecrets:
    """What a member keeps of one space: its keyring, for the creator the space key, the
    newest state-log event it verified (``log_head``: seq and hash) and its replay marks
    (``"sender/sid"`` → newest ``(handle, seq)`` delivered)."""

    keyring: Keyring
    space_key: SpaceKeyPair | None = None
    log_head: tuple[int, bytes] | None = None
    marks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "space_id": self.keyring.space_id,
                "policy": self.keyring.policy,
                "keys": {str(e): b64e(k) for e, k in self.keyring.items()},
                "space_key": b64e(self.space_key.to_bytes()) if self.space_key else None,
                "log_head": ([self.log_head[0], b64e(self.log_head[1])] if self.log_head else None),
                "marks": {k: list(v) for k, v in self.marks.items()},
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> SpaceSecrets:
        obj = json.loads(text)
        keyring = Keyring(
            obj["space_id"],
            obj["policy"],
            {int(e): b64d(k, field="keys") for e, k in obj["keys"].items()},
        )
        key = obj.get("space_key")
        head = obj["log_head"]
        return cls(
            keyring,
            SpaceKeyPair.from_bytes(b64d(key, field="space_key")) if key else None,
            (int(head[0]), b64d(head[1], field="log_head")) if head else None,
            {k: (int(v[0]), int(v[1])) for k, v in obj["marks"].items()},
        )


@dataclass(frozen=True, slots=True)
class Pin:
    """Identity keys pinned for a user on first sight."""

    signing_key: str
    ecdh_key: str
    first_seen_us: int
    verified: bool = False


class Keystore:
    """One user's secrets, on disk or in memory."""

    def __init__(self, location: str | os.PathLike[str] | None, username: str) -> None:
        self.username = username
        self.in_memory = location == ":memory:"
        self._memory: dict[str, str] = {}
        root = None if self.in_memory else Path(location or default_keystore_root())
        self.root = root / username if root is not None else None
        self._check_version()

    def _check_version(self) -> None:
        if self.root is None:
            return
        marker = self._read("keystore.json")
        if marker is None:
            if (self.root / "identity.key").exists():
                raise UnsupportedVersionError(
                    f"the keystore {self.root} was written by spacenb protocol v1 (it has no "
                    "keystore.json); this spacenb (protocol v2) does not read it. Move it "
                    "aside, or use another keystore= / SPACENB_HOME (nothing was changed)"
                )
            return
        try:
            version = json.loads(marker)["version"]
        except (ValueError, KeyError, TypeError):
            version = None
        if version != KEYSTORE_VERSION:
            raise UnsupportedVersionError(
                f"the keystore {self.root} has version {version!r}; this spacenb reads "
                f"version {KEYSTORE_VERSION} only (nothing was changed)"
            )

    def _read(self, rel: str) -> str | None:
        if self.root is None:
            return self._memory.get(rel)
        try:
            return (self.root / rel).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def _write(self, rel: str, text: str) -> None:
        if self.root is None:
            self._memory[rel] = text
        else:
            write_private(self.root / rel, text)

    def load_or_create_identity(self) -> IdentityKeys:
        """The user's identity keys; created (and saved) on first use."""
        return IdentityKeys.load_or_create(lambda: self._read("identity.key"), self._create)

    def _create(self, identity_text: str) -> None:
        self._write("keystore.json", json.dumps({"version": KEYSTORE_VERSION}) + "\n")
        self._write("identity.key", identity_text)

    # -- pins

    def load_pins(self) -> tuple[dict[str, Pin], dict[str, str]]:
        """The pinned identities (username → :class:`Pin`) and channels (name → id)."""
        text = self._read("pins.json")
        if text is None:
            return {}, {}
        try:
            obj = json.loads(text)
            users = {
                name: Pin(
                    u["signing_key"], u["ecdh_key"], int(u["first_seen_us"]), bool(u["verified"])
                )
                for name, u in obj["users"].items()
            }
            channels = {str(k): str(v) for k, v in obj["channels"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"pins.json in the keystore is unreadable: {exc}") from exc
        return users, channels

    def save_pins(self, users: dict[str, Pin], channels: dict[str, str]) -> None:
        self._write(
            "pins.json",
            json.dumps(
                {
                    "users": {
                        name: {
                            "signing_key": p.signing_key,
                            "ecdh_key": p.ecdh_key,
                            "first_seen_us": p.first_seen_us,
                            "verified": p.verified,
                        }
                        for name, p in users.items()
                    },
                    "channels": channels,
                },
                sort_keys=True,
            ),
        )

    @staticmethod
    def _space_rel(space_id: str) -> str:
        return f"spaces/{hashlib.sha256(space_id.encode()).hexdigest()[:32]}.json"

    def load_space(self, space_id: str) -> SpaceSecrets | None:
        text = self._read(self._space_rel(space_id))
        if text is None:
            return None
        try:
            secrets = SpaceSecrets.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"keystore entry for {space_id} is unreadable: {exc}") from exc
        return secrets if secrets.keyring.space_id == space_id else None

    def save_space(self, secrets: SpaceSecrets) -> None:
        self._write(self._space_rel(secrets.keyring.space_id), secrets.to_json())

    def new_space(self, space_id: str, policy: HistoryPolicy) -> SpaceSecrets:
        return SpaceSecrets(Keyring(space_id, policy))
