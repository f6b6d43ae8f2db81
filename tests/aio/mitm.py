"""A man-in-the-middle relay for tests: forwards frames between clients and the real relay
and lets a test rewrite, drop or inject relay → client frames (a malicious relay)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

Rewrite = Callable[[dict[str, Any]], dict[str, Any] | list[dict[str, Any]] | None]


class MitmRelay:
    """Listens on 127.0.0.1 (free port) and forwards to ``upstream``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rewrite: Rewrite | None = None
        self.seen: list[dict[str, Any]] = []
        self._server: Any = None
        self._downstream: set[ServerConnection] = set()
        self.url = ""

    async def start(self) -> MitmRelay:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=None)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def inject(self, frame: dict[str, Any]) -> None:
        """Send ``frame`` to every connected client as if the relay had sent it."""
        for conn in list(self._downstream):
            with contextlib.suppress(ConnectionClosed):
                await conn.send(json.dumps(frame))

    async def _handle(self, down: ServerConnection) -> None:
        self._downstream.add(down)
        try:
            async with ws_connect(self.upstream, max_size=None) as up:

                async def client_to_relay() -> None:
                    async for msg in down:
                        await up.send(msg)

                async def relay_to_client() -> None:
                    async for msg in up:
                        frame = json.loads(msg)
                        self.seen.append(frame)
                        out = self.rewrite(frame) if self.rewrite else frame
                        for item in out if isinstance(out, list) else [out]:
                            if item is not None:
                                await down.send(json.dumps(item))

                tasks = [
                    asyncio.create_task(client_to_relay()),
                    asyncio.create_task(relay_to_client()),
                ]
                _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        except (ConnectionClosed, OSError):
            pass
        finally:
            self._downstream.discard(down)
