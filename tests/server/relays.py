"""Several relays in this process serving one PostgreSQL database as one service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
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


@contextlib.contextmanager
def notifications_held(cluster: Any) -> Iterator[list[str]]:
    """A relay that learns of nothing for a while (its listener's notifications are kept
    back, and its quiet-spell sweep does not run), as when its listener reconnects; yields
    the notifications kept back, for the test to hear once the relay listens again."""
    held: list[str] = []
    hear, sweep = cluster._on_notification, cluster._sweep
    cluster._on_notification, cluster._sweep = held.append, lambda: None
    try:
        yield held
    finally:
        cluster._on_notification, cluster._sweep = hear, sweep
