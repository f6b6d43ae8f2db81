"""Network faults the client tests cause on purpose."""

from __future__ import annotations

from spacenb.aio.connection import RelayConnection


async def drop_connection(connection: RelayConnection) -> None:
    """Close the client's socket as if the network failed (the connection will reconnect)."""
    ws = connection._ws
    if ws is not None:
        await ws.close()
