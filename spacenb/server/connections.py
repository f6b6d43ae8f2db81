"""Who may hold a connection to the relay, and for how long before signing in.

Every accepted TCP connection is counted from the moment it is accepted (before its
websocket handshake). Until it signs in it is *waiting*: a waiting connection is closed
when the sign-in deadline passes, and when there are more waiting connections than the
caps allow, one is closed to make room: past the per-address cap, the oldest from that
address; past the cap in all, the oldest from the address that holds the most. So a crowd
of sockets that never sign in cannot lock anyone out: a real user signs in within
milliseconds of connecting, and is neither the oldest nor (unless its own address is the
crowd's) from the address holding the most. Signed-in connections are capped per address
and per user; those caps refuse the sign-in (:class:`ConnectionLimitError`) instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict

from websockets.asyncio.server import ServerConnection

from ..exceptions import ConnectionLimitError
from .limits import Limits

__all__ = ["ConnectionGuard", "guarded_connection"]

log = logging.getLogger("spacenb.server")


def address_of(connection: ServerConnection) -> str:
    """The peer's IP address (the port left out)."""
    peer = connection.transport.get_extra_info("peername") if connection.transport else None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


class ConnectionGuard:
    """Counts connections by state and address, and enforces :class:`Limits`."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._waiting: OrderedDict[ServerConnection, asyncio.TimerHandle | None] = OrderedDict()
        self._waiting_at: dict[str, OrderedDict[ServerConnection, None]] = {}
        self._address: dict[ServerConnection, str] = {}
        self._order: dict[ServerConnection, int] = {}  # accept order of waiting ones
        self._accepted = 0
        self._signed_in_at: Counter[str] = Counter()
        self.closed_waiting = 0  # waiting connections closed (deadline or room), for figures

    @property
    def waiting(self) -> int:
        """Connections that have not signed in."""
        return len(self._waiting)

    def opened(self, connection: ServerConnection) -> None:
        """A TCP connection was accepted: count it as waiting, start its deadline, and
        close the oldest waiting ones beyond the caps."""
        address = address_of(connection)
        self._address[connection] = address
        timer = None
        if self.limits.sign_in_timeout:
            timer = asyncio.get_running_loop().call_later(
                self.limits.sign_in_timeout, self._expire, connection
            )
        self._waiting[connection] = timer
        self._accepted += 1
        self._order[connection] = self._accepted
        here = self._waiting_at.setdefault(address, OrderedDict())
        here[connection] = None
        while len(here) > max(self.limits.max_unauthenticated_per_address, 1):
            self._close_waiting(next(iter(here)), "too many connections from its address")
        while len(self._waiting) > max(self.limits.max_unauthenticated, 1):
            self._close_waiting(self._victim(), "too many unauthenticated in all")

    def _victim(self) -> ServerConnection:
        """The oldest waiting connection of the address that holds the most of them."""
        most = max(len(q) for q in self._waiting_at.values())
        oldest = (next(iter(q)) for q in self._waiting_at.values() if len(q) == most)
        return min(oldest, key=self._order.__getitem__)

    def check_room(self, connection: ServerConnection) -> None:
        """Before a sign-in: :class:`ConnectionLimitError` if its address has as many
        signed-in connections as allowed."""
        address = self._address.get(connection)
        cap = self.limits.max_connections_per_address
        if address is not None and self._signed_in_at[address] >= cap:
            raise ConnectionLimitError(
                f"{cap} connections from {address} are signed in already "
                "(max_connections_per_address): close one first"
            )

    def signed_in(self, connection: ServerConnection) -> None:
        """The connection signed in: it is no longer waiting."""
        if self._forget_waiting(connection):
            self._signed_in_at[self._address[connection]] += 1

    def closed(self, connection: ServerConnection) -> None:
        """The connection is gone."""
        if not self._forget_waiting(connection):
            address = self._address.get(connection)
            if address is not None:
                self._signed_in_at[address] -= 1
                if self._signed_in_at[address] <= 0:
                    del self._signed_in_at[address]
        self._address.pop(connection, None)

    def _forget_waiting(self, connection: ServerConnection) -> bool:
        if connection not in self._waiting:
            return False
        timer = self._waiting.pop(connection)
        if timer is not None:
            timer.cancel()
        self._order.pop(connection, None)
        address = self._address[connection]
        here = self._waiting_at.get(address)
        if here is not None:
            here.pop(connection, None)
            if not here:
                del self._waiting_at[address]
        return True

    def _close_waiting(self, connection: ServerConnection, why: str) -> None:
        log.info("closing a connection from %s that has not signed in: %s",
                 self._address.get(connection), why)  # fmt: skip
        self._forget_waiting(connection)
        self._address.pop(connection, None)
        self.closed_waiting += 1
        if connection.transport is not None:
            connection.transport.abort()

    def _expire(self, connection: ServerConnection) -> None:
        if connection in self._waiting:
            self._waiting[connection] = None  # the timer has fired
            self._close_waiting(connection, "no sign-in within the deadline")


def guarded_connection(guard: ConnectionGuard) -> type[ServerConnection]:
    """A :class:`ServerConnection` class that reports to ``guard`` from accept to close
    (websockets' ``create_connection``)."""

    class GuardedConnection(ServerConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            guard.opened(self)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.closed(self)
            super().connection_lost(exc)

    return GuardedConnection
