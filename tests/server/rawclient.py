"""A frame-level test client for the relay, built only from ``spacenb.protocol``.

It speaks PROTOCOL.md directly (no ``spacenb.aio``), so the server tests check the wire
contract itself: every request is a frames dataclass, every answer is parsed with the
protocol's own codec, and pushed events are buffered until a test asks for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from spacenb.clock import Clock
from spacenb.exceptions import error_for_code
from spacenb.protocol import frames
from spacenb.protocol.envelope import Envelope, seal_envelope
from spacenb.protocol.keyring import Keyring
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair, decode_public_key
from spacenb.protocol.wrap import WrappedKey, unwrap_group_key, wrap_group_key
from spacenb.server import RunningServer, start_server

TIMEOUT = 5.0


@contextlib.asynccontextmanager
async def running(data_dir: Path, **options: Any) -> AsyncIterator[RunningServer]:
    """A real server on loopback, port 0, without shard stores unless asked."""
    options.setdefault("shards", 0)
    server = await start_server(data_dir, **options)
    try:
        yield server
    finally:
        await server.stop()


class RawClient:
    """One websocket to the relay. ``call`` raises the error class of an error frame;
    ``request`` returns the raw answer; ``event`` waits for a pushed event."""

    def __init__(self, ws: ClientConnection, hello: frames.Hello) -> None:
        self.ws = ws
        self.hello = hello
        self.events: list[frames.Event] = []
        self.username: str | None = None
        self.identity: IdentityKeys | None = None
        self._ids = itertools.count(1)

    @classmethod
    async def open(cls, url: str) -> RawClient:
        ws = await connect(url, max_size=None, compression=None)
        hello = frames.parse_server_frame(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert isinstance(hello, frames.Hello)
        return cls(ws, hello)

    async def close(self) -> None:
        await self.ws.close()

    # -- frames

    async def send_text(self, text: str | bytes) -> None:
        await self.ws.send(text)

    async def next_frame(self, timeout: float = TIMEOUT) -> frames.Response | frames.ErrorFrame:
        """The next answer, buffering events that arrive before it."""
        while True:
            frame = frames.parse_server_frame(await asyncio.wait_for(self.ws.recv(), timeout))
            if isinstance(frame, frames.Event):
                self.events.append(frame)
            else:
                return frame

    async def request(
        self, cls: type[frames.Request], **fields: Any
    ) -> frames.Response | frames.ErrorFrame:
        """Send one request and return its answer frame (result or error)."""
        rid = next(self._ids)
        await self.send_text(cls(id=rid, **fields).to_json())
        answer = await self.next_frame()
        assert answer.id == rid, (answer, rid)
        return answer

    async def call(self, cls: type[frames.Request], **fields: Any) -> Any:
        """Send one request; return its parsed result or raise the matching error."""
        answer = await self.request(cls, **fields)
        if isinstance(answer, frames.ErrorFrame):
            raise error_for_code(answer.code, answer.message)
        return frames.parse_result(cls, answer.result)

    async def event(self, ev: str, timeout: float = TIMEOUT, **match: Any) -> Any:
        """The first buffered or next pushed ``ev`` event whose fields equal ``match``."""

        def wanted(e: frames.Event) -> bool:
            return ev == e.EV and all(getattr(e, k) == v for k, v in match.items())

        async def wait() -> frames.Event:
            while True:
                for i, e in enumerate(self.events):
                    if wanted(e):
                        return self.events.pop(i)
                frame = frames.parse_server_frame(await self.ws.recv())
                assert isinstance(frame, frames.Event), f"unexpected answer {frame!r}"
                self.events.append(frame)

        return await asyncio.wait_for(wait(), timeout)

    async def no_event(self, ev: str, wait: float = 0.2) -> None:
        """Assert no ``ev`` event is buffered or arrives within ``wait`` seconds."""
        await self.call(frames.Ping)  # everything pushed before the ping is now buffered
        with contextlib.suppress(TimeoutError):
            await self.event(ev, timeout=wait)
            raise AssertionError(f"unexpected {ev} event")

    # -- identity

    async def auth(
        self, app_key: str, username: str, identity: IdentityKeys | None = None
    ) -> frames.AuthResult:
        identity = identity or IdentityKeys.generate()
        signed = frames.auth_signed_bytes(
            self.hello.nonce, app_key, username, identity.signing_key, identity.ecdh_key
        )
        result: frames.AuthResult = await self.call(
            frames.Auth,
            app_key=app_key,
            username=username,
            signing_key=identity.signing_key,
            ecdh_key=identity.ecdh_key,
            signature=identity.sign(signed),
        )
        self.username, self.identity = username, identity
        return result

    # -- spaces and keys

    def wrap(self, ring: Keyring, epoch: int, recipient: frames.UserEntry) -> WrappedKey:
        """Wrap this client's key of ``epoch`` for ``recipient``."""
        assert self.identity is not None and self.username is not None
        return wrap_group_key(
            ring.key(epoch),
            space_id=ring.space_id,
            epoch=epoch,
            recipient=recipient.username,
            recipient_ecdh=decode_public_key(recipient.ecdh_key, "dh"),
            wrapper=self.username,
            wrapper_identity=self.identity,
        )

    async def user(self, username: str) -> frames.UserEntry:
        result = await self.call(frames.UserKeys, usernames=(username,))
        (user,) = result.users
        return user

    async def create_space(
        self,
        *,
        name: str | None = None,
        policy: str = "static",
        private: bool = False,
        manual_admit: bool = False,
        keeper: bool = True,
    ) -> tuple[frames.SpaceInfo, Keyring]:
        """Create a space (a channel when named), wrapping epoch 0 to self and keeper."""
        assert self.username is not None
        pair = SpaceKeyPair.generate()
        ring = Keyring.fresh(pair.space_id, policy)  # type: ignore[arg-type]
        recipients = [await self.user(self.username)]
        if keeper:
            recipients.append(await self.user(self.hello.keeper or "keeper"))
        signed = frames.create_space_signed_bytes(
            pair.space_id, self.username, policy, private, manual_admit, name
        )
        info = await self.call(
            frames.CreateSpace,
            space_id=pair.space_id,
            policy=policy,
            private=private,
            manual_admit=manual_admit,
            name=name,
            signature=pair.sign(signed),
            keys=tuple(self.wrap(ring, 0, r) for r in recipients),
        )
        return info, ring

    async def keyring(self, info: frames.SpaceInfo, keys: Any = None) -> Keyring:
        """Unwrap the keys wrapped for this client (fetched if not given)."""
        assert self.identity is not None
        if keys is None:
            keys = (await self.call(frames.FetchKeys, space_id=info.space_id)).keys
        ring = Keyring(info.space_id, info.policy)
        for key in keys:
            wrapper = await self.user(key.wrapper)
            signer = decode_public_key(wrapper.signing_key, "sig")
            ring.add(key.epoch, unwrap_group_key(key, self.identity, signer))
        return ring

    def seal(
        self,
        ring: Keyring,
        body: Any,
        *,
        kind: str = "msg",
        subject: str = "default",
        epoch: int | None = None,
        clock: Clock | None = None,
    ) -> Envelope:
        assert self.identity is not None and self.username is not None
        epoch = ring.current_epoch if epoch is None else epoch
        envelope, _ = seal_envelope(
            self.identity,
            ring.key(epoch),
            kind=kind,  # type: ignore[arg-type]
            source=self.username,
            target=ring.space_id,
            subject=subject,
            epoch=epoch,
            content_type=None,
            body=body,
            clock=clock,
        )
        return envelope

    async def send(self, ring: Keyring, body: Any, **options: Any) -> int:
        """Seal and send a message; its handle."""
        result = await self.call(frames.Send, envelope=self.seal(ring, body, **options))
        return int(result.handle)


async def user(server: RunningServer, username: str, **options: Any) -> RawClient:
    """A connected client signed in (up) as ``username``."""
    client = await RawClient.open(server.url)
    await client.auth(server.app_key, username, **options)
    return client
