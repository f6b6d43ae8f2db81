"""The baseline: a bare websockets broadcast relay and its client, with no security at all.

The relay keeps one room: every text message a connection sends is acknowledged to the
sender with :data:`ACK` and written to every other connection, both with
``websockets.broadcast`` (straight into the transport buffers, as spacenb's relay writes).
No parsing, no signature, no storage, no encryption: what spacenb costs on top of the
socket is what it is measured against.

``python -m bench.bare_relay`` serves it on a free loopback port until interrupted.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["ACK", "BareClient", "start_bare_relay"]

ACK = "ok"
MAX_SIZE = 2 << 20


async def start_bare_relay(host: str = "127.0.0.1", port: int = 0) -> Server:
    """Serve the broadcast room on ``host:port`` (0: a free port); stop with ``close()``."""
    room: set[ServerConnection] = set()

    async def handler(connection: ServerConnection) -> None:
        room.add(connection)
        try:
            async for text in connection:
                broadcast([connection], ACK)
                broadcast([c for c in room if c is not connection], text)
        except ConnectionClosed:
            pass
        finally:
            room.discard(connection)

    return await serve(handler, host, port, max_size=MAX_SIZE, compression=None)


def url_of(server: Server) -> str:
    """The ``ws://`` URL of a server started by :func:`start_bare_relay`."""
    host, port = next(iter(server.sockets)).getsockname()[:2]
    return f"ws://{host}:{port}"


class BareClient:
    """One connection to the bare relay: ``send`` returns once the relay acknowledged;
    every other connection's message reaches ``on_body`` decoded from JSON."""

    def __init__(self, connection: ClientConnection, on_body: Callable[[Any], None] | None) -> None:
        self._connection = connection
        self._on_body = on_body
        self._acks: collections.deque[asyncio.Future[None]] = collections.deque()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, on_body: Callable[[Any], None] | None = None) -> BareClient:
        connection = await ws_connect(url, max_size=MAX_SIZE, compression=None)
        return cls(connection, on_body)

    async def send(self, body: Any) -> None:
        """Send ``body`` as JSON; return when the relay has acknowledged it."""
        ack = asyncio.get_running_loop().create_future()
        self._acks.append(ack)
        await self._connection.send(json.dumps(body))
        await ack

    async def _read(self) -> None:
        try:
            async for text in self._connection:
                if text == ACK:
                    self._acks.popleft().set_result(None)
                elif self._on_body is not None:
                    self._on_body(json.loads(text))
        except ConnectionClosed:
            pass
        finally:
            for ack in self._acks:
                if not ack.done():
                    ack.set_exception(ConnectionError("bare relay connection closed"))

    async def close(self) -> None:
        await self._connection.close()
        await asyncio.gather(self._reader, return_exceptions=True)


async def _serve_forever() -> None:
    server = await start_bare_relay()
    print(f"bare relay on {url_of(server)}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve_forever())
