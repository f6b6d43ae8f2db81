"""Pipelined websockets to shard stores: one per store, many requests in flight on each.

A transfer opens at most one :class:`ShardLink` per store URL (through :class:`ShardLinks`)
and sends requests without waiting for earlier answers; replies are matched by id. The wire
format is :mod:`spacenb.protocol.shardwire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ..exceptions import (
    ConnectionLostError,
    ProtocolError,
    SpacenbError,
    SpacenbTimeoutError,
)
from ..protocol import shardwire
from ..protocol.manifest import MAX_SEGMENT_SIZE, SEGMENT_OVERHEAD

__all__ = ["ShardLink", "ShardLinks"]

log = logging.getLogger("spacenb.shards")

_MAX_MESSAGE = MAX_SEGMENT_SIZE + SEGMENT_OVERHEAD + shardwire.MAX_HEADER_BYTES + 4


class ShardLink:
    """One open websocket to one shard store. Requests may be issued concurrently."""

    def __init__(self, url: str, ws: ClientConnection, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[shardwire.Reply]] = {}
        self._closed = False
        self._reader = asyncio.create_task(self._read(), name=f"spacenb-shards-{url}")

    @classmethod
    async def open(cls, url: str, *, timeout: float = 30.0) -> ShardLink:
        """Connect; :class:`ConnectionLostError` or :class:`SpacenbTimeoutError` on failure."""
        try:
            ws = await ws_connect(
                url, compression=None, max_size=_MAX_MESSAGE, open_timeout=timeout
            )
        except TimeoutError:
            raise SpacenbTimeoutError(f"shard store {url} did not answer in {timeout} s") from None
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise ConnectionLostError(f"cannot connect to shard store {url}: {exc}") from None
        return cls(url, ws, timeout)

    async def put(self, *, space_id: str, ticket: str, name: str, data: bytes | memoryview) -> None:
        """Store one share; raises the store's refusal (e.g. :class:`PermissionDeniedError`)."""
        rid, answer = self._expect()
        await self._send(rid, shardwire.PutShare(rid, space_id, ticket, name, data).to_bytes())
        del data  # sent: do not hold the share while the store writes it
        await self._wait(rid, answer)

    async def get(self, name: str) -> bytes | memoryview:
        """Fetch one share's bytes (unverified: the caller checks its hash), as a view
        into the store's message (not copied)."""
        rid, answer = self._expect()
        await self._send(rid, shardwire.GetShare(rid, name).to_bytes())
        return (await self._wait(rid, answer)).payload

    async def has(self, names: tuple[str, ...]) -> tuple[bool, ...]:
        """Which of ``names`` the store holds."""
        rid, answer = self._expect()
        await self._send(rid, shardwire.HasShares(rid, names).to_bytes())
        present = (await self._wait(rid, answer)).fields.get("present")
        if not isinstance(present, list) or len(present) != len(names):
            raise ProtocolError("expected one bool per name", field="present")
        return tuple(bool(p) for p in present)

    async def close(self) -> None:
        await self._ws.close()
        await self._reader

    def _expect(self) -> tuple[int, asyncio.Future[shardwire.Reply]]:
        if self._closed:
            raise ConnectionLostError(f"connection to shard store {self.url} is closed")
        rid = next(self._ids)
        answer: asyncio.Future[shardwire.Reply] = asyncio.get_running_loop().create_future()
        self._pending[rid] = answer
        return rid, answer

    async def _send(self, rid: int, message: bytes) -> None:
        try:
            await self._ws.send(message)
        except ConnectionClosed:
            self._forget(rid)
            raise ConnectionLostError(f"shard store {self.url} closed the connection") from None
        except BaseException:
            self._forget(rid)
            raise

    def _forget(self, rid: int) -> None:
        """Drop a request whose answer nobody will await. The reader may already have
        failed it (the socket closed): read that failure, or asyncio logs "Future exception
        was never retrieved" at ERROR."""
        answer = self._pending.pop(rid, None)
        if answer is not None and not answer.cancel() and not answer.cancelled():
            answer.exception()

    async def _wait(self, rid: int, answer: asyncio.Future[shardwire.Reply]) -> shardwire.Reply:
        try:
            async with asyncio.timeout(self.timeout):
                reply = await answer
        except TimeoutError:
            raise SpacenbTimeoutError(
                f"shard store {self.url} did not answer in {self.timeout} s"
            ) from None
        finally:
            self._pending.pop(rid, None)
        if reply.error is not None:
            raise reply.error
        return reply

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                reply = shardwire.parse_reply(message)
                future = self._pending.get(reply.id) if reply.id is not None else None
                if future is not None and not future.done():
                    future.set_result(reply)
        except ConnectionClosed:
            pass
        except SpacenbError as exc:
            log.warning("spacenb: shard store %s sent a malformed reply: %s", self.url, exc)
            await self._ws.close()
        finally:
            self._closed = True
            lost = ConnectionLostError(f"shard store {self.url} closed the connection")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(lost)


class ShardLinks:
    """The connections of one transfer: one per store URL, opened on first use and shared.

    A store that could not be reached stays failed for the rest of the transfer.
    """

    def __init__(self, *, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._links: dict[str, asyncio.Future[ShardLink]] = {}

    async def link(self, url: str) -> ShardLink:
        """The link to ``url``; raises why it could not be opened."""
        future = self._links.get(url)
        if future is None:
            future = asyncio.ensure_future(ShardLink.open(url, timeout=self.timeout))
            self._links[url] = future
        # shielded: a fetch that is cancelled must not cancel a connection others wait for
        return await asyncio.shield(future)

    async def aclose(self) -> None:
        """Close every link (and abandon connections still opening)."""
        for future in self._links.values():
            if not future.done():
                future.cancel()
        opened = await asyncio.gather(*self._links.values(), return_exceptions=True)
        for link in opened:
            if isinstance(link, ShardLink):
                with contextlib.suppress(Exception):
                    await link.close()
        self._links.clear()

    async def __aenter__(self) -> ShardLinks:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
