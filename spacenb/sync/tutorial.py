"""Small helpers the tutorial notebooks share.

Every notebook runs on its own against an embedded relay, or against the relay named by
``SPACENB_URL`` and ``SPACENB_APP_KEY`` (Binder's start script sets them). On a shared
relay, names must not collide between runs, so :meth:`TutorialServer.name` adds a suffix
there and nothing on an embedded relay (whose outputs the tests compare).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TutorialServer", "open_server"]


@dataclass
class TutorialServer:
    """Where a notebook's users connect: ``url``, ``app_key``; ``stop()`` when done."""

    url: str
    app_key: str = field(repr=False)
    embedded: Any = None  # the LocalServer when the notebook started its own relay
    _suffix: str = field(default="", repr=False)

    @property
    def data_dir(self) -> Path | None:
        """The relay's data directory, when this machine can see it (embedded, or named by
        ``SPACENB_DATA_DIR``); None for a relay elsewhere."""
        if self.embedded is not None:
            return Path(self.embedded.data_dir)
        env = os.environ.get("SPACENB_DATA_DIR")
        return Path(env) if env else None

    def name(self, base: str) -> str:
        """``base`` on an embedded relay; ``base`` plus a short random suffix on a shared one."""
        return f"{base}-{self._suffix}" if self._suffix else base

    def connect(self, username: str, **kwargs: Any) -> Any:
        """``spacenb.connect`` to this relay as ``name(username)``, keys in memory by default."""
        from .client import connect

        kwargs.setdefault("keystore", ":memory:")
        return connect(self.url, app_key=self.app_key, username=self.name(username), **kwargs)

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> TutorialServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def open_server(**serve_kwargs: Any) -> TutorialServer:
    """The relay named by ``SPACENB_URL``/``SPACENB_APP_KEY``, else a fresh embedded one."""
    url, app_key = os.environ.get("SPACENB_URL"), os.environ.get("SPACENB_APP_KEY")
    if url and app_key:
        return TutorialServer(url, app_key, _suffix=secrets.token_hex(3))
    from .server import serve

    srv = serve(**serve_kwargs)
    return TutorialServer(srv.url, srv.app_key, embedded=srv)
