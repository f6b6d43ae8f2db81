"""One authenticated websocket to the relay, with request/answer pairing and reconnection.

The connection knows frames, not spaces: it sends requests, matches answers by id, hands
pushed events to the client, and when the socket drops it reconnects with exponential
backoff, signs in again and tells the client, which then catches up.

Given several relay URLs (the relays of one service), it signs in to the first that
answers, and when its socket drops it tries the others in turn (starting with the next
one, a URL per attempt, with the same backoff), so it moves to another relay when its
own dies; ``url`` is the relay it is on. The client's catch-up is the same either way.

A request whose frame would be larger than the frame limit is refused before anything is
sent (:class:`LimitExceededError`), and the connection stays up. If the relay sends a
frame larger than the limit, the socket is closed (code 1009) and the requests waiting on
it fail with :class:`LimitExceededError`, so a catch-up asks for smaller pages instead of
reconnecting for the same page again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import CloseCode
from websockets.protocol import OPEN

from ..exceptions import (
    AuthenticationError,
    ConnectionLostError,
    LimitExceededError,
    ProtocolError,
    RemoteProtocolError,
    SpacenbError,
    SpacenbTimeoutError,
    UnsupportedVersionError,
    error_for_code,
)
from ..protocol import frames

__all__ = ["RelayConnection"]

log = logging.getLogger("spacenb")
R = TypeVar("R")

AuthFactory = Callable[[frames.Hello, int], frames.Auth]


class RelayConnection:
    """A self-healing connection to one relay of ``urls`` (one URL, or several relays
    of one service to fail over between; ``url`` is the one in use).

    ``authenticate(hello, request_id)`` builds the ``auth`` request for a fresh socket;
    ``on_event(event)`` receives every pushed event, in order; ``on_raw(obj)`` every frame
    that could not be parsed; ``on_reconnected()`` runs after a lost socket is replaced.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        authenticate: AuthFactory,
        on_event: Callable[[frames.Event], None],
        on_reconnected: Callable[[], Awaitable[None]],
        on_raw: Callable[[str], None] | None = None,
        *,
        request_timeout: float = 30.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.urls: tuple[str, ...] = (url,) if isinstance(url, str) else tuple(url)
        self.url = self.urls[0]
        self._authenticate = authenticate
        self._on_event = on_event
        self._on_reconnected = on_reconnected
        self._on_raw = on_raw
        self.request_timeout = request_timeout
        self.max_backoff = max_backoff
        self._ids = itertools.count(1)
        self._pending: dict[
            int, tuple[asyncio.Future[dict[str, Any]], type[frames.Request[Any]]]
        ] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self.hello: frames.Hello | None = None
        self.auth: frames.AuthResult | None = None
        self.reconnects = 0

    # ------------------------------------------------------------------ opening

    async def open(self, timeout: float = 15.0) -> None:
        """Connect and sign in; raise if that fails (no retry on the first attempt). With
        several URLs, one that cannot be reached (or does not answer within ``timeout``)
        is skipped for the next; a refusal (wrong app key, say) is raised at once, as every
        relay of a service would refuse alike."""
        failures: list[SpacenbError] = []
        for url in self.urls:
            try:
                await asyncio.wait_for(self._open_once(url), timeout)
                return
            except TimeoutError:
                failures.append(
                    SpacenbTimeoutError(
                        f"could not connect to {url} within {timeout} s: is the relay running?"
                    )
                )
            except ConnectionLostError as exc:
                failures.append(exc)
            log.info("spacenb: %s", failures[-1])
        if len(failures) == 1:
            raise failures[0]
        timed_out = all(isinstance(f, SpacenbTimeoutError) for f in failures)
        error = SpacenbTimeoutError if timed_out else ConnectionLostError
        raise error(
            f"none of the relays {', '.join(self.urls)} could be reached: "
            + "; ".join(str(f) for f in failures)
        )

    async def _open_once(self, url: str) -> None:
        try:
            ws = await ws_connect(
                url, max_size=frames.MAX_FRAME_BYTES, open_timeout=10, compression=None
            )
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise ConnectionLostError(f"cannot connect to {url}: {exc}") from exc
        try:
            hello = frames.parse_server_frame(await ws.recv())
            if not isinstance(hello, frames.Hello):
                raise RemoteProtocolError("the relay did not start with hello", field="ev")
            if hello.version != frames.PROTOCOL_VERSION:
                raise UnsupportedVersionError(
                    f"the relay at {url} speaks spacenb protocol v{hello.version}; this "
                    f"client speaks v{frames.PROTOCOL_VERSION} only: upgrade the older side"
                )
            request_id = next(self._ids)
            await ws.send(self._authenticate(hello, request_id).to_json())
            answer = frames.parse_server_frame(await ws.recv())
            if isinstance(answer, frames.ErrorFrame):
                raise error_for_code(answer.code, answer.message)
            if not isinstance(answer, frames.Response) or answer.id != request_id:
                raise RemoteProtocolError("unexpected answer to auth", field="id")
            self.auth = frames.parse_result(frames.Auth, answer.result)
        except ConnectionClosed as exc:
            await ws.close()
            reason = exc.rcvd.reason if exc.rcvd else "no reason given"
            raise AuthenticationError(
                f"the relay closed the connection during sign-in ({reason})"
            ) from None
        except BaseException:
            await ws.close()
            raise
        self.hello = hello
        self.url = url
        self._ws = ws
        self._connected.set()
        self._reader = asyncio.create_task(self._read(ws), name="spacenb-reader")

    # ------------------------------------------------------------------ requests

    @property
    def is_open(self) -> bool:
        return self._connected.is_set() and not self._closing

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called: nothing will be sent again."""
        return self._closing

    async def request(self, request: frames.Request[R], *, timeout: float | None = None) -> R:
        """Send ``request`` (built :data:`~spacenb.protocol.frames.UNSENT`: its id is this
        connection's next) and return its parsed result, or raise its error."""
        timeout = self.request_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not self._connected.is_set():
            if self._closing:
                raise ConnectionLostError("the client is closed")
            try:
                await asyncio.wait_for(self._connected.wait(), timeout)
            except TimeoutError:
                raise SpacenbTimeoutError(
                    f"not connected to {self.url} (reconnecting); gave up after {timeout} s"
                ) from None
        ws = self._ws
        assert ws is not None
        cls = type(request)
        request_id = next(self._ids)
        text = request.to_json(request_id)  # LimitExceededError: never sent
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[request_id] = (future, cls)
        timer = loop.call_at(deadline, _time_out, future)
        try:
            if not _write_now(ws, text):
                await ws.send(text)
            result = await future
        except ConnectionClosed as exc:
            if _too_big(exc):
                raise _too_big_error(cls.OP) from None
            raise ConnectionLostError(
                f"connection to the relay was lost during {cls.OP}; it will reconnect, retry then"
            ) from None
        except TimeoutError:
            raise SpacenbTimeoutError(
                f"the relay did not answer {cls.OP} within {timeout} s"
            ) from None
        finally:
            timer.cancel()
            self._pending.pop(request_id, None)
            if future.done() and not future.cancelled():
                # The socket may have failed the future while send() was raising: read its
                # exception, or asyncio logs "Future exception was never retrieved".
                future.exception()
        try:
            return frames.parse_result(cls, result)
        except ProtocolError as exc:
            raise RemoteProtocolError(
                f"the relay answered {cls.OP} with a malformed result: {exc}"
            ) from None

    # ------------------------------------------------------------------ reading

    async def _read(self, ws: ClientConnection) -> None:
        too_big = False
        try:
            async for text in ws:
                self._dispatch(text)
        except ConnectionClosed as exc:
            too_big = _too_big(exc)
        except Exception:  # pragma: no cover - defensive: the reader must not die silently
            log.exception("spacenb: reader failed")
        finally:
            self._connection_lost(ws, too_big)

    def _dispatch(self, text: str | bytes) -> None:
        try:
            frame = frames.parse_server_frame(text)
        except SpacenbError as exc:
            log.warning("spacenb: dropped a malformed frame from the relay: %s", exc)
            if self._on_raw is not None and isinstance(text, str):
                self._on_raw(text)
            return
        if isinstance(frame, frames.Event):
            self._on_event(frame)
            return
        if frame.id is None:
            log.warning("spacenb: relay error: %s %s", getattr(frame, "code", ""), frame)
            return
        entry = self._pending.get(frame.id)
        if entry is None or entry[0].done():
            return
        future, _cls = entry
        if isinstance(frame, frames.ErrorFrame):
            future.set_exception(error_for_code(frame.code, frame.message))
        else:
            future.set_result(frame.result)

    def _connection_lost(self, ws: ClientConnection, too_big: bool = False) -> None:
        if self._ws is not ws:
            return
        self._connected.clear()
        self._ws = None
        if too_big:
            log.warning("spacenb: the relay sent a frame over the frame limit; reconnecting")
        for future, cls in list(self._pending.values()):
            if not future.done():
                future.set_exception(
                    _too_big_error(cls.OP)
                    if too_big
                    else ConnectionLostError(f"connection to the relay was lost during {cls.OP}")
                )
        self._pending.clear()
        if not self._closing:
            self._reconnecting = asyncio.get_running_loop().create_task(
                self._reconnect(), name="spacenb-reconnect"
            )

    async def _reconnect(self) -> None:
        delay = 0.05
        lost = self.urls.index(self.url) if self.url in self.urls else 0
        for attempt in itertools.count(1):
            await asyncio.sleep(delay * (0.5 + random.random()))
            if self._closing:
                return
            url = self.urls[(lost + attempt) % len(self.urls)]  # the lost relay's last
            try:
                await asyncio.wait_for(self._open_once(url), 15)
            except (SpacenbError, OSError, TimeoutError) as exc:
                log.info("spacenb: reconnect to %s failed (%s); retrying", url, exc)
                delay = min(delay * 2, self.max_backoff)
                continue
            if url != self.urls[lost]:
                log.info("spacenb: moved from relay %s to %s", self.urls[lost], url)
            self.reconnects += 1
            try:
                await self._on_reconnected()
            except Exception:
                log.exception("spacenb: catch-up after reconnect failed")
            return

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """Close for good: no reconnection; pending requests fail. No task of this
        connection is left running (a reconnection under way is cancelled)."""
        self._closing = True
        self._connected.clear()
        reconnecting, self._reconnecting = self._reconnecting, None
        if reconnecting is not None and reconnecting is not asyncio.current_task():
            reconnecting.cancel()
            await asyncio.gather(reconnecting, return_exceptions=True)
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        for future, _cls in list(self._pending.values()):
            if not future.done():
                future.set_exception(ConnectionLostError("the client is closed"))
        self._pending.clear()


# Past this many bytes waiting in the socket's buffer, a request goes through websockets'
# ``send``, which waits for the buffer to drain (its default high-water mark).
_WRITE_NOW_LIMIT = 64 * 1024


def _write_now(ws: ClientConnection, text: str) -> bool:
    """Frame ``text`` and hand it to the socket at once, without the coroutine and the
    flow-control wait of ``ws.send`` (the costliest part of sending a small request),
    when the connection is open and its buffer nearly empty; else False, and nothing is
    written. The connection never sends fragmented messages, so nothing can interleave."""
    transport = ws.transport
    if (
        ws.protocol.state is not OPEN
        or transport.is_closing()
        or transport.get_write_buffer_size() > _WRITE_NOW_LIMIT
    ):
        return False
    protocol = ws.protocol
    protocol.send_text(text.encode())
    transport.writelines(protocol.data_to_send())
    return True


def _time_out(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _too_big(exc: ConnectionClosed) -> bool:
    """Whether this side closed the socket because the relay sent a frame too large."""
    return exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG


def _too_big_error(op: str) -> LimitExceededError:
    return LimitExceededError(
        f"the relay answered {op} with a frame over the frame limit "
        f"(MAX_FRAME_BYTES = {frames.MAX_FRAME_BYTES} bytes); ask for less (a smaller page)"
    )
