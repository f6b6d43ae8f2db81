"""Several relays in this process serving one PostgreSQL database as one service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from spacenb.server import RunningServer
from spacenb.server.app import start_server


@contextlib.asynccontextmanager
async def relays(
    tmp_path: Path, database: str, count: int = 2, **options: Any
) -> AsyncIterator[list[RunningServer]]:
    """``count`` relays on ``database`` (no shard stores unless ``shards`` is given), the
    first one's service key handed to the others; stopped in reverse order."""
    options.setdefault("shards", 0)
    started: list[RunningServer] = []
    try:
        for i in range(count):
            key = started[0].service_key if started else None
            started.append(
                await start_server(
                    tmp_path / f"relay{i}", database=database, service_key=key, **options
                )
            )
        yield started
    finally:
        for srv in reversed(started):
            await srv.stop()
