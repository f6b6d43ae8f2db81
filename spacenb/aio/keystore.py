"""Where a user's identity keys and group keys live between sessions.

A keystore is a directory (default ``$SPACENB_HOME`` or ``~/.spacenb``) or ``":memory:"``.
Layout: ``<root>/<username>/identity.key`` and ``<root>/<username>/spaces/<digest>.json``,
files written atomically (temp file, fsync, rename) and readable by the owner only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import ProtocolError
from ..protocol.encoding import b64d, b64e
from ..protocol.keyring import HistoryPolicy, Keyring
from ..protocol.keys import IdentityKeys, SpaceKeyPair

__all__ = ["Keystore", "SpaceSecrets", "default_keystore_root"]


def default_keystore_root() -> Path:
    """``$SPACENB_HOME``, else ``~/.spacenb``."""
    env = os.environ.get("SPACENB_HOME")
    return Path(env) if env else Path.home() / ".spacenb"


@dataclass
class SpaceSecrets:
    """What a member keeps of one space: its keyring and, for the creator, the space key."""

    keyring: Keyring
    space_key: SpaceKeyPair | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "space_id": self.keyring.space_id,
                "policy": self.keyring.policy,
                "keys": {str(e): b64e(k) for e, k in self.keyring.items()},
                "space_key": b64e(self.space_key.to_bytes()) if self.space_key else None,
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
        return cls(keyring, SpaceKeyPair.from_bytes(b64d(key, field="space_key")) if key else None)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Keystore:
    """One user's secrets, on disk or in memory."""

    def __init__(self, location: str | os.PathLike[str] | None, username: str) -> None:
        self.username = username
        self.in_memory = location == ":memory:"
        self._memory: dict[str, str] = {}
        root = None if self.in_memory else Path(location or default_keystore_root())
        self.root = root / username if root is not None else None

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
            _write_private(self.root / rel, text)

    def load_or_create_identity(self) -> IdentityKeys:
        """The user's identity keys; created (and saved) on first use."""
        text = self._read("identity.key")
        if text is not None:
            return IdentityKeys.from_text(text.strip())
        identity = IdentityKeys.generate()
        self._write("identity.key", identity.to_text() + "\n")
        return identity

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
