"""``Space``: the blocking twin of :class:`spacenb.aio.AsyncSpace`.

Every method has the async method's name and arguments and is one call through the
runner. Handlers registered here run on the facade's callback thread (in order, never on
the event loop), so they may block, print, plot or call the facade again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from ..aio import AsyncSpace
from ..aio.events import (
    EphemeralEvent,
    JoinRequest,
    MessageDeletedEvent,
    PresenceEvent,
    RejectedEnvelopeEvent,
    SpaceMessageEvent,
)
from ..aio.types import Keyring, SpaceState
from ..typing import Handler, Progress, Unsubscribe
from .callbacks import get_callback_thread
from .dataframes import history_frame, state_log_frame
from .display import Displayable
from .progress import progress_callback
from .records import FileManifest

if TYPE_CHECKING:
    from ..aio.files import FileSource, FileStat
    from ..aio.types import Manifest
    from ..widgets import ChatWidget
    from .client import Client

__all__ = ["Space"]

T = TypeVar("T")


class Space(Displayable):
    """A space you are a member of (or a handle on one). Get it from ``client.space``.

    ``space.aio`` is the async twin. It lives on the facade's private loop: await it from
    ``async def`` handlers (which run there), not from a notebook cell's own loop; for
    top-level ``await`` in a notebook, use ``spacenb.aio.connect`` directly.
    """

    def __init__(self, inner: AsyncSpace, client: Client) -> None:
        self.aio = inner  # the async twin: lives on the facade loop (await it in async handlers)
        self.client = client
        self._run = client._run
        self._handlers: dict[tuple[str, Handler], Handler] = {}

    # ------------------------------------------------------------------ description

    @property
    def id(self) -> str:
        return self.aio.id

    @property
    def keyring(self) -> Keyring | None:
        """The group keys held (None until admitted)."""
        return self.aio.keyring

    @property
    def name(self) -> str | None:
        """The channel name (None for an unnamed space)."""
        return self.aio.name

    @property
    def policy(self) -> str | None:
        """``"static"`` or ``"rotate"`` (None when not yet known)."""
        return self.aio.policy

    @property
    def state(self) -> SpaceState | None:
        """The verified state log's derived state (members with keys, roles, epochs and
        whom each reached, links, bans; read-only), or None before it is fetched."""
        return self.aio.state

    @property
    def epoch(self) -> int | None:
        """The newest epoch whose key is held."""
        return self.aio.epoch

    def peers(self) -> list[str]:
        """Member ids online in this space now."""
        return self.aio.peers()

    def is_connected(self) -> bool:
        return self.aio.is_connected()

    def _repr_fields(self) -> Mapping[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "policy": self.policy,
            "epoch": self.epoch,
            "connected": self.is_connected(),
            "peers": self.peers(),
        }

    # ------------------------------------------------------------------ messages

    def send_message(
        self, payload: Any, *, channel: str = "default", content_type: str | None = None
    ) -> int:
        """Send ``payload``; returns its handle once the relay has stored it."""
        return self._run(self.aio.send_message(payload, channel=channel, content_type=content_type))

    def edit_message(
        self,
        handle: int,
        payload: Any,
        *,
        channel: str | None = None,
        content_type: str | None = None,
    ) -> None:
        """Replace your message at ``handle`` (raises PermissionDeniedError if not yours)."""
        return self._run(
            self.aio.edit_message(handle, payload, channel=channel, content_type=content_type)
        )

    def delete_message(self, handle: int) -> None:
        """Delete your message at ``handle``."""
        return self._run(self.aio.delete_message(handle))

    def send_ephemeral(self, subject: str, data: Any) -> None:
        """Send a signal that is never stored (typing...)."""
        return self._run(self.aio.send_ephemeral(subject, data))

    def history(self, *, before: int | None = None, limit: int = 50) -> pd.DataFrame:
        """One page of history as a DataFrame (oldest first).

        Columns ``handle``, ``sent_at``, ``sender``, ``channel``, ``epoch``,
        ``content_type``, ``body``; ``df.attrs["next_cursor"]`` goes to ``before=`` for
        the page before (None at the start of history).
        """
        return history_frame(self._run(self.aio.history(before=before, limit=limit)))

    # ------------------------------------------------------------------ files

    def state_log(self) -> pd.DataFrame:
        """The space's signed state events, oldest first, as this member verified them:
        ``seq``, ``kind``, ``actor``, ``member``, ``role``, ``epoch``, ``at``, ``hash``.
        Members, roles, epochs and flags are derived from this log alone."""
        self._run(self.aio.sync_log())
        return state_log_frame(self.client.runner.call(self.aio.state_log))

    def put_file(
        self,
        file: FileSource,
        metadata: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        content_type: str | None = None,
        progress: Progress | bool | None = None,
    ) -> tuple[FileManifest, FileStat]:
        """Encrypt, erasure-code and upload ``file`` (bytes, path or binary file object).

        Returns ``(manifest, stat)``: send ``manifest.to_dict()`` in a message to share
        the file. ``progress=True`` shows a tqdm bar; a callable ``progress(done, total)``
        is called on the event loop's thread (keep it quick). Every store takes its share:
        raises NotEnoughSharesError when fewer than ``k`` stores can be reached,
        ConnectionLostError (naming it) when fewer than all of them can.
        """
        with progress_callback(progress, "upload") as callback:
            manifest, stat = self._run(
                self.aio.put_file(
                    file, metadata, name=name, content_type=content_type, progress=callback
                )
            )
        return FileManifest.of(manifest), stat

    def get_file(
        self, manifest: Manifest | Mapping[str, Any], *, progress: Progress | bool | None = None
    ) -> tuple[bytes, FileStat]:
        """Download, check and decrypt the file ``manifest`` (or its dict) describes.

        Returns ``(data, stat)``; ``progress`` as for :meth:`put_file`. Raises
        NotEnoughSharesError, IntegrityError.
        """
        with progress_callback(progress, "download") as callback:
            return self._run(self.aio.get_file(manifest, progress=callback))

    # ------------------------------------------------------------------ membership

    def admit(self, member_id: str, identity_ecdh_pub: str) -> None:
        """Hand the group key to a member who asked to join."""
        return self._run(self.aio.admit(member_id, identity_ecdh_pub))

    def invite(self, username: str, *, role: str = "viewer") -> None:
        """Let ``username`` join this space with ``role`` (a private space admits only the
        invited): a signed invitation in the space's log, naming their pinned keys."""
        return self._run(self.aio.invite(username, role=role))

    def rotate(self, roster: Iterable[str] | None = None) -> int:
        """Mint a new epoch key for ``roster`` (default: all members); returns the epoch."""
        return self._run(self.aio.rotate(roster))

    def checkpoint(self) -> int:
        """Sign a checkpoint at the head of the state log (the owner only): later readers
        of the log verify this one signature instead of every event before it. Returns
        its seq."""
        return self._run(self.aio.checkpoint())

    def connect(self) -> None:
        """Subscribe to live events."""
        return self._run(self.aio.connect())

    def disconnect(self) -> None:
        """Stop receiving live events (you stay a member)."""
        return self._run(self.aio.disconnect())

    def leave(self) -> None:
        """Leave the space for good."""
        return self._run(self.aio.leave())

    # ------------------------------------------------------------------ handlers

    def on(self, event: str, handler: Handler) -> Unsubscribe:
        """Call ``handler(payload)`` on the callback thread for every ``event``.

        Event names are the async core's (``"message"``, ``"message_edited"``,
        ``"message_deleted"``, ``"ephemeral"``, ``"presence"``, ``"join_request"``,
        ``"rejected"``, ``"epoch"``, ``"member"``, ``"state"``, ``"channel:raw_frame"``).
        A coroutine function runs on the event loop instead. Returns a function that
        unsubscribes.
        """
        key = (event, handler)
        if key not in self._handlers:
            self._handlers[key] = get_callback_thread().wrap(handler)
            self.client.runner.call(self.aio.on, event, self._handlers[key])
        return lambda: self.off(event, handler)

    def off(self, event: str, handler: Handler) -> None:
        """Stop calling ``handler`` for ``event`` (no error if it was not registered)."""
        forward = self._handlers.pop((event, handler), None)
        if forward is not None:
            self.client.runner.call(self.aio.off, event, forward)

    def on_message(self, handler: Callable[[SpaceMessageEvent], Any]) -> Unsubscribe:
        return self.on("message", handler)

    def on_message_edited(self, handler: Callable[[SpaceMessageEvent], Any]) -> Unsubscribe:
        return self.on("message_edited", handler)

    def on_message_deleted(self, handler: Callable[[MessageDeletedEvent], Any]) -> Unsubscribe:
        return self.on("message_deleted", handler)

    def on_ephemeral(self, handler: Callable[[EphemeralEvent], Any]) -> Unsubscribe:
        return self.on("ephemeral", handler)

    def on_join_request(self, handler: Callable[[JoinRequest], Any]) -> Unsubscribe:
        return self.on("join_request", handler)

    def on_presence(self, handler: Callable[[PresenceEvent], Any]) -> Unsubscribe:
        return self.on("presence", handler)

    def on_rejected(self, handler: Callable[[RejectedEnvelopeEvent], Any]) -> Unsubscribe:
        """Envelopes this member dropped (bad signature, non-member, replay...)."""
        return self.on("rejected", handler)

    # ------------------------------------------------------------------ notebook

    def widget(self, **options: Any) -> ChatWidget:
        """A live chat view of this space (see :class:`spacenb.widgets.ChatWidget`).

        It follows the space until it is closed, or until the client signs out
        (``client.close()``), which leaves it on screen, read-only.
        """
        from ..widgets import ChatWidget

        chat = ChatWidget(self.aio, runner=self.client.runner, **options)
        self.client._widgets.add(chat)
        return chat
