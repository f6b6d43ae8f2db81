"""The synchronous facade: blocking twins of :mod:`spacenb.aio`, run on a private loop.

``runner`` holds the private event loop (a daemon thread), ``callbacks`` the thread that
runs user handlers, and ``server``, ``client`` and ``space`` the blocking classes.
"""

from __future__ import annotations

from .client import Client, SpaceAPI, connect
from .records import FileManifest, InviteLink
from .runner import LoopThreadError, Runner, get_runner
from .server import LocalServer, serve
from .space import Space

__all__ = [
    "Client",
    "FileManifest",
    "InviteLink",
    "LocalServer",
    "LoopThreadError",
    "Runner",
    "Space",
    "SpaceAPI",
    "connect",
    "get_runner",
    "serve",
]
