"""A shard store: opaque file shares on disk, named by their SHA-256, over a websocket.

The store knows nothing of spaces or members. An upload (``put``) must carry a ticket the
relay signed for the space, and the share's SHA-256 must equal its name; reads (``get``,
``has``) need only the name, as a content address. Shares are written to a temporary file,
fsynced and renamed into place, so a reader never sees half a share. The wire format is
:mod:`spacenb.protocol.shardwire`; PROTOCOL.md, "Shard stores", specifies it.

A store has quotas: the bytes of shares one user (the ticket's) may upload, the bytes it
holds in all, and the disk space it leaves free. A put over any of them is refused with
:class:`QuotaExceededError`; nothing stored is ever removed to make room. What each user
uploaded is kept in ``<root>/usage.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ..clock import Clock, SystemClock
from ..exceptions import (
    IntegrityError,
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    QuotaExceededError,
    ServerError,
    SpacenbError,
    UsageError,
)
from ..privatefile import write_private
from ..protocol import shardwire
from ..protocol.keys import decode_public_key
from ..protocol.manifest import MAX_SEGMENT_SIZE, SEGMENT_OVERHEAD, share_name
from ..protocol.tickets import Ticket, verify_ticket

__all__ = ["MAX_SHARE_SIZE", "ShardStore"]

log = logging.getLogger("spacenb.shards")

MAX_SHARE_SIZE = MAX_SEGMENT_SIZE + SEGMENT_OVERHEAD  # the largest share a manifest allows (k=1)
_IN_FLIGHT = 8  # requests handled at once per connection
_TICKET_CACHE = 256  # verified tickets remembered
USAGE_FILE = "usage.json"
USAGE_SAVE_DELAY = 0.5  # seconds: usage.json is rewritten at most this often (and at stop)


class ShardStore:
    """Serves the shares under ``root`` to anyone who names them; accepts new ones from
    holders of a ticket signed by ``relay_key``: the ticket key (``sig.…`` public key) of
    the relay, or a sequence of such keys (all the services it stores for; every relay of
    one service signs with the same key).

    ``max_bytes_per_user`` caps what one ticket holder uploads, ``max_bytes`` what the
    store holds, ``min_free_bytes`` the disk space a put must leave free (None or 0: no
    cap). Raises :class:`InvalidKeyError` if a key does not decode, :class:`UsageError`
    if none is given. Use as ``await store.start()`` … ``await store.stop()``, or
    ``async with``.
    """

    def __init__(
        self,
        root: Path | str,
        relay_key: str | Sequence[str],
        *,
        clock: Clock | None = None,
        max_share_size: int = MAX_SHARE_SIZE,
        max_bytes: int | None = None,
        max_bytes_per_user: int | None = None,
        min_free_bytes: int = 0,
    ) -> None:
        self.root = Path(root)
        keys = (relay_key,) if isinstance(relay_key, str) else tuple(dict.fromkeys(relay_key))
        if not keys:
            raise UsageError(
                "a shard store needs the ticket key (sig.…) of the relays it stores for",
                field="relay_key",
            )
        self.relay_keys: tuple[str, ...] = keys
        self.relay_key = keys[0]
        self._relay_keys = [decode_public_key(key, "sig", field="relay_key") for key in keys]
        self.clock: Clock = clock or SystemClock()
        self.max_share_size = max_share_size
        self.url: str | None = None
        self._server: Server | None = None
        self._tmp = self.root / "tmp"
        self._tickets: dict[tuple[str, str], Ticket] = {}
        self.max_bytes = max_bytes
        self.max_bytes_per_user = max_bytes_per_user
        self.min_free_bytes = min_free_bytes
        self.stored_bytes = 0  # bytes of shares held (and reserved for puts in flight)
        self.usage: dict[str, int] = {}  # username → bytes of shares it uploaded here
        self._usage_lock = threading.Lock()
        self._usage_timer: asyncio.TimerHandle | None = None
        self._usage_saves: set[asyncio.Future[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Create ``root`` if needed and listen; sets :attr:`url` to ``ws://host:port``."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        for stale in self._tmp.iterdir():  # left by a crash mid-write
            stale.unlink(missing_ok=True)
        self.stored_bytes, self.usage = await asyncio.to_thread(self._load_usage)
        self._server = await serve(
            self._handle,
            host,
            port,
            compression=None,  # shares are ciphertext: deflate would only burn CPU
            max_size=self.max_share_size + shardwire.MAX_HEADER_BYTES + 4,
            max_queue=4,
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._usage_saves:
            await asyncio.gather(*self._usage_saves, return_exceptions=True)
        if self._usage_timer is not None:
            self._usage_timer.cancel()
            self._usage_timer = None
            await self._save_usage_in_background()

    async def __aenter__(self) -> ShardStore:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def share_path(self, name: str) -> Path:
        """Where the share called ``name`` is (or would be) stored."""
        return self.root / name[:2] / name

    # ------------------------------------------------------------------ serving

    async def _handle(self, ws: ServerConnection) -> None:
        slots = asyncio.Semaphore(_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for message in ws:
                await slots.acquire()
                task = asyncio.create_task(self._answer(ws, message, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except ConnectionClosed:
            pass
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _answer(
        self, ws: ServerConnection, message: bytes | str, slots: asyncio.Semaphore
    ) -> None:
        try:
            try:
                reply = await self._dispatch(shardwire.parse_request(message))
            except SpacenbError as exc:
                reply = shardwire.error_reply(shardwire.request_id_of(message), exc)
            except Exception:
                log.exception("shard store request failed")
                error = ServerError("internal error")
                reply = shardwire.error_reply(shardwire.request_id_of(message), error)
            await ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            slots.release()

    async def _dispatch(self, request: shardwire.ShardRequest) -> bytes:
        if isinstance(request, shardwire.PutShare):
            await self._put(request)
            return shardwire.ok_reply(request.id)
        if isinstance(request, shardwire.GetShare):
            return shardwire.ok_reply(request.id, await asyncio.to_thread(self._read, request.name))
        present = await asyncio.to_thread(self._has, request.names)
        return shardwire.ok_reply(request.id, present=present)

    async def _put(self, request: shardwire.PutShare) -> None:
        if len(request.data) > self.max_share_size:
            raise LimitExceededError(f"share larger than {self.max_share_size} bytes")
        try:
            ticket = self._check_ticket(request.ticket, request.space_id)
        except (IntegrityError, ProtocolError) as exc:
            raise PermissionDeniedError(f"ticket refused: {exc}") from None
        user, size = ticket.username, len(request.data)
        if self.share_path(request.name).is_file():  # stored already (a retry, a repair): free
            await asyncio.to_thread(self._write, request.name, request.data)
            return
        self._reserve(user, size)  # on the loop thread: concurrent puts cannot both pass
        new = False
        try:
            new = await asyncio.to_thread(self._write, request.name, request.data)
        finally:
            if not new:
                self._release(user, size)
        if new:
            self._usage_changed()

    def _usage_changed(self) -> None:
        """Save ``usage.json`` soon: one rewrite for all the puts of the next
        :data:`USAGE_SAVE_DELAY` seconds, not one per share (a file of 1 MB segments over
        five stores would rewrite it five times per MB)."""
        if self._usage_timer is None:
            loop = asyncio.get_running_loop()
            self._usage_timer = loop.call_later(USAGE_SAVE_DELAY, self._start_usage_save)

    def _start_usage_save(self) -> None:
        self._usage_timer = None
        save = asyncio.ensure_future(self._save_usage_in_background())
        self._usage_saves.add(save)
        save.add_done_callback(self._usage_saves.discard)

    async def _save_usage_in_background(self) -> None:
        """Save ``usage.json``; a failure (the disk full, the directory gone) is logged and
        the counts stay in memory, saved again at the next change or at stop."""
        try:
            await asyncio.to_thread(self._save_usage)
        except OSError as exc:
            log.warning("shard store %s: could not save %s (%s); kept in memory",
                        self.root, USAGE_FILE, exc)  # fmt: skip

    def _reserve(self, user: str, size: int) -> None:
        """Count ``size`` bytes against ``user`` and the store, or raise
        :class:`QuotaExceededError` (counting nothing)."""
        used = self.usage.get(user, 0)
        if self.max_bytes_per_user and used + size > self.max_bytes_per_user:
            raise QuotaExceededError(
                f"{user!r} has uploaded {used} bytes of shares to this store; the quota is "
                f"{self.max_bytes_per_user} (shard_bytes_per_user)"
            )
        if self.max_bytes and self.stored_bytes + size > self.max_bytes:
            raise QuotaExceededError(
                f"this shard store is full: it holds {self.stored_bytes} of "
                f"{self.max_bytes} bytes (shard_store_bytes)"
            )
        if self.min_free_bytes:
            free = shutil.disk_usage(self.root).free
            if free - size < self.min_free_bytes:
                raise QuotaExceededError(
                    f"this shard store's disk has {free} bytes free; it keeps at least "
                    f"{self.min_free_bytes} free (shard_min_free_bytes)"
                )
        self.usage[user] = used + size
        self.stored_bytes += size

    def _release(self, user: str, size: int) -> None:
        self.usage[user] = max(self.usage.get(user, 0) - size, 0)
        if not self.usage[user]:
            del self.usage[user]
        self.stored_bytes = max(self.stored_bytes - size, 0)

    def _check_ticket(self, ticket: str, space_id: str) -> Ticket:
        """Verify a ticket; a transfer reuses one for every share, so the signature check
        (an ECDSA verify) is remembered and only the expiry is checked again."""
        now_us = self.clock.now_us()
        known = self._tickets.get((ticket, space_id))
        if known is None:
            known = verify_ticket(ticket, self._relay_keys, space_id=space_id, now_us=now_us)
            if len(self._tickets) >= _TICKET_CACHE:
                del self._tickets[next(iter(self._tickets))]
            self._tickets[(ticket, space_id)] = known
        elif known.expires_at_us < now_us:
            raise IntegrityError("ticket has expired")
        return known

    # ------------------------------------------------------------------ disk (worker threads)

    def _write(self, name: str, data: bytes | memoryview) -> bool:
        """Store a share; whether it is new (a share stored again, which also repairs a
        damaged copy, is not counted twice)."""
        if share_name(data) != name:
            raise IntegrityError("share does not match its name")
        path = self.share_path(name)
        existed = path.is_file()
        path.parent.mkdir(exist_ok=True)
        write_private(path, data, tmp_dir=self._tmp)
        return not existed

    def _load_usage(self) -> tuple[int, dict[str, int]]:
        """The bytes of shares on disk, and what each user uploaded (``usage.json``)."""
        total = 0
        for sub in self.root.iterdir():
            if len(sub.name) == 2 and sub.is_dir():
                total += sum(entry.stat().st_size for entry in os.scandir(sub) if entry.is_file())
        usage: dict[str, int] = {}
        try:
            found = json.loads((self.root / USAGE_FILE).read_text(encoding="utf-8"))
            usage = {str(u): int(b) for u, b in found.items() if int(b) > 0}
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("shard store %s: %s is unreadable (%s); counting from zero",
                        self.root, USAGE_FILE, exc)  # fmt: skip
        return total, usage

    def _save_usage(self) -> None:
        with self._usage_lock:
            text = json.dumps(dict(self.usage), sort_keys=True)
            write_private(self.root / USAGE_FILE, text, tmp_dir=self._tmp)

    def _has(self, names: tuple[str, ...]) -> list[bool]:
        return [self.share_path(name).is_file() for name in names]

    def _read(self, name: str) -> bytes:
        try:
            return self.share_path(name).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no share named {name}") from None
