"""A space as one member sees it: its verified state log, keys, live events, history, files.

Every rule about what to believe lives in the sans-I/O member core
(:class:`~spacenb.protocol.member.MemberCore`); this class drives it over the relay
connection: it fetches what the core needs (the log, keys, history) and hands the core's
decisions to handlers.

:class:`AsyncSpace` is composed of layers, one module each: the shared attributes
(:mod:`.space_base`), the state log (:mod:`.space_log`), keys and admission
(:mod:`.space_keys`), messages and history (:mod:`.space_messages`); this module adds
the handlers, the connection (subscribing, catching up after a reconnect), files and the
dispatch of pushed events.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..exceptions import LimitExceededError, SpacenbError
from ..protocol import frames
from ..protocol.frames import UNSENT
from ..typing import Handler, Progress, Unsubscribe
from .events import (
    EphemeralEvent,
    JoinRequest,
    MessageDeletedEvent,
    PresenceEvent,
    RejectedEnvelopeEvent,
    SpaceMessageEvent,
)
from .space_log import stale_backoff as stale_backoff
from .space_messages import History as History
from .space_messages import KnownMessage as KnownMessage
from .space_messages import SpaceMessages

if TYPE_CHECKING:
    from ..protocol.manifest import Manifest
    from .files import FileSource, FileStat

__all__ = ["AsyncSpace", "History"]

log = logging.getLogger("spacenb")


class AsyncSpace(SpaceMessages):
    """A handle on one space. Get one from ``client.space`` (create, join or ``get``).

    ``read_ahead`` (True unless set False): :meth:`history` fetches the page after the one
    it returns, and has its signatures checked, while the caller works on that one.
    """

    # ------------------------------------------------------------------ handlers

    def on(self, event: str, handler: Handler) -> Unsubscribe:
        """Register ``handler`` for a named event (``"message"``, ``"message_edited"``,
        ``"message_deleted"``, ``"ephemeral"``, ``"presence"``, ``"join_request"``,
        ``"rejected"``, ``"epoch"``, ``"member"``, ``"state"``, ``"channel:raw_frame"``)."""
        return self.events.on(event, handler)

    def off(self, event: str, handler: Handler) -> None:
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
        """Subscribe to the space's live events (messages, presence, keys, state...)."""
        await self.attach(refresh=True)

    async def attach(self, *, refresh: bool) -> None:
        """Subscribe; with ``refresh`` False the caller has just fetched the log and keys
        (a create or a join), and changes after the subscription arrive as events."""
        self._ahead.drop()
        self.client.register(self)
        if self.core.delivery.last_handle == 0:
            # What is stored now is history; what comes after is pushed. The mark is read
            # before subscribing: read after, it could already be past messages pushed to
            # us and still waiting in the dispatcher, which would then drop them.
            page = await self.client.request(
                frames.HistoryRequest(UNSENT, space_id=self.id, before=None, limit=1)
            )
            if page.items:
                self.core.delivery.delivered(page.items[-1].handle)
        result = await self.client.request(frames.Subscribe(UNSENT, space_id=self.id))
        self._subscribed = True
        self.core.delivery.behind = False
        self._set_peers(result.peers)
        if refresh or self.core.state is None or self.core.state.head_seq != result.head_seq:
            await self.sync_log()  # a lower head too: sync_log holds the relay to the rule
        if refresh or self.keyring is None:
            await self._fetch_keys()

    async def disconnect(self) -> None:
        """Stop receiving live events (the client stays signed in)."""
        await self._ahead.close()
        if self._subscribed and self.client.connection.is_open:
            try:
                await self.client.request(frames.UnsubscribeRequest(UNSENT, space_id=self.id))
            except SpacenbError as exc:
                log.info("spacenb: unsubscribe failed: %s", exc)
        self._subscribed = False
        self._peers = ()
        self.save_marks()
        self.client.unregister(self)

    async def leave(self) -> None:
        """Leave the space (not possible for its owner): a signed ``leave`` event."""
        me = self.client.username
        await self.append_event(lambda s: self.sign_event(s, "leave", {"member": me}))
        await self.disconnect()

    async def resync(self) -> None:
        """After a reconnect: subscribe again, catch up on the log and keys, deliver missed
        messages.

        Until the missed messages are delivered, pushed ones are held back: delivered
        first, they would move the mark past the missed ones. If the catch-up fails (the
        connection drops again), they stay held until the next one succeeds.
        """
        if not self._subscribed:
            return
        self._ahead.drop()
        delivery = self.core.delivery
        delivery.behind = True
        result = await self.client.request(frames.Subscribe(UNSENT, space_id=self.id))
        self._set_peers(result.peers)
        await self.sync_log()
        await self._fetch_keys()
        missed: list[frames.StoredMessage] = []
        before: int | None = None
        while True:
            page = await self._history_page(before)
            newer, more = delivery.missed([item.handle for item in page.items])
            missed[:0] = [item for item in page.items if item.handle in set(newer)]
            if not more or page.next_cursor is None:
                break
            before = page.next_cursor
        for item in missed:
            await self._deliver(item.handle, item.envelope, now=False)
        delivery.behind = False
        self.save_marks()

    async def _history_page(self, before: int | None) -> frames.HistoryPage:
        """One page of the catch-up. The relay cuts pages to fit a frame; should a page
        still be refused as too large (:class:`LimitExceededError`, from the relay or from
        this side's frame limit), ask again for half as many, down to one message."""
        while True:
            try:
                return await self.client.request(
                    frames.HistoryRequest(
                        UNSENT, space_id=self.id, before=before, limit=self._page_limit
                    )
                )
            except LimitExceededError:
                if self._page_limit == 1:
                    raise
                self._page_limit = max(1, self._page_limit // 2)
                log.info("spacenb: catching up with pages of %d messages", self._page_limit)

    # ------------------------------------------------------------------ files

    async def put_file(
        self,
        file: FileSource,
        metadata: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        content_type: str | None = None,
        progress: Progress | None = None,
    ) -> tuple[Manifest, FileStat]:
        """Encrypt, erasure-code and upload a file to the space's shard stores.

        ``file`` is bytes, a path or a binary file object. Returns ``(manifest, stat)``;
        the manifest is the capability to read the file (send it as a sealed message).
        """
        from . import files

        ticket = await self.client.request(frames.ShardTicket(UNSENT, space_id=self.id))
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
        self, manifest: Manifest | Mapping[str, Any], *, progress: Progress | None = None
    ) -> tuple[bytes, FileStat]:
        """Fetch shares from any k stores, check, decode and decrypt: ``(data, stat)``.

        Shares come only from the relay's shard stores and the client's
        ``allowed_stores``: a manifest naming others cannot make this client dial them
        (:class:`NotEnoughSharesError` if fewer than k are left).
        """
        from . import files

        return await files.download(
            manifest, progress=progress, allowed_stores=self.client.readable_stores()
        )

    # ------------------------------------------------------------------ events

    def _set_peers(self, peers: Iterable[str]) -> None:
        state = self.core.state
        members = state.members if state is not None else None
        self._peers = tuple(sorted(p for p in peers if members is None or p in members))
        self.events.emit("presence", PresenceEvent(self.id, self._peers))

    def _change_peers(self, joined: Iterable[str], left: Iterable[str]) -> None:
        """Apply a presence delta: a binary search per name and one copy of the tuple, not
        a filter and sort of everyone (every member gets one per join, so a channel of n
        paid n sorts of n names a join)."""
        state = self.core.state
        members = state.members if state is not None else None
        peers = list(self._peers)
        for name in joined:
            if members is not None and name not in members:
                continue
            i = bisect.bisect_left(peers, name)
            if i == len(peers) or peers[i] != name:
                peers.insert(i, name)
        for name in left:  # (a name in both has left, as before)
            i = bisect.bisect_left(peers, name)
            if i < len(peers) and peers[i] == name:
                del peers[i]
        self._peers = tuple(peers)
        self.events.emit("presence", PresenceEvent(self.id, self._peers))

    async def handle_event(self, event: frames.Event) -> None:
        if isinstance(event, frames.MessagePushed):
            if self.core.delivery.on_push(event.handle) == "deliver":
                await self._deliver(event.handle, event.envelope)
        elif isinstance(event, frames.MessageEdited):
            self._edits_seen += 1
            opened = await self._open(event.envelope, event.handle, live=True, now=True, edit=True)
            if opened is not None:
                self.events.emit("message_edited", opened)
        elif isinstance(event, frames.EphemeralPushed):
            await self._handle_ephemeral(event.envelope)
        elif isinstance(event, frames.Presence):
            self._change_peers(event.joined, event.left)
        elif isinstance(event, frames.KeysPushed):
            await self.ingest_keys(event.keys)
        elif isinstance(event, frames.StatePushed):
            await self._handle_state(event.event)
        elif isinstance(event, frames.JoinRequested):
            await self._handle_join_request(event)
        else:
            self.events.emit("channel:raw_frame", event)
