"""What every part of a space handle shares: its state, description and bookkeeping.

:class:`~spacenb.aio.space.AsyncSpace` is composed of layers over :class:`SpaceBase`,
each in its own module: the state log (:mod:`.space_log`), keys and admission
(:mod:`.space_keys`), messages and history (:mod:`.space_messages`), and the connection,
handlers and files (:mod:`.space`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..protocol import frames
from ..protocol.keyring import HistoryPolicy, Keyring
from ..protocol.keys import decode_public_key
from ..protocol.member import MemberCore
from ..protocol.statelog import SpaceState
from . import readahead
from .events import RejectedEnvelopeEvent
from .handlers import Emitter
from .keystore import SpaceSecrets

if TYPE_CHECKING:
    from .client import AsyncClient
    from .space_messages import KnownMessage

__all__ = ["SpaceBase"]

log = logging.getLogger("spacenb")


class SpaceBase:
    """The attributes every layer of :class:`~spacenb.aio.space.AsyncSpace` reads, what
    describes the space, and the reporting and persisting they all use."""

    if TYPE_CHECKING:
        # Defined by a layer above (space_keys); the state log's reactions call it.
        async def _fetch_keys(self) -> None: ...

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
        self.info = info  # the relay's summary: display only, never believed
        self.auto_admit = auto_admit
        self._secrets = secrets
        self.core = MemberCore(
            space_id,
            client.username,
            client.identity,
            keyring=secrets.keyring if secrets and len(secrets.keyring) else None,
            marks=secrets.marks if secrets else None,
            trust=client.check_pin,
        )
        self.events = Emitter()
        self._peers: tuple[str, ...] = ()
        self._subscribed = False
        self._seen_ephemeral: OrderedDict[str, None] = OrderedDict()
        # by handle, this member's own messages only (to edit them); others' authors are
        # the core's (author_of): a history of 100,000 would keep 100,000 of these
        self._known_messages: dict[int, KnownMessage] = {}
        # by handle, the newest revision handed to on_message_edited: an edit pushed twice
        # (by two relays) is delivered once, one history() already opened still once
        self._edits_delivered: dict[int, int] = {}
        self._key_waiters: list[asyncio.Future[None]] = []
        self._rotating_to: int | None = None  # the epoch this member is minting, if any
        self._link: tuple[str, Callable[[bytes], bytes]] | None = None  # to read a private log
        self._log_lock = asyncio.Lock()
        self._marks_saved = 0.0
        self._page_limit = frames.MAX_HISTORY_LIMIT  # catch-up pages (halved if refused)
        self._head_changed = False
        self.read_ahead = True
        self._ahead = readahead.PageAhead(client)
        self._edits_seen = 0  # edits pushed or made here: a page fetched ahead may be stale

    # ------------------------------------------------------------------ description

    @property
    def state(self) -> SpaceState | None:
        """The verified state log's derived state (None before it is fetched)."""
        return self.core.state

    @property
    def keyring(self) -> Keyring | None:
        """The group keys this member holds (None until it has been admitted)."""
        ring = self.core.keyring
        return ring if ring is not None and len(ring) else None

    @property
    def policy(self) -> HistoryPolicy | None:
        if self.core.state is not None:
            return self.core.state.policy
        if self.info is not None:
            return self.info.policy
        return self._secrets.keyring.policy if self._secrets else None

    @property
    def name(self) -> str | None:
        if self.core.state is not None:
            return self.core.state.name
        return self.info.name if self.info else None

    @property
    def epoch(self) -> int | None:
        """The newest epoch this member holds a key for."""
        keyring = self.keyring
        return keyring.current_epoch if keyring else None

    def peers(self) -> list[str]:
        """Members online in this space now (the relay's presence, limited to members)."""
        return list(self._peers)

    def is_connected(self) -> bool:
        return self._subscribed and self.client.connection.is_open

    def __repr__(self) -> str:
        label = f"{self.name!r} " if self.name else ""
        return f"<AsyncSpace {label}{self.id} policy={self.policy} epoch={self.epoch}>"

    def core_holds(self, epoch: int) -> bool:
        keyring = self.core.keyring
        return keyring is not None and keyring.has(epoch)

    # ------------------------------------------------------------------ reporting and persisting

    def _reject(self, handle: int | None, sender: str, reason: str) -> None:
        log.warning("spacenb: dropped envelope from %r at %s: %s", sender, handle, reason)
        self.events.emit("rejected", RejectedEnvelopeEvent(self.id, handle, sender, reason))

    def save_marks(self, *, every: float = 0.0) -> None:
        """Persist the replay marks and the newest verified log event (at most once per
        ``every`` seconds; at once on disconnect and close)."""
        secrets, replay = self._secrets, self.core.replay
        if secrets is None or not (replay.changed or self._head_changed):
            return
        now = asyncio.get_running_loop().time()
        if now - self._marks_saved < every:
            return
        self._marks_saved = now
        replay.changed = self._head_changed = False
        secrets.marks = dict(replay.marks)
        self.client.keystore.save_space(secrets)
