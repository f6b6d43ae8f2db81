"""The async client: one user signed in to one relay.

It owns the connection, the keystore and the member directory (published keys), and it
routes pushed events to the live spaces, one at a time and in order, on a dispatcher task
(so that verifying a message may await a key look-up without stalling the socket reader).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..clock import Clock, SystemClock
from ..exceptions import (
    ConnectionLostError,
    IntegrityError,
    ProtocolError,
    SpacenbError,
    SpacenbTimeoutError,
)
from ..protocol import crypto, frames
from ..protocol.keys import IdentityKeys, PublicIdentity
from ..protocol.wrap import WrappedKey, unwrap_group_key
from .connection import RelayConnection
from .handlers import Emitter
from .keystore import Keystore

if TYPE_CHECKING:
    from .space import AsyncSpace
    from .space_api import AsyncSpaceAPI

__all__ = ["AsyncClient", "connect"]

log = logging.getLogger("spacenb")


class AsyncClient:
    """A signed-in user. Make one with :func:`connect`."""

    def __init__(
        self,
        url: str,
        *,
        app_key: str,
        username: str,
        keystore: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        request_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.app_key = app_key
        self.username = username
        self.clock: Clock = clock or SystemClock()
        self.keystore = Keystore(keystore, username)
        self.identity: IdentityKeys = self.keystore.load_or_create_identity()
        self.events = Emitter()
        self._directory: dict[str, PublicIdentity] = {}
        self._verify_keys: dict[str, crypto.PublicKey] = {}
        self._spaces: dict[str, AsyncSpace] = {}
        self._queue: asyncio.Queue[frames.Event | _Resync | None] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self.connection = RelayConnection(
            url,
            self._auth_request,
            self._queue.put_nowait,
            self._after_reconnect,
            on_raw=lambda text: self.events.emit("channel:raw_frame", text),
            request_timeout=request_timeout,
        )
        from .space_api import AsyncSpaceAPI

        self.space: AsyncSpaceAPI = AsyncSpaceAPI(self)

    # ------------------------------------------------------------------ life

    async def start(self) -> AsyncClient:
        await self.connection.open()
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="spacenb-dispatch")
        return self

    async def close(self) -> None:
        """Sign out and close the connection; live spaces stop receiving."""
        await self.connection.close()
        if self._dispatcher is not None:
            self._queue.put_nowait(None)
            await asyncio.gather(self._dispatcher, return_exceptions=True)
            self._dispatcher = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @property
    def keeper(self) -> str | None:
        """The relay's keeper username (None if the relay runs without one)."""
        return self.connection.auth.keeper if self.connection.auth else None

    def _auth_request(self, hello: frames.Hello, request_id: int) -> frames.Auth:
        ident = self.identity
        signed = frames.auth_signed_bytes(
            hello.nonce, self.app_key, self.username, ident.signing_key, ident.ecdh_key
        )
        return frames.Auth(
            id=request_id,
            app_key=self.app_key,
            username=self.username,
            signing_key=ident.signing_key,
            ecdh_key=ident.ecdh_key,
            signature=ident.sign(signed),
        )

    async def request(self, cls: type[frames.Request], **fields: Any) -> Any:
        """Send one request to the relay and return its parsed result."""
        return await self.connection.request(cls, **fields)

    # ------------------------------------------------------------------ directory

    async def identities(self, usernames: list[str] | set[str]) -> dict[str, PublicIdentity]:
        """Published keys of ``usernames`` (those that exist), cached for good.

        A username's keys never change (the relay refuses a second key), so the cache is
        never stale.
        """
        missing = sorted({u for u in usernames if u not in self._directory})
        for start in range(0, len(missing), 1000):
            result = await self.request(frames.UserKeys, usernames=missing[start : start + 1000])
            for user in result.users:
                self._directory[user.username] = PublicIdentity(
                    user.username, user.signing_key, user.ecdh_key
                )
        return {u: self._directory[u] for u in usernames if u in self._directory}

    async def identity_of(self, username: str) -> PublicIdentity | None:
        known = self._directory.get(username)
        if known is not None:
            return known
        return (await self.identities([username])).get(username)

    async def verify_key(self, username: str) -> crypto.PublicKey | None:
        """The decoded signing key of ``username`` (decoded once, then cached)."""
        key = self._verify_keys.get(username)
        if key is None:
            ident = await self.identity_of(username)
            if ident is None:
                return None
            key = self._verify_keys[username] = ident.signing_public_key()
        return key

    def cached_identity(self, username: str) -> PublicIdentity | None:
        return self._directory.get(username)

    async def unwrap(self, wrapped: WrappedKey, allowed_wrappers: set[str]) -> bytes:
        """Open a key wrapped for this user, checking who wrapped it.

        Raises :class:`IntegrityError` when the wrapper is not allowed or the blob does not
        verify (a key injected by anyone else is refused).
        """
        if wrapped.recipient != self.username:
            raise IntegrityError("wrapped key is for another member")
        if wrapped.wrapper not in allowed_wrappers:
            raise IntegrityError(f"key wrapped by {wrapped.wrapper!r}, who may not hand out keys")
        wrapper = await self.verify_key(wrapped.wrapper)
        if wrapper is None:
            raise IntegrityError(f"unknown wrapper {wrapped.wrapper!r}")
        return unwrap_group_key(wrapped, self.identity, wrapper)

    # ------------------------------------------------------------------ spaces

    def _register(self, space: AsyncSpace) -> None:
        self._spaces[space.id] = space

    def _unregister(self, space: AsyncSpace) -> None:
        if self._spaces.get(space.id) is space:
            del self._spaces[space.id]

    def live_space(self, space_id: str) -> AsyncSpace | None:
        return self._spaces.get(space_id)

    # ------------------------------------------------------------------ events

    async def _dispatch_loop(self) -> None:
        while True:
            event = await self._queue.get()
            if event is None:
                return
            try:
                await self._route(event)
            except ConnectionLostError as exc:
                # The socket went away mid-handling: the reconnect's catch-up covers it.
                log.info("spacenb: handling %s stopped: %s", type(event).__name__, exc)
            except Exception:
                log.exception("spacenb: handling %s failed", type(event).__name__)

    async def _route(self, event: frames.Event | _Resync) -> None:
        if isinstance(event, _Resync):
            live = self._spaces.get(event.space_id)
            if live is not None:
                try:
                    await live._resync()
                except SpacenbError as exc:
                    log.info("spacenb: catching up with %s failed (%s)", event.space_id, exc)
                    # A lost connection queues its own catch-up once back; a refusal (no
                    # longer a member) is final; only a relay too slow to answer is retried.
                    if isinstance(exc, SpacenbTimeoutError) and self.connection.is_open:
                        asyncio.get_running_loop().call_later(1.0, self._queue.put_nowait, event)
            return
        space_id = _space_of(event)
        space = self._spaces.get(space_id) if space_id else None
        if space is None:
            self.events.emit("channel:raw_frame", event)
            return
        await space._handle_event(event)

    async def _after_reconnect(self) -> None:
        for space in list(self._spaces.values()):
            self._queue.put_nowait(_Resync(space.id))


@dataclass(frozen=True, slots=True)
class _Resync:
    """Queued after a reconnect, so a space's catch-up runs in order with its events."""

    space_id: str


def _space_of(event: frames.Event) -> str | None:
    envelope = getattr(event, "envelope", None)
    if envelope is not None:
        return str(envelope.target)
    space_id = getattr(event, "space_id", None)
    return space_id if isinstance(space_id, str) else None


async def connect(
    url: str,
    *,
    app_key: str,
    username: str,
    keystore: str | os.PathLike[str] | None = None,
    clock: Clock | None = None,
) -> AsyncClient:
    """Sign up (first use of ``username``) or sign in, and return the client.

    Raises :class:`AuthenticationError` for a wrong app key or a username bound to another
    key, :class:`ConnectionLostError` when the relay cannot be reached.
    """
    if not isinstance(username, str) or not username:
        raise ProtocolError("username must be a non-empty string", field="username")
    client = AsyncClient(url, app_key=app_key, username=username, keystore=keystore, clock=clock)
    return await client.start()
