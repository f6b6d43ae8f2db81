"""Records the facade returns: the async core's dataclasses, made to show themselves.

Each is a subclass of the core's frozen dataclass (``isinstance`` still holds, fields are
the same) that adds a readable ``__repr__`` and ``_repr_html_`` and never shows a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..aio import InviteLink as AsyncInviteLink
from ..aio.types import Manifest
from ..units import human_bytes
from .display import DisplayRecord, secret

__all__ = ["FileManifest", "InviteLink"]


class InviteLink(DisplayRecord, AsyncInviteLink):
    """An invite link. ``token`` is the secret to share; it is only partly shown."""

    __slots__ = ()

    def _repr_fields(self) -> Mapping[str, Any]:
        return {
            "space_id": self.space_id,
            "role": self.role,
            "token": secret(self.token),
            "uses": self.uses if self.max_uses is None else f"{self.uses}/{self.max_uses}",
            "expires_at": self.expires_at,
            "revoked": self.revoked,
        }


class FileManifest(DisplayRecord, Manifest):
    """A file's manifest: the capability to read it (its key is never shown)."""

    __slots__ = ()

    def _repr_fields(self) -> Mapping[str, Any]:
        return {
            "name": self.name,
            "size": human_bytes(self.size),
            "content_type": self.content_type,
            "shares": f"any {self.k} of {self.n}",
            "segments": len(self.segments),
            "file_id": self.file_id.hex()[:16],
            "metadata": self.metadata,
        }
