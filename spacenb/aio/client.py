"""The async client: one user signed in to one relay.

It owns the connection, the keystore and the member directory (published keys), and it
routes pushed events to the live spaces, one at a time and in order, on a dispatcher task
(so that verifying a message may await a key look-up without stalling the socket reader).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import urlsplit

from .._deprecated import warn_deprecated
from ..clock import Clock, SystemClock
from ..exceptions import (
    ConnectionLostError,
    IdentityChangedError,
    NotFoundError,
    SpacenbError,
    SpacenbTimeoutError,
    UsageError,
)
from ..protocol import frames
from ..protocol.envelope import new_session_id
from ..protocol.frames import UNSENT
from ..protocol.keys import IdentityKeys, PublicIdentity
from ..protocol.keys import fingerprint as _fingerprint
from . import readahead, verify_pool
from .connection import RelayConnection
from .events import TrustedIdentity
from .handlers import Emitter
from .keystore import Keystore, Pin

if TYPE_CHECKING:
    from .space import AsyncSpace
    from .space_api import AsyncSpaceAPI

__all__ = ["AsyncClient", "connect"]

log = logging.getLogger("spacenb")
R = TypeVar("R")


def check_relay_url(url: object) -> str:
    """``url`` if it is a ``ws://`` or ``wss://`` URL, else :class:`UsageError`."""
    if not isinstance(url, str) or urlsplit(url).scheme not in ("ws", "wss"):
        raise UsageError(
            f"a relay URL starts with ws:// or wss:// (like spacenb.serve().url), got {url!r}",
            field="url",
        )
    return url


def check_relay_urls(url: object) -> tuple[str, ...]:
    """A relay URL, or a non-empty list of them (the relays of one service), as a tuple
    of distinct ``ws://``/``wss://`` URLs; :class:`UsageError` otherwise."""
    if isinstance(url, str):
        return (check_relay_url(url),)
    if not isinstance(url, list | tuple) or not url:
        raise UsageError(
            f"url is a relay URL or a non-empty list of the relay URLs of one service, got {url!r}",
            field="url",
        )
    urls = tuple(check_relay_url(one) for one in url)
    if len(set(urls)) != len(urls):
        raise UsageError(f"url names a relay twice: {list(urls)}", field="url")
    return urls


class AsyncClient:
    """A signed-in user. Make one with :func:`connect`.

    ``url`` is one relay URL or a list of the relays of one service: the client signs in
    to the first it reaches and, when that relay is lost, moves to another, signs in
    again and catches up (``url`` is the relay it is on now, ``urls`` all of them).

    ``allowed_stores``: shard store URLs to read files from besides the relay's own (the
    ones it names at sign-in); shares are never fetched from any other store, whatever a
    manifest says.

    ``log_lag_grace``: how many seconds a relay may serve a space's state log with a head
    below the one this client holds, asked again with backoff, before that is a
    :class:`ForkError` (a relay of the service that just took over after a failover may
    lag behind for a moment; one that stays behind rolled the client back).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        app_key: str,
        username: str,
        keystore: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        request_timeout: float = 30.0,
        allowed_stores: Iterable[str] = (),
        log_lag_grace: float = 3.0,
    ) -> None:
        self.urls = check_relay_urls(url)
        if (
            isinstance(log_lag_grace, bool)
            or not isinstance(log_lag_grace, int | float)
            or not 0 <= log_lag_grace < 3600
        ):
            raise UsageError("log_lag_grace is seconds, 0 to 3600", field="log_lag_grace")
        self.log_lag_grace = float(log_lag_grace)
        self.allowed_stores = frozenset(allowed_stores)
        self.app_key = app_key
        self.username = username
        self.clock: Clock = clock or SystemClock()
        self.keystore = Keystore(keystore, username)
        self.identity: IdentityKeys = self.keystore.load_or_create_identity()
        self.events = Emitter()
        self._directory: dict[str, PublicIdentity] = {}
        self._pins, self._channel_pins = self.keystore.load_pins()
        self._pins_dirty = False
        self.session_id = new_session_id()  # sequence numbers of this session's messages
        self._last_seq = 0
        self._spaces: dict[str, AsyncSpace] = {}
        self._queue: asyncio.Queue[frames.Event | _Resync | None] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self.connection = RelayConnection(
            self.urls,
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
        """Sign out and close the connection; live spaces stop receiving. No task of this
        client is left behind (async handlers still running are cancelled)."""
        await readahead.close_all(self)
        for space in list(self._spaces.values()):
            space.save_marks()
        if self._pins_dirty:
            self._write_pins()
        await self.connection.close()
        if self._dispatcher is not None:
            self._queue.put_nowait(None)
            await asyncio.gather(self._dispatcher, return_exceptions=True)
            self._dispatcher = None
        for emitter in [self.events, *(s.events for s in self._spaces.values())]:
            await emitter.cancel()
        await verify_pool.close_shared()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @property
    def url(self) -> str:
        """The relay this client is on (with several ``urls``, the one it moved to)."""
        return self.connection.url

    @property
    def keeper(self) -> str | None:
        """The relay's keeper username (None if the relay runs without one)."""
        return self.connection.auth.keeper if self.connection.auth else None

    def readable_stores(self) -> frozenset[str]:
        """The shard stores this client fetches shares from: the relay's own (named at
        sign-in) and ``allowed_stores``."""
        auth = self.connection.auth
        return self.allowed_stores.union(auth.shard_stores or () if auth else ())

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

    @overload
    async def request(
        self, request: frames.Request[R], /, *, timeout: float | None = None
    ) -> R: ...

    @overload
    async def request(  # deprecated: build the request (gone in 0.3)
        self, request: type[frames.Request[R]], /, *, timeout: float | None = None, **fields: Any
    ) -> R: ...

    async def request(
        self,
        request: frames.Request[R] | type[frames.Request[R]],
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> R:
        """Send one request to the relay and return its parsed result: build it with the
        placeholder id, ``client.request(frames.Resolve(frames.UNSENT, name="lobby"))``,
        and the connection gives it its id. (The old form, ``request(frames.Resolve,
        name="lobby")``, still works, deprecated, until 0.3.)"""
        if isinstance(request, type):
            warn_deprecated(
                "client.request(cls, **fields) is deprecated; build the request: "
                "client.request(cls(frames.UNSENT, **fields))"
            )
            request = request(frames.UNSENT, **fields)
        elif fields:
            raise TypeError(f"unexpected keyword arguments {sorted(fields)} with a request")
        return await self.connection.request(request, timeout=timeout)

    def next_seq(self) -> int:
        """The next sequence number of this session: increasing, and also across restarts
        (it never falls below the clock in microseconds)."""
        self._last_seq = max(self._last_seq + 1, self.clock.now_us())
        return self._last_seq

    # ------------------------------------------------------------------ trust

    def pinned_keys(self, username: str) -> tuple[str, str] | None:
        """The ``(signing, ecdh)`` key texts pinned for ``username``, or None."""
        if username == self.username:
            return (self.identity.signing_key, self.identity.ecdh_key)
        pin = self._pins.get(username)
        return (pin.signing_key, pin.ecdh_key) if pin else None

    def pin(self, username: str, signing_key: str, ecdh_key: str) -> None:
        """Pin ``username``'s keys on first sight; :class:`IdentityChangedError` if other
        keys are pinned already."""
        known = self.pinned_keys(username)
        if known is None:
            self._pins[username] = Pin(signing_key, ecdh_key, self.clock.now_us())
            self._save_pins()
        elif known != (signing_key, ecdh_key):
            raise IdentityChangedError(
                f"the relay presents identity keys for {username!r} that differ from the ones "
                f"this client pinned (fingerprint {_fingerprint(*known)}): if {username} really "
                "has new keys, check their fingerprint with them and call "
                "accept_new_identity()",
                username=username,
            )

    def check_pin(self, username: str, signing_key: str, ecdh_key: str) -> str | None:
        """Pin keys seen in a space's log on first sight; why they differ from a pin, or
        None (the member core's ``trust`` question)."""
        try:
            self.pin(username, signing_key, ecdh_key)
        except IdentityChangedError as exc:
            return str(exc)
        return None

    def _save_pins(self) -> None:
        """Persist the pins, once per event-loop turn however many changed in it (a
        newcomer to a channel of thousands pins them all while verifying one log page)."""
        if self.keystore.in_memory:
            return  # the pins live in this object; there is nothing to write them to
        if self._pins_dirty:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_pins()
            return
        self._pins_dirty = True
        loop.call_soon(self._write_pins)

    def _write_pins(self) -> None:
        self._pins_dirty = False
        if not self.keystore.in_memory:
            self.keystore.save_pins(self._pins, self._channel_pins)

    def pin_channel(self, name: str, space_id: str) -> None:
        """Pin a channel name to its space id on first sight."""
        known = self._channel_pins.get(name)
        if known is None:
            self._channel_pins[name] = space_id
            self._save_pins()
        elif known != space_id:
            raise IdentityChangedError(
                f"the relay resolves channel {name!r} to {space_id}, but this client pinned "
                f"it to {known}"
            )

    async def fingerprint_of(self, username: str) -> str:
        """The fingerprint of the keys pinned for ``username`` (pinned now if unseen).

        Raises :class:`NotFoundError` for a user the relay does not know.
        """
        keys = self.pinned_keys(username)
        if keys is None:
            found = await self.identities([username])
            if username not in found:
                raise NotFoundError(f"no user named {username!r}")
            keys = self.pinned_keys(username)
            assert keys is not None
        return _fingerprint(*keys)

    async def verify_identity(self, username: str, expected: str) -> None:
        """Compare ``username``'s pinned fingerprint with one learned out of band: mark
        them verified on a match, raise :class:`IdentityChangedError` on a mismatch."""
        if not isinstance(expected, str):
            raise UsageError("a fingerprint is text", field="fingerprint")
        actual = await self.fingerprint_of(username)
        if " ".join(expected.lower().split()) != actual:
            raise IdentityChangedError(
                f"the keys pinned for {username!r} have fingerprint {actual}, not {expected}",
                username=username,
            )
        pin = self._pins.get(username)
        if pin is not None and not pin.verified:
            self._pins[username] = Pin(pin.signing_key, pin.ecdh_key, pin.first_seen_us, True)
            self._write_pins()  # an explicit decision: on disk before this returns

    def trusted_identities(self) -> list[TrustedIdentity]:
        """Every user pinned by this client, by name."""
        from datetime import UTC, datetime

        return [
            TrustedIdentity(
                name,
                _fingerprint(p.signing_key, p.ecdh_key),
                p.signing_key,
                p.ecdh_key,
                datetime.fromtimestamp(p.first_seen_us / 1_000_000, tz=UTC),
                p.verified,
            )
            for name, p in sorted(self._pins.items())
        ]

    async def accept_new_identity(self, username: str, fingerprint: str | None = None) -> str:
        """Replace the keys pinned for ``username`` with those the relay presents now (a
        user who really did reinstall). With ``fingerprint`` (learned out of band), accept
        them only if they match it, and mark them verified; otherwise raise
        :class:`IdentityChangedError`. Returns the new fingerprint."""
        result = await self.request(frames.UserKeys(UNSENT, usernames=(username,)))
        if not result.users:
            raise NotFoundError(f"no user named {username!r}")
        user = result.users[0]
        presented = _fingerprint(user.signing_key, user.ecdh_key)
        if fingerprint is not None and " ".join(fingerprint.lower().split()) != presented:
            raise IdentityChangedError(
                f"the relay presents keys for {username!r} with fingerprint {presented}, not "
                f"{fingerprint}: nothing was changed",
                username=username,
            )
        old = self._pins.get(username)
        unchanged = old is not None and (old.signing_key, old.ecdh_key) == (
            user.signing_key,
            user.ecdh_key,
        )
        verified = fingerprint is not None or (unchanged and old is not None and old.verified)
        first_seen = old.first_seen_us if unchanged and old is not None else self.clock.now_us()
        self._pins[username] = Pin(user.signing_key, user.ecdh_key, first_seen, verified)
        self._write_pins()  # an explicit decision: on disk before this returns
        self._directory[username] = PublicIdentity(username, user.signing_key, user.ecdh_key)
        for space in self._spaces.values():
            space.core.recheck_trust()
        return presented

    # ------------------------------------------------------------------ directory

    async def identities(self, usernames: list[str] | set[str]) -> dict[str, PublicIdentity]:
        """The relay's published keys of ``usernames`` (those that exist), pinned on first
        sight. Raises :class:`IdentityChangedError` when they differ from a pin."""
        missing = sorted({u for u in usernames if u not in self._directory})
        size = frames.MAX_USER_KEYS
        for start in range(0, len(missing), size):
            batch = tuple(missing[start : start + size])
            result = await self.request(frames.UserKeys(UNSENT, usernames=batch))
            for user in result.users:
                self.pin(user.username, user.signing_key, user.ecdh_key)
                self._directory[user.username] = PublicIdentity(
                    user.username, user.signing_key, user.ecdh_key
                )
        return {u: self._directory[u] for u in usernames if u in self._directory}

    # ------------------------------------------------------------------ spaces

    def register(self, space: AsyncSpace) -> None:
        self._spaces[space.id] = space

    def unregister(self, space: AsyncSpace) -> None:
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
                    await live.resync()
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
        await space.handle_event(event)

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
    url: str | Sequence[str],
    *,
    app_key: str,
    username: str,
    keystore: str | os.PathLike[str] | None = None,
    clock: Clock | None = None,
    allowed_stores: Iterable[str] = (),
    log_lag_grace: float = 3.0,
) -> AsyncClient:
    """Sign up (first use of ``username``) or sign in, and return the client.

    ``url`` may be a list of the relay URLs of one service (relays on one database): the
    client signs in to the first that answers and, when its relay is lost, moves to the
    others in turn, signs in again and catches up, with no gap and no duplicate.

    Raises :class:`UsageError` (a ``ValueError``) for a URL that is not ``ws://`` or
    ``wss://`` (or an empty list), :class:`AuthenticationError` for a wrong app key or a
    username bound to another key, :class:`ConnectionLimitError` when the relay holds as
    many connections of this user or address as it allows, :class:`ConnectionLostError`
    when no relay can be reached. ``log_lag_grace``: see :class:`AsyncClient`.
    """
    if not isinstance(username, str) or not username:
        raise UsageError("username must be a non-empty string", field="username")
    client = AsyncClient(
        url,
        app_key=app_key,
        username=username,
        keystore=keystore,
        clock=clock,
        allowed_stores=allowed_stores,
        log_lag_grace=log_lag_grace,
    )
    return await client.start()
