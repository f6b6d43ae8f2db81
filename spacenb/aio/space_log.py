"""A space's signed state log as one member holds it: reading and verifying the relay's
log (the fork rule), reacting to new events, and signing and appending events."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import Any

from ..exceptions import ForkError, IntegrityError, PermissionDeniedError, StaleStateError
from ..protocol import frames
from ..protocol.frames import UNSENT
from ..protocol.keys import LinkKeyPair
from ..protocol.statelog import SpaceState, StateEvent, link_id_of_key, make_event
from ..protocol.wrap import WrappedKey
from .events import MessageDeletedEvent, RejectedEnvelopeEvent, StateLogEntry
from .space_base import SpaceBase

__all__ = ["SpaceLog", "stale_backoff"]

log = logging.getLogger("spacenb")
_REACTED_TO = frozenset({"epoch", "delete", "remove", "leave"})  # kinds after_state acts on
_STALE_RETRIES = 40  # appends raced by others; with jittered backoff, ~5 s at worst
_BACKOFF_FIRST = 0.005  # seconds: the first retry's backoff bound, doubling to _BACKOFF_CAP
_BACKOFF_CAP = 0.25
# A relay serving a state-log head below this member's is asked again at once, then after
# 50 ms, doubling to 0.5 s, until the client's log_lag_grace is over (then: ForkError).
_LAG_FIRST = 0.05
_LAG_CAP = 0.5


async def stale_backoff(attempt: int, cap: float = _BACKOFF_CAP) -> None:
    """Wait before trying again (signing again on a head another member got first, or
    resending): a random time up to a bound that doubles per attempt, at most ``cap``
    seconds (so that many members joining or appending at once, a class arriving
    together, do not retry in lock step and each get their turn)."""
    await asyncio.sleep(random.uniform(0, min(cap, _BACKOFF_FIRST * 2**attempt)))


class SpaceLog(SpaceBase):
    """The state-log layer of :class:`~spacenb.aio.space.AsyncSpace`."""

    async def sync_log(self) -> list[StateEvent]:
        """Fetch the relay's state log from this member's head on and verify it.

        Returns the events that were new. Raises :class:`ForkError` if the relay's log
        contradicts the one this member verified before (also across restarts, through
        the keystore), :class:`IntegrityError` for an event no entitled member signed;
        both are also reported through ``on_rejected``.

        The relay must serve the member's own head event again, with its hash, and a head
        no lower than the one the member holds (in memory, or persisted from an earlier
        session). A relay whose head is lower (a member rolled back, its newest events,
        such as its removal or a rotation, hidden) is asked again with backoff for
        ``client.log_lag_grace`` seconds, since another relay of the service may just not
        have caught up yet after a failover; meanwhile the member keeps its own head (a
        read from genesis stays unsettled), and if the relay is still lower then, that is
        a :class:`ForkError` (PROTOCOL.md, "The fork rule").
        """
        async with self._log_lock:
            new: list[StateEvent] = []
            loop = asyncio.get_running_loop()
            deadline: float | None = None
            attempt = 0
            below: int | None = None  # the relay's head, while it is below this member's
            while True:
                relay_head = await self._read_log(new, below)
                held = self._held_seq()
                served = min(relay_head, self.core.next_log_seq - 1)
                if served >= held:
                    break
                below = relay_head if relay_head < held else None
                now = loop.time()
                if deadline is None:
                    deadline = now + self.client.log_lag_grace
                    log.info(
                        "spacenb: the relay serves the log of %s up to event %d, below event "
                        "%d held here: asking again for %g s",
                        self.id,
                        served,
                        held,
                        self.client.log_lag_grace,
                    )
                if now >= deadline:
                    error = ForkError(
                        f"the relay serves the state log of {self.id} up to event {served}, "
                        f"below event {held} that this member holds, and still did after "
                        f"{self.client.log_lag_grace:g} s: it rolled this member back, or "
                        "withholds the newest events"
                    )
                    self._reject(None, "relay", str(error))
                    raise error
                # At once first: the relay's event at its head shows a fork without waiting.
                delay = 0.0 if attempt == 0 else _LAG_FIRST * 2 ** (attempt - 1)
                await asyncio.sleep(min(deadline - now, delay, _LAG_CAP))
                attempt += 1
            try:
                new.extend(self.core.finish_log())  # a read from genesis: verified now
            except IntegrityError as exc:
                self._reject(None, "relay", str(exc))
                raise
            self._check_pinned_head()
        if new:
            await self.after_state(new)
        return new

    async def _read_log(self, new: list[StateEvent], below: int | None) -> int:
        """Read the relay's log, page by page, into the core (the new events go to
        ``new``); returns the relay's head. A member holding the log asks from its own
        head event on (or from ``below``, the relay's lower head, whose event it compares
        with its own), so the relay must show it the events it already holds."""
        since = self.core.next_log_seq
        if self.core.state is not None:
            since = max(0, since - 1 if below is None else min(since - 1, below))
        while True:
            link_id, proof = None, None
            if self._link is not None and self.connection_nonce is not None:
                link_id = self._link[0]
                proof = self._link[1](
                    frames.log_read_signed_bytes(
                        self.id, self.client.username, self.connection_nonce
                    )
                )
            page = await self.client.request(
                frames.GetStateLog(
                    UNSENT,
                    space_id=self.id,
                    since=since,
                    limit=frames.MAX_LOG_PAGE,
                    link_id=link_id,
                    proof=proof,
                )
            )
            events, state = page.events, self.core.state
            if state is not None and len(events) > 1 and events[0].seq == state.head_seq:
                events = events[1:]  # the next event's prev shows whether it holds our head
            try:
                new.extend(self.core.extend_log(events, more=True))
            except IntegrityError as exc:
                self._reject(None, "relay", str(exc))
                raise
            asked, since = since, self.core.next_log_seq
            if not page.events or since > page.head_seq or since <= asked:
                return page.head_seq  # the relay's head, or a page that brought nothing new

    def _held_seq(self) -> int:
        """The newest log event this member holds: its verified head, or the head it
        persisted in an earlier session (-1 for none)."""
        state, secrets = self.core.state, self._secrets
        held = -1 if state is None else state.head_seq
        if secrets is not None and secrets.log_head is not None:
            held = max(held, secrets.log_head[0])
        return held

    def use_link(self, link_keys: LinkKeyPair) -> None:
        """Read this (private) space's log as the holder of an invite link, before joining."""
        self._link = (link_id_of_key(link_keys.link_key), link_keys.sign)

    async def extend_with(self, events: list[StateEvent]) -> None:
        """Verify and apply events this member knows follow its head (its own, accepted)."""
        async with self._log_lock:
            new = self.core.extend_log(events)
            self._check_pinned_head()
        if new:
            await self.after_state(new)

    async def _catch_up_log(self) -> None:
        """:meth:`sync_log` for handlers of pushed events: a log that does not verify is
        reported (by ``sync_log``), and the handler goes on with the log it holds."""
        try:
            await self.sync_log()
        except IntegrityError as exc:
            log.info("spacenb: the relay's log of %s does not verify: %s", self.id, exc)

    @property
    def connection_nonce(self) -> bytes | None:
        hello = self.client.connection.hello
        return hello.nonce if hello else None

    def _check_pinned_head(self) -> None:
        """The keystore remembers the newest log event this member verified; a relay that
        later serves another event at that place has forked or rewritten the log."""
        state = self.core.state
        secrets = self._secrets
        if state is None or secrets is None:
            return
        if secrets.log_head is not None:
            seq, digest = secrets.log_head
            known = state.hash_at(seq)
            if known is not None and known != digest:
                error = ForkError(
                    f"the relay's log for {self.id} differs at event {seq} from the one this "
                    "client verified in an earlier session"
                )
                self._reject(None, "relay", str(error))
                raise error
            if known is None:
                return  # not reached yet (sync_log refuses a relay that stays below it)
        if secrets.log_head != (state.head_seq, state.head):
            secrets.log_head = (state.head_seq, state.head)
            self._head_changed = True
            self.save_marks(every=2.0)  # with the replay marks, at most every 2 s

    def state_log(self) -> list[StateLogEntry]:
        """The verified state events, oldest first (fetch with :meth:`sync_log` first)."""
        state = self.core.state
        return [] if state is None else [StateLogEntry.of(e) for e in state.events]

    async def after_state(self, events: list[StateEvent]) -> None:
        """React to newly verified events: keys to fetch, deletions, removals."""
        state = self.core.require_state()
        refetch_keys = False
        emitter = self.events
        for event in events:
            member_change = event.kind in ("add", "role", "remove", "leave")
            if emitter.has("state") or (member_change and emitter.has("member")):
                entry = StateLogEntry.of(event)  # a hash and a parse: only when listened to
                emitter.emit("state", entry)
                if member_change:
                    emitter.emit("member", entry)
            if event.kind not in _REACTED_TO:
                continue  # a newcomer's whole log goes through here: parse only what matters
            body = json.loads(event.body)  # verified already: no need to check it again
            if event.kind == "epoch":
                epoch = body["epoch"]
                if epoch != self._rotating_to and not self.core_holds(epoch):
                    refetch_keys = refetch_keys or self.client.username in body["recipients"]
                self.events.emit("epoch", epoch)
            elif event.kind == "delete":
                if self.core.deletion_applies(event):
                    self._known_messages.pop(body["handle"], None)
                    self.events.emit("message_deleted", MessageDeletedEvent(body["handle"]))
                else:
                    self._reject(body["handle"], event.actor, "a deletion naming another author")
            elif event.kind in ("remove", "leave") and body["member"] == self.client.username:
                self._subscribed = False
                self._peers = ()
        for name, why in list(self.core.distrusted.items()):
            if name in state.members:
                self.events.emit("rejected", RejectedEnvelopeEvent(self.id, None, name, why))
        if refetch_keys:
            await self._fetch_keys()

    async def append_event(
        self, build: Callable[[SpaceState], StateEvent], *, keys: tuple[WrappedKey, ...] = ()
    ) -> int:
        """Sign and append a state event built on the current head (with ``keys``, wrapped
        keys it hands over); if another event came first, fetch the log and build again.
        Returns the event's seq."""
        for attempt in range(_STALE_RETRIES):
            state = self.core.state
            if state is None:
                await self.sync_log()
                state = self.core.require_state()
            event = build(state)
            try:
                result = await self.client.request(
                    frames.Append(UNSENT, space_id=self.id, event=event, keys=keys)
                )
            except StaleStateError:
                await stale_backoff(attempt)
                await self.sync_log()
                continue
            await self.extend_with([event])
            return result.seq
        raise StaleStateError(f"the log of {self.id} kept moving: try again")

    def sign_event(self, state: SpaceState, kind: str, body: dict[str, Any]) -> StateEvent:
        return make_event(
            self.client.identity,
            space_id=self.id,
            seq=state.head_seq + 1,
            prev=state.head,
            kind=kind,
            actor=self.client.username,
            at_us=self.client.clock.now_us(),
            body=body,
        )

    async def checkpoint(self) -> int:
        """Sign a checkpoint at the head of the state log; returns its seq.

        Whoever reads the log from scratch later (a newcomer, a fresh client) verifies
        this one signature instead of every event before it (PROTOCOL.md, "Checkpoints";
        the keeper writes them by itself in the channels it was admitted to). Only the
        owner (or the keeper) may: others get :class:`PermissionDeniedError`.
        """

        def build(state: SpaceState) -> StateEvent:
            if not state.may_checkpoint(self.client.username):
                raise PermissionDeniedError("only the space's owner may sign a checkpoint")
            return self.sign_event(state, "checkpoint", {})

        return await self.append_event(build)

    async def _handle_state(self, event: StateEvent) -> None:
        state = self.core.state
        try:
            if state is not None and event.seq == state.head_seq + 1:
                new = self.core.extend_log([event])
                if new:
                    self._check_pinned_head()
                    await self.after_state(new)
            elif state is None or event.seq > state.head_seq:
                await self.sync_log()
            else:
                self.core.extend_log([event])  # a repeat: checked against the held hash
        except IntegrityError as exc:
            self._reject(None, "relay", str(exc))
