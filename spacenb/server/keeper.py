"""The keeper: an always-on member that hands group keys to newcomers.

Channels stay joinable when no human member is online because the server runs a keeper,
a member like any other with its own identity keys. When someone joins a space whose
genesis admitted the keeper (and that is not admitted by hand), it verifies the space's
state log from genesis with the same member core every client runs
(:class:`~spacenb.protocol.member.MemberCore`), unwraps the group keys addressed to itself
(only from wrappers the log entitles), wraps the epochs the log gives the newcomer (every
epoch of a ``static`` space, the current one of a ``rotate`` space) and admits it.

After each join it also signs a **checkpoint** at the head of the log it verified once
``checkpoint_every`` events have come since the last one (PROTOCOL.md, "Checkpoints"): a
newcomer then verifies that one signature instead of every event before it.

The keeper talks to the relay only through :class:`KeeperPort`, the handful of requests
any member could make; it never sees message storage. Its keys at rest are the wrapped
blobs the relay stores for it, as opaque to the database as anyone's; the keys it has
unwrapped live only in this process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from ..exceptions import SpacenbError, StaleStateError
from ..protocol.keyring import Keyring
from ..protocol.keys import IdentityKeys
from ..protocol.member import MemberCore
from ..protocol.statelog import StateEvent, make_event
from ..protocol.wrap import WrappedKey

__all__ = ["CHECKPOINT_EVERY", "KEEPER_USERNAME", "Keeper", "KeeperPort"]

log = logging.getLogger("spacenb.server.keeper")

KEEPER_USERNAME = "keeper"
CHECKPOINT_EVERY = 128  # state events between the keeper's checkpoints (Limits.checkpoint_every)
_CHECKPOINT_TRIES = 3  # a checkpoint raced by another relay's append: try again at the next join


class KeeperPort(Protocol):
    """The requests the keeper may make, as the member it is. Each raises the
    :class:`SpacenbError` a client would get for the same request."""

    def state_log(self, space_id: str, since: int) -> Sequence[StateEvent]: ...

    def fetch_keys(self, space_id: str) -> Sequence[WrappedKey]: ...

    def admit(self, space_id: str, member: str, keys: Sequence[WrappedKey]) -> None: ...

    def append(self, space_id: str, event: StateEvent) -> None:
        """Append a signed state event (:class:`StaleStateError` if the head moved)."""
        ...

    def now_us(self) -> int:
        """The relay's clock, µs since the Unix epoch."""
        ...

    def pending_joins(self) -> Sequence[tuple[str, str]]:
        """``(space_id, member_id)`` of every open join request."""
        ...


class Keeper:
    """Admits newcomers to the spaces it is a member of, one request at a time.

    Feed it with :meth:`notify` (the relay's ``join_request`` events); run it between
    :meth:`start` and :meth:`stop`. :meth:`admit` does one admission synchronously.
    """

    def __init__(
        self,
        identity: IdentityKeys,
        port: KeeperPort,
        *,
        username: str = KEEPER_USERNAME,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.identity = identity
        self.username = username
        self.checkpoint_every = checkpoint_every  # 0: never
        self._port = port
        self._cores: dict[str, MemberCore] = {}
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def notify(self, space_id: str, member_id: str) -> None:
        """Queue a join request; it is handled after the ones before it."""
        self._queue.put_nowait((space_id, member_id))

    async def start(self) -> None:
        """Start admitting, beginning with requests left open while the keeper was down."""
        for space_id, member_id in self._port.pending_joins():
            self.notify(space_id, member_id)
        self._task = asyncio.create_task(self._run(), name="spacenb-keeper")

    async def stop(self) -> None:
        """Stop admitting (queued requests stay open in storage for the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def idle(self) -> None:
        """Wait until every queued request has been handled."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            space_id, member_id = await self._queue.get()
            try:
                self.admit(space_id, member_id)
                self.checkpoint_if_due(space_id)
            except SpacenbError as exc:
                log.warning("keeper could not admit %s to %s: %s", member_id, space_id, exc)
            except Exception:
                log.exception("keeper failed on %s joining %s", member_id, space_id)
            finally:
                self._queue.task_done()

    def admit(self, space_id: str, member_id: str) -> bool:
        """Wrap the keys the log gives ``member_id`` and admit it; False if the keeper
        should not (genesis did not admit it, admission is by hand, not a member).

        Raises :class:`KeyUnavailableError` if the keeper lacks a key it should hold, and
        :class:`IntegrityError` if the relay's log does not verify.
        """
        core = self._core(space_id)
        if core is None:
            return False
        epochs = core.admission(member_id, as_keeper=True)
        if not epochs:
            return False
        self._take_keys(core)
        self._port.admit(space_id, member_id, core.wrap_for(member_id, epochs))
        log.info("keeper admitted %s to %s (epochs %s)", member_id, space_id, epochs)
        return True

    def checkpoint_if_due(self, space_id: str) -> int | None:
        """Sign and append a checkpoint at the head of the verified log if at least
        ``checkpoint_every`` events came after the last checkpoint (or genesis) and the
        log lets the keeper sign one; its seq, or None."""
        if self.checkpoint_every <= 0:
            return None
        for _ in range(_CHECKPOINT_TRIES):
            core = self._core(space_id)
            if core is None or core.state is None:
                return None
            state = core.state
            if state.head_seq - state.checkpoint_seq < self.checkpoint_every:
                return None
            if not state.may_checkpoint(self.username):
                return None
            event = make_event(
                self.identity,
                space_id=space_id,
                seq=state.head_seq + 1,
                prev=state.head,
                kind="checkpoint",
                actor=self.username,
                at_us=self._port.now_us(),
                body={},
            )
            try:
                self._port.append(space_id, event)
            except StaleStateError:
                continue  # another relay of the service appended first: read and sign again
            except SpacenbError as exc:
                log.warning("keeper could not checkpoint %s: %s", space_id, exc)
                return None
            core.extend_log([event])
            log.info("keeper checkpointed %s at event %d", space_id, event.seq)
            return event.seq
        return None

    def _core(self, space_id: str) -> MemberCore | None:
        """The keeper's verified view of the space, brought up to the relay's head."""
        core = self._cores.get(space_id)
        if core is None:
            core = MemberCore(space_id, self.username, self.identity)
        since = 0 if core.state is None else core.state.head_seq + 1
        try:
            while True:
                events = self._port.state_log(space_id, since)
                core.extend_log(events, more=True)
                if len(events) == 0:
                    break
                since = core.next_log_seq
            core.finish_log()
            if core.state is None:
                return None
        except SpacenbError as exc:
            log.info("keeper cannot read the log of %s: %s", space_id, exc)
            return None
        self._cores[space_id] = core
        return core

    def _take_keys(self, core: MemberCore) -> None:
        """Unwrap the keys wrapped to the keeper that the log lets it hold."""
        state = core.require_state()
        if core.keyring is None:
            core.keyring = Keyring(core.space_id, state.policy)
        if core.keyring.has(state.epoch):
            return
        for wrapped in self._port.fetch_keys(core.space_id):
            if core.keyring.has(wrapped.epoch):
                continue
            try:
                core.keyring.add(wrapped.epoch, core.accept_key(wrapped))
            except SpacenbError as exc:
                log.warning(
                    "keeper refuses a key for %s from %s: %s", core.space_id, wrapped.wrapper, exc
                )
