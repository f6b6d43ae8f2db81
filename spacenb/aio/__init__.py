"""spacenb's async core: ``await spacenb.aio.serve()``, ``await spacenb.aio.connect(...)``.

Usable from Jupyter's top-level ``await``, from ``asyncio.run`` and from any running loop.
The synchronous facade (``import spacenb``) is a thin layer over this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import AsyncClient, connect
from .events import (
    EphemeralEvent,
    JoinRequest,
    MessageDeletedEvent,
    PresenceEvent,
    RejectedEnvelopeEvent,
    SpaceMessageEvent,
)
from .space import AsyncSpace, History
from .space_api import AsyncSpaceAPI, InviteLink

if TYPE_CHECKING:
    from ..server.app import RunningServer

__all__ = [
    "AsyncClient",
    "AsyncSpace",
    "AsyncSpaceAPI",
    "EphemeralEvent",
    "History",
    "InviteLink",
    "JoinRequest",
    "MessageDeletedEvent",
    "PresenceEvent",
    "RejectedEnvelopeEvent",
    "SpaceMessageEvent",
    "connect",
    "serve",
]


async def serve(**kwargs: Any) -> RunningServer:
    """Start the embedded relay, keeper and shard stores (see ``spacenb.server.app``;
    ``database="postgresql://..."`` keeps everything in PostgreSQL instead of SQLite;
    ``shard_stores=[url, ...]`` uses shard stores run on their own instead of local ones).

    The one bridge from the async face to the relay, kept for python-api.md's
    ``await spacenb.aio.serve()``; nothing in the client imports it, and the relay is
    loaded only when this is called (``tests/test_layers.py`` names this exception).
    """
    from ..server.app import start_server

    return await start_server(**kwargs)
