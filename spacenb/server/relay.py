"""The websockets adapter: serves a :class:`~.core.RelayCore` over websockets.

Every rule of the relay lives in the core (:mod:`.core`, over the pure rules of
:mod:`spacenb.protocol.relayrules`); this module only moves frames between sockets and
the core, and decides what is about sockets: buffering, slow readers and pacing.

Each connection is a :class:`~.core.Session`; its frames are handled one at a time, in
order, synchronously on the event loop (storage answers in microseconds). The core queues
answers and events in one outbox, each answer ahead of the events its request caused; at
the end of the event-loop turn the adapter drains it: the messages stored meanwhile are
committed together (group commit) and the frames are written, so nothing is acknowledged
or pushed before it is durable.

Fan-out never waits for a slow reader: events are written straight into each recipient's
transport buffer, and a connection whose buffer grows past ``max_buffered`` bytes is
dropped by the very write that took it past, instead of holding up the others. No answer
is larger than one frame (1 MiB), so N connections that never read cost at most
N × (``max_buffered`` + 1 MiB). A connection whose buffer holds more than a frame is not
read from until it drains: a client that asks and never reads cannot make the relay
compute answers for it without end.

Connections are counted and capped from the moment they are accepted
(:mod:`.connections`); each user's messages pass a token bucket and count against the
user's storage quota (in the core, with :class:`~.limits.Limits`).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.protocol import OPEN

from ..clock import Clock
from ..protocol import frames
from ..protocol.frames import MAX_FRAME_BYTES, JoinRequested, Request
from ..protocol.keys import IdentityKeys
from ..protocol.statelog import SpaceState, StateEvent
from ..protocol.wrap import WrappedKey
from .connections import ConnectionGuard
from .core import RelayCore, Session
from .handlers import REQUEST_TABLE, Route
from .limits import Limits
from .storage import Storage

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["MAX_BUFFERED", "WS_MAX_SIZE", "LocalMember", "Relay", "Session"]

log = logging.getLogger("spacenb.server")

MAX_BUFFERED = Limits().max_buffered  # bytes queued to one client before it is dropped
# websockets closes the connection on a larger message; between MAX_FRAME_BYTES and this,
# the frame is answered with ``too_large`` and the connection stays up.
WS_MAX_SIZE = 2 * MAX_FRAME_BYTES
# One connection's frames are handled back to back while they take less than this; past it
# the relay lets the others' frames in first.
_TURN = 0.005


class Relay:
    """A :class:`~.core.RelayCore` served over websockets (``core``); the arguments are
    the core's (``table`` is its request table), and ``max_buffered`` the bytes queued to
    one connection before it is dropped (``limits.max_buffered`` by default)."""

    def __init__(
        self,
        storage: Storage,
        *,
        app_key: str,
        relay_keys: IdentityKeys,
        keeper: str | None = None,
        clock: Clock | None = None,
        shard_stores: Sequence[str] = (),
        shards_needed: int = 0,
        limits: Limits | None = None,
        max_buffered: int | None = None,
        table: Mapping[str, Route] = REQUEST_TABLE,
    ) -> None:
        limits = limits or Limits()
        self.guard = ConnectionGuard(limits)
        self.core = RelayCore(
            storage,
            app_key=app_key,
            relay_keys=relay_keys,
            keeper=keeper,
            clock=clock,
            shard_stores=shard_stores,
            shards_needed=shards_needed,
            limits=limits,
            table=table,
            wake=self._schedule_flush,
            admission=self.guard,
        )
        self.max_buffered = limits.max_buffered if max_buffered is None else max_buffered
        self.dropped_slow = 0  # connections dropped for not reading, for figures
        self._cluster: Cluster | None = None
        self._flush_scheduled = False
        self._closed = False
        self._pages = asyncio.Lock()
        self._pages_waiting = 0

    # What operators and tests read of the core.
    @property
    def storage(self) -> Storage:
        return self.core.storage

    @property
    def limits(self) -> Limits:
        return self.core.limits

    @property
    def cluster(self) -> Cluster | None:
        """The other relays on the same database (None on SQLite); the core's ``peers``."""
        return self._cluster

    @cluster.setter
    def cluster(self, cluster: Cluster | None) -> None:
        self._cluster = self.core.peers = cluster

    @property
    def keeper_inbox(self) -> Callable[[JoinRequested], None] | None:
        return self.core.keeper_inbox

    @keeper_inbox.setter
    def keeper_inbox(self, inbox: Callable[[JoinRequested], None] | None) -> None:
        self.core.keeper_inbox = inbox

    def state(self, space_id: str) -> SpaceState | None:
        return self.core.state(space_id)

    def online(self, space_id: str) -> tuple[str, ...]:
        return self.core.online(space_id)

    def close(self) -> None:
        """Commit and write what is pending; the relay then handles nothing more."""
        self.flush()
        self._closed = True

    # ------------------------------------------------------------------ connections

    async def serve_connection(self, connection: ServerConnection) -> None:
        """The websockets handler: greet, then answer frames until the client leaves."""
        core = self.core
        session = Session(connection)
        self._write([session], self.core.hello(session).to_json())
        loop = asyncio.get_running_loop()
        try:
            turn = loop.time()
            async for data in connection:
                request = core.parse_frame(session, data)
                if request is not None and core.is_page(request):
                    await self._answer_page(session, request)
                    turn = loop.time()
                elif request is not None:
                    core.answer(session, request)
                if session.closing:
                    self.flush()
                    await connection.close(CloseCode.POLICY_VIOLATION, "authentication failed")
                    break
                transport = connection.transport
                if transport.is_closing():
                    break  # dropped (too slow a reader): its queued requests go unanswered
                if transport.get_write_buffer_size() > MAX_FRAME_BYTES:
                    self.flush()
                    while (
                        transport.get_write_buffer_size() > MAX_FRAME_BYTES // 2
                        and not transport.is_closing()
                    ):
                        await asyncio.sleep(0.05)  # its answers first: read it no further
                    turn = loop.time()
                elif loop.time() - turn > _TURN:
                    await asyncio.sleep(0)  # the others' turn (the answers are flushed first)
                    turn = loop.time()
        except ConnectionClosed:
            pass
        finally:
            core.close_session(session)
            self.flush()

    async def _answer_page(self, session: Session, request: Request[Any]) -> None:
        """Answer a page request, one at a time in all. While others wait for theirs, the
        loop is left to everything else for as long as the page took: pages asked for by
        many connections at once take at most half the relay's time."""
        loop = asyncio.get_running_loop()
        self._pages_waiting += 1
        await asyncio.sleep(0)  # pages asked for in this same turn queue up first
        async with self._pages:
            self._pages_waiting -= 1
            started = loop.time()
            self.core.answer(session, request)
            if self._pages_waiting:
                await asyncio.sleep(loop.time() - started)
        await asyncio.sleep(0)  # the others' frames before this connection's next

    def call_local(self, session: Session, request: Request[Any]) -> Any:
        """:meth:`RelayCore.call` for an in-process member, pushing its events at once."""
        try:
            return self.core.call(session, request)
        finally:
            self.flush()

    # ------------------------------------------------------------------ writing

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Drain the core (it commits the message batch first), then write every queued
        answer and event in order and hand the keeper its join requests."""
        self._flush_scheduled = False
        if self._closed:
            return
        outbox, joins = self.core.drain()
        if outbox:
            self._write_outbox(outbox)
        inbox = self.core.keeper_inbox
        if inbox is not None:
            for event in joins:
                inbox(event)

    def _write(self, sessions: Iterable[Session], text: str) -> None:
        """Write ``text`` to each session now (see :meth:`_write_outbox`)."""
        self._write_outbox([(list(sessions), text)])

    def _write_outbox(self, outbox: Iterable[tuple[Iterable[Session], str]]) -> None:
        """Put every frame in its sessions' send buffers without waiting, in order, with
        one transport write per connection (BENCHMARKS.md, P5). A frame is framed once,
        whatever its number of recipients: the relay's websockets have no extension, so
        a server frame's bytes are the same for every connection (one with an extension
        would have its frames made by its protocol). A lost connection is
        skipped (before its handler has caught up with the loss)."""
        queued: dict[ServerConnection, list[bytes] | None] = {}
        for sessions, text in outbox:
            wire: bytes | None = None
            for session in sessions:
                connection = session.connection
                if connection is None:
                    continue
                if connection in queued:
                    chunks = queued[connection]
                else:
                    chunks = queued[connection] = self._open_chunks(connection)
                if chunks is None:
                    continue
                protocol = connection.protocol
                if protocol.extensions:  # pragma: no cover - the relay serves without any
                    protocol.send_text(text.encode())
                    chunks.extend(protocol.data_to_send())
                    continue
                if wire is None:
                    wire = server_text_frame(text.encode())
                chunks.append(wire)
        for connection, chunks in queued.items():
            if chunks:
                self._send(connection, chunks)

    @staticmethod
    def _open_chunks(connection: ServerConnection) -> list[bytes] | None:
        """A connection's list of frames to write, or None if it cannot be written to."""
        protocol = connection.protocol
        if protocol.state is not OPEN or connection.transport.is_closing():
            return None
        return protocol.data_to_send()  # (empty: websockets writes after each operation)

    def _send(self, connection: ServerConnection, chunks: list[bytes]) -> None:
        """Write ``chunks`` to the connection; drop it at the write that takes its buffer
        past ``max_buffered`` bytes (its memory is freed at once), as if every frame were
        written on its own: the chunks are written together up to the one that would pass
        the cap, that write is checked, and the rest follow only if it did not."""
        transport = connection.transport
        cap = self.max_buffered
        size = transport.get_write_buffer_size()
        start = 0
        for i, chunk in enumerate(chunks):
            size += len(chunk)
            if size > cap:
                transport.writelines(chunks[start : i + 1])
                size = transport.get_write_buffer_size()
                if size > cap:
                    self._drop_slow(connection)
                    return
                start = i + 1
        if start < len(chunks):
            transport.writelines(chunks[start:] if start else chunks)

    def _drop_slow(self, connection: ServerConnection) -> None:
        log.warning(
            "dropping %s: more than %d bytes wait to be written to it",
            getattr(connection, "remote_address", None),
            self.max_buffered,
        )
        self.dropped_slow += 1
        connection.transport.abort()


_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def server_text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame of ``payload`` (RFC 6455 section 5.2): what
    ``websockets.frames.Frame(Opcode.TEXT, payload).serialize(mask=False)`` gives without
    extensions, without building a frame object and a buffer per frame (the relay frames
    two per message: ``tests/server/test_wire_frames.py``)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return _HEADER_16.pack(0x81, 126, size) + payload
    return _HEADER_64.pack(0x81, 127, size) + payload


class LocalMember:
    """The relay as an in-process member sees it (the keeper's
    :class:`~spacenb.server.keeper.KeeperPort`): each method is the request a client
    would send, through the same handlers and authorisation."""

    def __init__(self, relay: Relay, username: str) -> None:
        self._relay = relay
        self._session = Session(None, username)
        self.username = username

    def _call(self, request: Request[Any]) -> Any:
        return self._relay.call_local(self._session, request)

    def state_log(self, space_id: str, since: int) -> Sequence[StateEvent]:
        result: frames.StateLogPage = self._call(
            frames.GetStateLog(0, space_id, since, frames.MAX_LOG_PAGE)
        )
        return result.events

    def fetch_keys(self, space_id: str) -> Sequence[WrappedKey]:
        keys: list[WrappedKey] = []
        since: int | None = None
        while True:
            result: frames.KeysResult = self._call(frames.FetchKeys(0, space_id, since))
            keys.extend(result.keys)
            if result.next_epoch is None:
                return keys
            since = result.next_epoch

    def admit(self, space_id: str, member: str, keys: Sequence[WrappedKey]) -> None:
        self._call(frames.Admit(0, space_id, member, tuple(keys)))

    def append(self, space_id: str, event: StateEvent) -> None:
        self._call(frames.Append(0, space_id, event, ()))

    def now_us(self) -> int:
        return self._relay.core.now_us()

    def pending_joins(self) -> Sequence[tuple[str, str]]:
        return [(p.space_id, p.username) for p in self._relay.core.storage.join_requests()]
