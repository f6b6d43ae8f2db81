"""A space as one member sees it: its keys, its live events, its history and files."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..events import (
    EphemeralEvent,
    JoinRequest,
    MessageDeletedEvent,
    PresenceEvent,
    RejectedEnvelopeEvent,
    SpaceMessageEvent,
)
from ..exceptions import (
    IntegrityError,
    KeyUnavailableError,
    PermissionDeniedError,
    ProtocolError,
    SpacenbError,
    SpacenbTimeoutError,
)
from ..protocol import crypto, frames
from ..protocol.envelope import Envelope, Message, open_envelope, seal_envelope
from ..protocol.keyring import HistoryPolicy, Keyring
from ..protocol.keys import decode_public_key
from ..protocol.wrap import WrappedKey, wrap_group_key
from .handlers import Emitter, Unsubscribe
from .keystore import SpaceSecrets

if TYPE_CHECKING:
    from .client import AsyncClient

__all__ = ["AsyncSpace", "History"]

log = logging.getLogger("spacenb")
_EPHEMERAL_MEMORY = 10_000
_SENT_MEMORY = 10_000


@dataclass(frozen=True, slots=True)
class History:
    """One page of decrypted history, oldest first.

    ``next_cursor`` goes to ``history(before=...)`` for the page before this one (None at
    the start of history). ``unreadable`` counts stored messages this member cannot
    decrypt (epochs before it joined a ``rotate`` space) or that failed verification.
    """

    messages: tuple[SpaceMessageEvent, ...]
    next_cursor: int | None
    unreadable: int = 0


class AsyncSpace:
    """A handle on one space. Get one from ``client.space`` (create, join or ``get``)."""

    def __init__(
        self,
        client: AsyncClient,
        space_id: str,
        *,
        secrets: SpaceSecrets | None = None,
        info: frames.SpaceInfo | None = None,
        auto_admit: bool = True,
    ) -> None:
        decode_public_key(space_id, "spc", field="space_id")
        self.client = client
        self.id = space_id
        self.info = info
        self.auto_admit = auto_admit
        self._secrets = secrets
        self.events = Emitter()
        self._peers: tuple[str, ...] = ()
        self._members: dict[str, str] | None = None
        self._subscribed = False
        self._seen: dict[str, int] = {}  # message id → the handle it was delivered at
        self._seen_ephemeral: OrderedDict[str, None] = OrderedDict()
        self._sent: OrderedDict[bytes, tuple[Envelope, Message]] = OrderedDict()
        self._meta: dict[int, tuple[str, str, str | None]] = {}  # handle → author, channel, type
        self._last_handle = 0
        self._behind = False  # a catch-up is due: hold pushed messages back until it is done
        self._key_waiters: list[asyncio.Future[None]] = []
        self._minting: int | None = None  # the epoch this member is rotating to, if any

    # ------------------------------------------------------------------ description

    @property
    def keyring(self) -> Keyring | None:
        """The group keys this member holds (None until it has been admitted)."""
        return self._secrets.keyring if self._secrets and len(self._secrets.keyring) else None

    @property
    def policy(self) -> HistoryPolicy | None:
        if self.info is not None:
            return self.info.policy
        return self._secrets.keyring.policy if self._secrets else None

    @property
    def name(self) -> str | None:
        return self.info.name if self.info else None

    @property
    def epoch(self) -> int | None:
        """The newest epoch this member holds a key for."""
        keyring = self.keyring
        return keyring.current_epoch if keyring else None

    def peers(self) -> list[str]:
        """Member ids online in this space now (from the relay's presence)."""
        return list(self._peers)

    def is_connected(self) -> bool:
        return self._subscribed and self.client.connection.is_open

    def __repr__(self) -> str:
        label = f"{self.name!r} " if self.name else ""
        return f"<AsyncSpace {label}{self.id} policy={self.policy} epoch={self.epoch}>"

    # ------------------------------------------------------------------ handlers

    def on(self, event: str, handler: Callable[[Any], Any]) -> Unsubscribe:
        """Register ``handler`` for a named event (``"message"``, ``"message_edited"``,
        ``"message_deleted"``, ``"ephemeral"``, ``"presence"``, ``"join_request"``,
        ``"rejected"``, ``"epoch"``, ``"member"``, ``"channel:raw_frame"``)."""
        return self.events.on(event, handler)

    def off(self, event: str, handler: Callable[[Any], Any]) -> None:
        self.events.off(event, handler)

    def on_message(self, handler: Callable[[SpaceMessageEvent], Any]) -> Unsubscribe:
        return self.events.on("message", handler)

    def on_message_edited(self, handler: Callable[[SpaceMessageEvent], Any]) -> Unsubscribe:
        return self.events.on("message_edited", handler)

    def on_message_deleted(self, handler: Callable[[MessageDeletedEvent], Any]) -> Unsubscribe:
        return self.events.on("message_deleted", handler)

    def on_ephemeral(self, handler: Callable[[EphemeralEvent], Any]) -> Unsubscribe:
        return self.events.on("ephemeral", handler)

    def on_join_request(self, handler: Callable[[JoinRequest], Any]) -> Unsubscribe:
        return self.events.on("join_request", handler)

    def on_presence(self, handler: Callable[[PresenceEvent], Any]) -> Unsubscribe:
        return self.events.on("presence", handler)

    def on_rejected(self, handler: Callable[[RejectedEnvelopeEvent], Any]) -> Unsubscribe:
        return self.events.on("rejected", handler)

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        """Subscribe to the space's live events (messages, presence, keys...)."""
        await self._connect(refresh=True)

    async def _connect(self, *, refresh: bool) -> None:
        """Subscribe; with ``refresh`` False the caller has just fetched members and keys
        (a create or a join), and changes after the subscription arrive as events."""
        self.client._register(self)
        if self._last_handle == 0:
            # What is stored now is history; what comes after is pushed. The mark is read
            # before subscribing: read after, it could already be past messages pushed to
            # us and still waiting in the dispatcher, which would then drop them.
            page = await self.client.request(frames.History, space_id=self.id, before=None, limit=1)
            self._last_handle = page.items[-1].handle if page.items else 0
        result = await self.client.request(frames.Subscribe, space_id=self.id)
        self._subscribed = True
        self._behind = False
        self._set_peers(result.peers)
        if refresh or self._members is None:
            await self._refresh_members()
        if refresh or self.keyring is None:
            await self._fetch_keys()

    async def disconnect(self) -> None:
        """Stop receiving live events (the client stays signed in)."""
        if self._subscribed and self.client.connection.is_open:
            try:
                await self.client.request(frames.Unsubscribe, space_id=self.id)
            except SpacenbError as exc:
                log.info("spacenb: unsubscribe failed: %s", exc)
        self._subscribed = False
        self._peers = ()
        self.client._unregister(self)

    async def leave(self) -> None:
        """Leave the space (not possible for its owner)."""
        await self.client.request(frames.Leave, space_id=self.id)
        await self.disconnect()

    # ------------------------------------------------------------------ sending

    def _require_keys(self) -> Keyring:
        keyring = self.keyring
        if keyring is None:
            raise KeyUnavailableError(
                f"no group key for space {self.id}: join it first (or wait to be admitted)"
            )
        return keyring

    def _seal(self, kind: str, subject: str, content_type: str | None, body: Any) -> Envelope:
        keyring = self._require_keys()
        epoch = keyring.current_epoch
        envelope, message = seal_envelope(
            self.client.identity,
            keyring.key(epoch),
            kind="eph" if kind == "eph" else "msg",
            source=self.client.username,
            target=self.id,
            subject=subject,
            epoch=epoch,
            content_type=content_type,
            body=body,
            clock=self.client.clock,
        )
        if kind == "msg":
            self._sent[envelope.signature] = (envelope, message)
            if len(self._sent) > _SENT_MEMORY:
                self._sent.popitem(last=False)
        return envelope

    async def send_message(
        self, payload: Any, *, channel: str = "default", content_type: str | None = None
    ) -> int:
        """Seal ``payload`` once for the group, sign it and send it.

        Returns the relay's handle once the message is stored. The message also comes back
        to this member's ``on_message`` handlers.
        """
        envelope = self._seal("msg", channel, content_type, payload)
        try:
            result = await self.client.request(frames.Send, envelope=envelope)
        except KeyUnavailableError:
            # Someone rotated: pick up the new epoch's key and seal again, once.
            await self._fetch_keys()
            envelope = self._seal("msg", channel, content_type, payload)
            result = await self.client.request(frames.Send, envelope=envelope)
        handle: int = result.handle
        self._meta[handle] = (self.client.username, channel, content_type)
        return handle

    async def edit_message(
        self,
        handle: int,
        payload: Any,
        *,
        channel: str | None = None,
        content_type: str | None = None,
    ) -> None:
        """Replace a stored message (yours) with ``payload``, keeping its handle."""
        _author, old_channel, old_type = self._meta.get(handle, ("", "default", None))
        envelope = self._seal(
            "msg", channel or old_channel, content_type if content_type else old_type, payload
        )
        await self.client.request(frames.Edit, handle=handle, envelope=envelope)

    async def delete_message(self, handle: int) -> None:
        """Delete a stored message (yours): the relay removes its ciphertext."""
        await self.client.request(frames.Delete, space_id=self.id, handle=handle)

    async def send_ephemeral(self, subject: str, data: Any) -> None:
        """Send a never-stored signal (typing, presence...). A no-op when disconnected."""
        if not self.is_connected() or self.keyring is None:
            return
        envelope = self._seal("eph", subject, None, data)
        await self.client.request(frames.SendEphemeral, envelope=envelope)

    # ------------------------------------------------------------------ history

    async def history(self, *, before: int | None = None, limit: int = 50) -> History:
        """Fetch, verify and decrypt one page of stored messages (oldest first)."""
        if not isinstance(limit, int) or not 1 <= limit <= frames.MAX_HISTORY_LIMIT:
            raise ProtocolError(f"limit must be 1..{frames.MAX_HISTORY_LIMIT}", field="limit")
        page = await self.client.request(
            frames.History, space_id=self.id, before=before, limit=limit
        )
        await self.client.identities({item.envelope.source for item in page.items})
        if any(not self._holds(item.envelope.epoch) for item in page.items):
            await self._fetch_keys()
        messages = []
        for item in page.items:
            event = await self._open(item.envelope, item.handle, mode="history")
            if event is not None:
                messages.append(event)
        return History(tuple(messages), page.next_cursor, len(page.items) - len(messages))

    def _holds(self, epoch: int) -> bool:
        keyring = self.keyring
        return keyring is not None and keyring.has(epoch)

    # ------------------------------------------------------------------ verifying

    def _reject(self, handle: int | None, sender: str, reason: str) -> None:
        log.warning("spacenb: dropped envelope from %r at %s: %s", sender, handle, reason)
        self.events.emit("rejected", RejectedEnvelopeEvent(self.id, handle, sender, reason))

    async def _open(
        self, envelope: Envelope, handle: int, *, mode: str
    ) -> SpaceMessageEvent | None:
        """Verify and decrypt a stored envelope; None (and a ``rejected`` event) if it fails.

        ``mode`` is ``"live"`` (a pushed message), ``"edit"`` or ``"history"``.
        """
        if envelope.kind != "msg":
            self._reject(handle, envelope.source, "a signal passed off as a stored message")
            return None
        message = await self._verify_and_open(envelope, handle, live=mode != "history")
        if message is None:
            return None
        seen_at = self._seen.get(message.id)
        if mode == "edit" and seen_at is not None:
            self._reject(handle, envelope.source, "replayed message id in an edit")
            return None
        if seen_at is not None and seen_at != handle:
            self._reject(handle, envelope.source, "replayed message id")
            return None
        known = self._meta.get(handle)
        if mode == "edit" and known is not None and known[0] != envelope.source:
            self._reject(handle, envelope.source, "edit by someone other than the author")
            return None
        self._seen[message.id] = handle
        content_type = envelope.content_type or None
        self._meta[handle] = (envelope.source, envelope.subject, content_type)
        return SpaceMessageEvent(
            envelope.source, envelope.subject, envelope.epoch, content_type, handle, message
        )

    async def _verify_and_open(
        self, envelope: Envelope, handle: int | None, *, live: bool
    ) -> Message | None:
        if envelope.target != self.id:
            self._reject(handle, envelope.source, "addressed to another space")
            return None
        mine = self._sent.pop(envelope.signature, None)
        if mine is not None and mine[0] == envelope:
            return mine[1]  # our own message echoed back unchanged: we sealed it ourselves
        sender = await self.client.verify_key(envelope.source)
        if sender is None:
            self._reject(handle, envelope.source, "unknown sender")
            return None
        if live and not await self._is_member(envelope.source):
            self._reject(handle, envelope.source, "sender is not a member")
            return None
        if not self._holds(envelope.epoch):
            if live:
                await self._fetch_keys()
            if not self._holds(envelope.epoch):
                if live:
                    self._reject(handle, envelope.source, f"no key for epoch {envelope.epoch}")
                return None
        keyring = self._require_keys()
        try:
            return open_envelope(envelope, keyring.key(envelope.epoch), sender)
        except IntegrityError as exc:
            self._reject(handle, envelope.source, str(exc))
            return None

    async def _is_member(self, username: str) -> bool:
        if self._members is None or username not in self._members:
            await self._refresh_members()
        return self._members is not None and username in self._members

    async def _refresh_members(self) -> None:
        result = await self.client.request(frames.Members, space_id=self.id)
        self._members = {m.member_id: m.role for m in result.members}

    # ------------------------------------------------------------------ keys

    async def _fetch_keys(self) -> None:
        result = await self.client.request(frames.FetchKeys, space_id=self.id)
        await self._ingest_keys(result.keys)

    async def _ingest_keys(self, keys: Iterable[WrappedKey]) -> None:
        """Unwrap keys handed to this member by the keeper or a member; refuse others."""
        keys = [
            k
            for k in keys
            if k.space_id == self.id and not self._holds(k.epoch) and k.epoch != self._minting
        ]
        if not keys:
            return
        allowed = set(self._members or ())
        if any(k.wrapper not in allowed for k in keys):
            await self._refresh_members()
            allowed = set(self._members or ())
        if self.client.keeper:
            allowed.add(self.client.keeper)
        if self._secrets is None:
            policy = self.policy or "static"
            self._secrets = self.client.keystore.new_space(self.id, policy)
        for wrapped in sorted(keys, key=lambda k: k.epoch):
            try:
                key = await self.client.unwrap(wrapped, allowed)
                self._secrets.keyring.add(wrapped.epoch, key)
            except (IntegrityError, ProtocolError) as exc:
                log.warning("spacenb: refused a key for epoch %s: %s", wrapped.epoch, exc)
                self.events.emit(
                    "rejected",
                    RejectedEnvelopeEvent(self.id, None, wrapped.wrapper, f"key refused: {exc}"),
                )
        self.client.keystore.save_space(self._secrets)
        for waiter in self._key_waiters:
            if not waiter.done() and self.keyring is not None:
                waiter.set_result(None)

    async def wait_for_keys(self, timeout: float) -> None:
        """Wait until this member holds a group key; :class:`SpacenbTimeoutError` if not."""
        if self.keyring is not None:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._key_waiters.append(waiter)
        try:
            await self._fetch_keys()
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise SpacenbTimeoutError(
                f"not admitted to {self.id} within {timeout} s: no key-holder (keeper or "
                "member) handed over the group key; ask a member to admit you, or retry"
            ) from None
        finally:
            self._key_waiters.remove(waiter)

    def _wrap_for(self, member_id: str, ecdh_key: str, epochs: Iterable[int]) -> list[WrappedKey]:
        keyring = self._require_keys()
        recipient = decode_public_key(ecdh_key, "dh", field="identity_ecdh_pub")
        return [
            wrap_group_key(
                keyring.key(epoch),
                space_id=self.id,
                epoch=epoch,
                recipient=member_id,
                recipient_ecdh=recipient,
                wrapper=self.client.username,
                wrapper_identity=self.client.identity,
            )
            for epoch in epochs
        ]

    def _epochs_for_newcomer(self) -> list[int]:
        keyring = self._require_keys()
        return keyring.epochs if keyring.policy == "static" else [keyring.current_epoch]

    async def admit(self, member_id: str, identity_ecdh_pub: str) -> None:
        """Hand the group key to ``member_id`` (every epoch in a static space, the current
        one in a rotate space). You must hold the keys; the relay checks membership."""
        keys = self._wrap_for(member_id, identity_ecdh_pub, self._epochs_for_newcomer())
        await self.client.request(frames.Admit, space_id=self.id, member=member_id, keys=keys)

    async def invite(self, username: str) -> None:
        """Allow ``username`` to join this private space (members only)."""
        await self.client.request(frames.Invite, space_id=self.id, username=username)

    async def rotate(self, roster: Iterable[str] | None = None) -> int:
        """Mint the next epoch's key and wrap it to ``roster`` (default: every member).

        You and the keeper (when it is a member) are always included. Returns the new
        epoch. Only ``rotate`` spaces have epochs.
        """
        keyring = self._require_keys()
        if keyring.policy != "rotate":
            raise ProtocolError("only spaces with history_policy='rotate' can rotate")
        info = await self.client.request(frames.GetSpaceInfo, space_id=self.id)
        self.info = info
        members = (await self.client.request(frames.Roster, space_id=self.id)).members
        by_name = {m.member_id: m for m in members}
        wanted = set(by_name) if roster is None else set(roster)
        wanted.add(self.client.username)
        if info.keeper and info.keeper in by_name:
            wanted.add(info.keeper)
        unknown = wanted - set(by_name)
        if unknown:
            raise PermissionDeniedError(f"not members of this space: {sorted(unknown)}")
        epoch: int = info.epoch + 1
        new_key = crypto.random_bytes(crypto.AES_KEY_SIZE)  # held only once the relay agrees
        keys = [
            wrap_group_key(
                new_key,
                space_id=self.id,
                epoch=epoch,
                recipient=name,
                recipient_ecdh=decode_public_key(by_name[name].ecdh_key, "dh"),
                wrapper=self.client.username,
                wrapper_identity=self.client.identity,
            )
            for name in sorted(wanted)
        ]
        self._minting = epoch  # its epoch event may arrive before the request returns
        try:
            await self.client.request(frames.Rotate, space_id=self.id, epoch=epoch, keys=keys)
        finally:
            self._minting = None
        keyring.add(epoch, new_key)
        assert self._secrets is not None
        self.client.keystore.save_space(self._secrets)
        return epoch

    # ------------------------------------------------------------------ files

    async def put_file(
        self,
        file: Any,
        metadata: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        content_type: str | None = None,
        progress: Callable[[int, int], Any] | None = None,
    ) -> tuple[Any, Any]:
        """Encrypt, erasure-code and upload a file to the space's shard stores.

        ``file`` is bytes, a path or a binary file object. Returns ``(manifest, stat)``;
        the manifest is the capability to read the file (send it as a sealed message).
        """
        from . import files

        ticket = await self.client.request(frames.ShardTicket, space_id=self.id)
        return await files.upload(
            file,
            ticket=ticket.ticket,
            space_id=self.id,
            stores=list(ticket.stores),
            shards_needed=ticket.shards_needed,
            metadata=metadata,
            name=name,
            content_type=content_type,
            progress=progress,
        )

    async def get_file(
        self, manifest: Any, *, progress: Callable[[int, int], Any] | None = None
    ) -> tuple[bytes, Any]:
        """Fetch shares from any k stores, check, decode and decrypt: ``(data, stat)``."""
        from . import files

        return await files.download(manifest, progress=progress)

    # ------------------------------------------------------------------ events

    def _set_peers(self, peers: Iterable[str]) -> None:
        self._peers = tuple(sorted(peers))
        self.events.emit("presence", PresenceEvent(self.id, self._peers))

    async def _deliver(self, handle: int, envelope: Envelope) -> None:
        """Verify, open and hand a stored message to the handlers, once, in handle order."""
        if handle <= self._last_handle:
            return  # already delivered (catch-up and live overlap)
        opened = await self._open(envelope, handle, mode="live")
        if opened is not None:
            # Only a message that verified moves the mark: a forged or corrupt frame
            # with a far-future handle must not make later messages look delivered.
            self._last_handle = max(self._last_handle, handle)
            self.events.emit("message", opened)

    async def _handle_event(self, event: frames.Event) -> None:
        if isinstance(event, frames.MessagePushed):
            if not self._behind:  # else the catch-up fetches it from history, in order
                await self._deliver(event.handle, event.envelope)
        elif isinstance(event, frames.MessageEdited):
            opened = await self._open(event.envelope, event.handle, mode="edit")
            if opened is not None:
                self.events.emit("message_edited", opened)
        elif isinstance(event, frames.MessageDeleted):
            self._meta.pop(event.handle, None)
            self.events.emit("message_deleted", MessageDeletedEvent(event.handle))
        elif isinstance(event, frames.EphemeralPushed):
            await self._handle_ephemeral(event.envelope)
        elif isinstance(event, frames.Presence):
            self._set_peers(set(self._peers).union(event.joined).difference(event.left))
        elif isinstance(event, frames.KeysPushed):
            await self._ingest_keys(event.keys)
        elif isinstance(event, frames.EpochChanged):
            if self.info is not None:
                self.info = replace(self.info, epoch=event.epoch)
            if not self._holds(event.epoch) and event.epoch != self._minting:
                await self._fetch_keys()
            self.events.emit("epoch", event.epoch)
        elif isinstance(event, frames.MemberChanged):
            if self._members is not None:
                if event.role is None:
                    self._members.pop(event.member_id, None)
                else:
                    self._members[event.member_id] = event.role
            self.events.emit("member", event)
        elif isinstance(event, frames.JoinRequested):
            await self._handle_join_request(event)
        else:
            self.events.emit("channel:raw_frame", event)

    async def _handle_ephemeral(self, envelope: Envelope) -> None:
        if envelope.kind != "eph":
            self._reject(None, envelope.source, "a stored message kind sent as a signal")
            return
        message = await self._verify_and_open(envelope, None, live=True)
        if message is None:
            return
        if message.id in self._seen_ephemeral:
            self._reject(None, envelope.source, "replayed signal")
            return
        self._seen_ephemeral[message.id] = None
        if len(self._seen_ephemeral) > _EPHEMERAL_MEMORY:
            self._seen_ephemeral.popitem(last=False)
        self.events.emit(
            "ephemeral", EphemeralEvent(envelope.source, envelope.subject, message.body)
        )

    async def _handle_join_request(self, event: frames.JoinRequested) -> None:
        request = JoinRequest(
            self.id, event.member_id, event.ecdh_key, event.signing_key, event.role
        )
        self.events.emit("join_request", request)
        info = self.info
        keeper_admits = info is not None and info.keeper is not None
        manual = info is None or info.manual_admit
        if self.auto_admit and not manual and not keeper_admits and self.keyring is not None:
            try:
                await self.admit(event.member_id, event.ecdh_key)
            except SpacenbError as exc:
                log.info("spacenb: auto-admit of %s failed: %s", event.member_id, exc)

    async def _resync(self) -> None:
        """After a reconnect: subscribe again, pick up keys, deliver missed messages.

        Until the missed messages are delivered, pushed ones are held back: delivered
        first, they would move the mark past the missed ones. If the catch-up fails (the
        connection drops again), they stay held until the next one succeeds.
        """
        if not self._subscribed:
            return
        self._behind = True
        result = await self.client.request(frames.Subscribe, space_id=self.id)
        self._set_peers(result.peers)
        await self._refresh_members()
        await self._fetch_keys()
        missed: list[frames.StoredMessage] = []
        before: int | None = None
        while True:
            page = await self.client.request(
                frames.History, space_id=self.id, before=before, limit=frames.MAX_HISTORY_LIMIT
            )
            newer = [item for item in page.items if item.handle > self._last_handle]
            missed[:0] = newer
            if len(newer) < len(page.items) or page.next_cursor is None:
                break
            before = page.next_cursor
        for item in missed:
            await self._deliver(item.handle, item.envelope)
        self._behind = False
