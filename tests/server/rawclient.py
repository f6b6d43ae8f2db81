"""A frame-level test client for the relay, built only from ``spacenb.protocol``.

It speaks the wire protocol directly (no ``spacenb.aio``), so the server tests check the
wire contract itself: every request is a frames dataclass, every answer is parsed with the
protocol's own codec, and pushed events are buffered until a test asks for them.

Protocol v2: every change to a space is a signed state event. The client keeps, per
space, the log it fetched with ``state_log`` and verified with
:class:`~spacenb.protocol.statelog.SpaceState`; it builds events on that head
(:meth:`RawClient.make`), appends them (:meth:`RawClient.append`), joins with its own
``add`` (:meth:`RawClient.join`) and seals envelopes bound to the head it holds
(:meth:`RawClient.seal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from spacenb.clock import Clock, SystemClock
from spacenb.exceptions import error_for_code
from spacenb.protocol import frames
from spacenb.protocol.encoding import b64e
from spacenb.protocol.envelope import Envelope, new_session_id, seal_envelope
from spacenb.protocol.keyring import Keyring
from spacenb.protocol.keys import IdentityKeys, LinkKeyPair, SpaceKeyPair, decode_public_key
from spacenb.protocol.statelog import (
    SpaceState,
    StateEvent,
    key_commitment,
    link_id_of_key,
    link_keys_from_token,
    link_proof_bytes,
    make_event,
    make_genesis,
    new_link_token,
)
from spacenb.protocol.wrap import WrappedKey, unwrap_group_key, wrap_group_key
from spacenb.server import RunningServer, start_server

TIMEOUT = 5.0
# The database relays started by ``running`` use: None for SQLite in the data directory,
# or a postgresql:// URL (the ``backend`` fixture of tests/server/conftest.py sets it).
DATABASE: str | None = None


@contextlib.asynccontextmanager
async def running(data_dir: Path, **options: Any) -> AsyncIterator[RunningServer]:
    """A real server on loopback, port 0, without shard stores unless asked, on the
    test's storage backend (:data:`DATABASE`)."""
    options.setdefault("shards", 0)
    options.setdefault("database", DATABASE)
    server = await start_server(data_dir, **options)
    try:
        yield server
    finally:
        await server.stop()


def entry(state: SpaceState, name: str) -> frames.UserEntry:
    """A member's keys as the log records them."""
    member = state.members[name]
    return frames.UserEntry(name, member.signing_key, member.ecdh_key)


class RawClient:
    """One websocket to the relay. ``call`` raises the error class of an error frame;
    ``request`` returns the raw answer; ``event`` waits for a pushed event.

    ``logs`` holds the verified state log of each space this client fetched or created;
    ``links`` the link keys it reads a private space's log with.
    """

    def __init__(self, ws: ClientConnection, hello: frames.Hello) -> None:
        self.ws = ws
        self.hello = hello
        self.events: list[frames.Event] = []
        self.username: str | None = None
        self.identity: IdentityKeys | None = None
        self.clock: Clock = SystemClock()
        self.logs: dict[str, SpaceState] = {}
        self.links: dict[str, LinkKeyPair] = {}
        self.space_keys: dict[str, SpaceKeyPair] = {}
        self.sid = new_session_id()
        self._ids = itertools.count(1)
        self._seq = 0

    @classmethod
    async def open(cls, url: str, **options: Any) -> RawClient:
        """Connect (``options`` go to websockets' ``connect``: ``local_addr``...)."""
        ws = await connect(url, max_size=None, compression=None, **options)
        hello = frames.parse_server_frame(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert isinstance(hello, frames.Hello)
        return cls(ws, hello)

    async def close(self) -> None:
        await self.ws.close()

    @property
    def me(self) -> str:
        assert self.username is not None, "not signed in"
        return self.username

    @property
    def keys(self) -> IdentityKeys:
        assert self.identity is not None, "not signed in"
        return self.identity

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
        self, cls: type[frames.Request[Any]], **fields: Any
    ) -> frames.Response | frames.ErrorFrame:
        """Send one request and return its answer frame (result or error)."""
        rid = next(self._ids)
        await self.send_text(cls(id=rid, **fields).to_json())
        answer = await self.next_frame()
        assert answer.id == rid, (answer, rid)
        return answer

    async def call(self, cls: type[frames.Request[Any]], **fields: Any) -> Any:
        """Send one request; return its parsed result or raise the matching error."""
        answer = await self.request(cls, **fields)
        if isinstance(answer, frames.ErrorFrame):
            raise error_for_code(answer.code, answer.message)
        return frames.parse_result(cls, answer.result)

    async def event(
        self,
        ev: str,
        timeout: float = TIMEOUT,
        *,
        where: Callable[[Any], bool] | None = None,
        **match: Any,
    ) -> Any:
        """The first buffered or next pushed ``ev`` event whose fields equal ``match``
        (and for which ``where`` holds)."""

        def wanted(e: frames.Event) -> bool:
            return (
                ev == e.EV
                and all(getattr(e, k) == v for k, v in match.items())
                and (where is None or where(e))
            )

        async def wait() -> frames.Event:
            while True:
                for i, e in enumerate(self.events):
                    if wanted(e):
                        return self.events.pop(i)
                frame = frames.parse_server_frame(await self.ws.recv())
                assert isinstance(frame, frames.Event), f"unexpected answer {frame!r}"
                self.events.append(frame)

        return await asyncio.wait_for(wait(), timeout)

    async def state_event(self, kind: str, timeout: float = TIMEOUT, **body: Any) -> StateEvent:
        """The next pushed ``state`` event of ``kind`` whose body has these fields."""

        def wanted(e: frames.StatePushed) -> bool:
            fields = e.event.fields()
            return e.event.kind == kind and all(fields[k] == v for k, v in body.items())

        pushed: frames.StatePushed = await self.event("state", timeout, where=wanted)
        return pushed.event

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

    async def user(self, username: str) -> frames.UserEntry:
        result: frames.UserKeysResult = await self.call(frames.UserKeys, usernames=(username,))
        (found,) = result.users
        return found

    # -- keys

    def wrap(
        self,
        ring: Keyring,
        epoch: int,
        recipient: frames.UserEntry,
        *,
        key: bytes | None = None,
        space_id: str | None = None,
    ) -> WrappedKey:
        """Wrap this client's key of ``epoch`` (or ``key``) for ``recipient``."""
        return wrap_group_key(
            ring.key(epoch) if key is None else key,
            space_id=space_id or ring.space_id,
            epoch=epoch,
            recipient=recipient.username,
            recipient_ecdh=decode_public_key(recipient.ecdh_key, "dh"),
            wrapper=self.me,
            wrapper_identity=self.keys,
        )

    async def keyring(self, space_id: str, keys: Sequence[WrappedKey] | None = None) -> Keyring:
        """Unwrap the keys wrapped for this client (fetched if not given), checking each
        wrapper's signature with the key the log records and each key's commitment."""
        if keys is None:
            keys = (await self.call(frames.FetchKeys, space_id=space_id)).keys
        state = await self.sync(space_id)
        ring = Keyring(space_id, state.policy)
        for key in keys:
            signer = state.verify_key_at(key.wrapper, state.head_seq)
            assert signer is not None, f"{key.wrapper} is not a member"
            group_key = unwrap_group_key(key, self.keys, signer)
            state.check_commitment(key.epoch, group_key)
            ring.add(key.epoch, group_key)
        return ring

    # -- the state log

    def genesis(
        self,
        pair: SpaceKeyPair,
        ring: Keyring,
        *,
        name: str | None = None,
        private: bool = False,
        manual_admit: bool = False,
        keeper: frames.UserEntry | None = None,
        owner: str | None = None,
        owner_keys: IdentityKeys | None = None,
        at_us: int | None = None,
    ) -> StateEvent:
        """A genesis signed by ``pair`` naming this client (or ``owner``) as owner."""
        owner_keys = owner_keys or self.keys
        return make_genesis(
            pair,
            owner=owner or self.me,
            owner_signing_key=owner_keys.signing_key,
            owner_ecdh_key=owner_keys.ecdh_key,
            policy=ring.policy,
            private=private,
            manual_admit=manual_admit,
            name=name,
            keeper=(keeper.username, keeper.signing_key, keeper.ecdh_key) if keeper else None,
            group_key=ring.key(0),
            at_us=self.clock.now_us() if at_us is None else at_us,
        )

    async def create_space(
        self,
        *,
        name: str | None = None,
        policy: str = "static",
        private: bool = False,
        manual_admit: bool = False,
        keeper: bool | None = None,
    ) -> tuple[frames.SpaceInfo, Keyring]:
        """Create a space (a channel when named) from a genesis signed by a fresh space
        key, wrapping epoch 0 to self and, unless admission is by hand, to the keeper."""
        if keeper is None:
            keeper = not manual_admit
        pair = SpaceKeyPair.generate()
        ring = Keyring.fresh(pair.space_id, policy)  # type: ignore[arg-type]
        keeper_entry = await self.user(self.hello.keeper or "keeper") if keeper else None
        genesis = self.genesis(
            pair, ring, name=name, private=private, manual_admit=manual_admit, keeper=keeper_entry
        )
        recipients = [await self.user(self.me)] + ([keeper_entry] if keeper_entry else [])
        info: frames.SpaceInfo = await self.call(
            frames.CreateSpace,
            genesis=genesis,
            keys=tuple(self.wrap(ring, 0, r) for r in recipients),
        )
        self.logs[info.space_id] = SpaceState(genesis)
        self.space_keys[info.space_id] = pair
        return info, ring

    def link_proof(self, space_id: str, link: LinkKeyPair) -> tuple[str, bytes]:
        """``(link_id, proof)`` to read a private space's log as a link holder on this
        connection."""
        signed = frames.log_read_signed_bytes(space_id, self.me, self.hello.nonce)
        return link_id_of_key(link.link_key), link.sign(signed)

    async def read_log(
        self, space_id: str, since: int = 0, limit: int = frames.MAX_LOG_PAGE, **extra: Any
    ) -> frames.StateLogPage:
        """One ``state_log`` page, with this client's link proof when it holds one."""
        link = self.links.get(space_id)
        if link is not None and "link_id" not in extra:
            extra["link_id"], extra["proof"] = self.link_proof(space_id, link)
        page: frames.StateLogPage = await self.call(
            frames.GetStateLog, space_id=space_id, since=since, limit=limit, **extra
        )
        return page

    async def sync(self, space_id: str) -> SpaceState:
        """Fetch the log from this client's head on and verify every new event."""
        while True:
            state = self.logs.get(space_id)
            since = 0 if state is None else state.head_seq + 1
            page = await self.read_log(space_id, since)
            for event in page.events:
                state = self.logs.get(space_id)
                if state is None:
                    self.logs[space_id] = SpaceState(event)
                elif event.seq <= state.head_seq:
                    assert state.hash_at(event.seq) == event.hash(), "the relay forked the log"
                else:
                    state.apply(event)
            state = self.logs[space_id]
            if not page.events or state.head_seq >= page.head_seq:
                assert state.head_seq == page.head_seq, (state.head_seq, page.head_seq)
                return state

    def make(
        self,
        space_id: str,
        kind: str,
        body: dict[str, Any],
        *,
        seq: int | None = None,
        prev: bytes | None = None,
        actor: str | None = None,
        signer: IdentityKeys | None = None,
        at_us: int | None = None,
    ) -> StateEvent:
        """A state event signed by this client on the head of its copy of the log (each
        part can be overridden to build a bad one)."""
        state = self.logs[space_id]
        return make_event(
            signer or self.keys,
            space_id=space_id,
            seq=state.head_seq + 1 if seq is None else seq,
            prev=state.head if prev is None else prev,
            kind=kind,
            actor=actor or self.me,
            at_us=self.clock.now_us() if at_us is None else at_us,
            body=body,
        )

    async def append_event(
        self, event: StateEvent, keys: Sequence[WrappedKey] = (), *, space_id: str | None = None
    ) -> int:
        """Send an already built event; once appended, it is this client's new head (the
        relay took it, so it followed the head this client built it on)."""
        target = space_id or event.space_id
        result = await self.call(frames.Append, space_id=target, event=event, keys=tuple(keys))
        self.logs[target].apply(event)
        return int(result.seq)

    async def append(
        self, space_id: str, kind: str, body: dict[str, Any], keys: Sequence[WrappedKey] = ()
    ) -> int:
        """Sync, sign ``kind`` with ``body`` on the head and append it; its seq."""
        await self.sync(space_id)
        return await self.append_event(self.make(space_id, kind, body), keys)

    async def invite(
        self,
        space_id: str,
        member: str,
        role: str = "viewer",
        *,
        pin: frames.UserEntry | None = None,
    ) -> int:
        body = {
            "member": member,
            "role": role,
            "signing_key": pin.signing_key if pin else None,
            "ecdh_key": pin.ecdh_key if pin else None,
        }
        return await self.append(space_id, "invite", body)

    async def set_role(self, space_id: str, member: str, role: str) -> int:
        return await self.append(space_id, "role", {"member": member, "role": role})

    async def remove(self, space_id: str, member: str) -> int:
        return await self.append(space_id, "remove", {"member": member})

    async def leave(self, space_id: str) -> int:
        return await self.append(space_id, "leave", {"member": self.me})

    async def delete(self, space_id: str, handle: int, author: str | None = None) -> int:
        return await self.append(
            space_id, "delete", {"handle": handle, "author": author or self.me}
        )

    def link_body(
        self,
        token: str,
        *,
        role: str = "viewer",
        max_uses: int | None = None,
        expires_at_us: int | None = None,
    ) -> dict[str, Any]:
        link_key = link_keys_from_token(token).link_key
        return {
            "link_id": link_id_of_key(link_key),
            "link_key": link_key,
            "role": role,
            "max_uses": max_uses,
            "expires_at_us": expires_at_us,
        }

    async def create_link(self, space_id: str, **options: Any) -> str:
        """Append a ``link`` event for a fresh token; the token (never sent)."""
        token = new_link_token()
        await self.append(space_id, "link", self.link_body(token, **options))
        return token

    async def unlink(self, space_id: str, token: str) -> int:
        link_id = link_id_of_key(link_keys_from_token(token).link_key)
        return await self.append(space_id, "unlink", {"link_id": link_id})

    def recipients(self, state: SpaceState) -> list[str]:
        """Every member, the keeper included when it is one (what a rotation wraps to)."""
        return state.rotation_recipients(self.me, None)

    async def rotate(self, space_id: str, ring: Keyring) -> int:
        """Mint the next epoch's key, append the ``epoch`` event with a wrap per member."""
        state = await self.sync(space_id)
        epoch = ring.mint_next()
        names = self.recipients(state)
        body = {
            "epoch": epoch,
            "recipients": names,
            "key_commitment": key_commitment(space_id, epoch, ring.key(epoch)),
        }
        keys = [self.wrap(ring, epoch, entry(state, n)) for n in names]
        await self.append_event(self.make(space_id, "epoch", body), keys)
        return epoch

    def add_event(
        self,
        state: SpaceState,
        *,
        token: str | None = None,
        via: str | None = None,
        role: str | None = None,
        identity: IdentityKeys | None = None,
        at_us: int | None = None,
        proof: bytes | None = None,
    ) -> StateEvent:
        """This client's signed ``add`` on ``state``'s head: through the link of
        ``token``, an invitation, or an open space (each part can be overridden)."""
        identity = identity or self.keys
        body: dict[str, Any] = {
            "member": self.me,
            "signing_key": identity.signing_key,
            "ecdh_key": identity.ecdh_key,
            "link_id": None,
            "proof": None,
        }
        if token is not None:
            link_keys = link_keys_from_token(token)
            link_id = link_id_of_key(link_keys.link_key)
            link = state.links.get(link_id)
            if proof is None:
                proof = link_keys.sign(link_proof_bytes(state.space_id, self.me, state.head))
            body.update(
                via="link",
                role=role or (link.role if link else "viewer"),
                link_id=link_id,
                proof=b64e(proof),
            )
        elif self.me in state.invitations:
            body.update(via="invite", role=role or state.invitations[self.me].role)
        else:
            body.update(via="open", role=role or "viewer")
        if via is not None:
            body["via"] = via
        return make_event(
            identity,
            space_id=state.space_id,
            seq=state.head_seq + 1,
            prev=state.head,
            kind="add",
            actor=self.me,
            at_us=self.clock.now_us() if at_us is None else at_us,
            body=body,
        )

    async def join(self, space_id: str, token: str | None = None, **add: Any) -> frames.JoinResult:
        """Fetch the log (as a link holder with ``token``), sign this client's ``add``
        on its head and join; already a member, join without an event."""
        if token is not None:
            self.links[space_id] = link_keys_from_token(token)
        state = await self.sync(space_id)
        event = None
        if self.me not in state.members:
            event = self.add_event(state, token=token, **add)
        result: frames.JoinResult = await self.call(frames.Join, space_id=space_id, event=event)
        await self.sync(space_id)
        return result

    # -- envelopes

    def next_seq(self) -> int:
        """The next per-session sequence number (never below the clock in µs)."""
        self._seq = max(self._seq + 1, self.clock.now_us())
        return self._seq

    def seal(
        self,
        ring: Keyring,
        body: Any,
        *,
        kind: str = "msg",
        subject: str = "default",
        epoch: int | None = None,
        head_seq: int | None = None,
        head: bytes | None = None,
        key: bytes | None = None,
        clock: Clock | None = None,
        rev: int = 0,
        seq: int | None = None,
    ) -> Envelope:
        """Seal ``body`` under ``ring``'s current epoch, bound to this client's head of
        the space's log (each can be overridden to build a bad envelope)."""
        state = self.logs.get(ring.space_id)
        if head_seq is None:
            head_seq = state.head_seq if state else 0
        if head is None:
            known = state.hash_at(head_seq) if state else None
            head = known if known is not None else bytes(32)
        epoch = ring.current_epoch if epoch is None else epoch
        envelope, _ = seal_envelope(
            self.keys,
            ring.key(epoch) if key is None else key,
            kind=kind,  # type: ignore[arg-type]
            source=self.me,
            target=ring.space_id,
            subject=subject,
            epoch=epoch,
            content_type=None,
            body=body,
            head_seq=head_seq,
            head=head,
            seq=self.next_seq() if seq is None else seq,
            sid=self.sid,
            rev=rev,
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


async def member(
    server: RunningServer, owner: RawClient, space_id: str, username: str, **options: Any
) -> tuple[RawClient, Keyring]:
    """A client that joined the space (by invitation if it is private) and got its keys
    from the keeper."""
    guest = await user(server, username, **options)
    state = await owner.sync(space_id)
    if state.private:
        await owner.invite(space_id, username)
    await guest.join(space_id)
    pushed = await guest.event("keys", space_id=space_id)
    return guest, await guest.keyring(space_id, pushed.keys)


async def two_members(srv, **options):
    """alice's channel with bob admitted by the keeper; both subscribed and at the head."""
    alice = await user(srv, "alice")
    info, ring = await alice.create_space(name="chat", **options)
    bob, _ = await member(srv, alice, info.space_id, "bob")
    for client in (alice, bob):
        await client.call(frames.Subscribe, space_id=info.space_id)
        await client.sync(info.space_id)
    return alice, bob, info, ring
