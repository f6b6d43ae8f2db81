"""``space.widget()``: a live chat view of one space, as one anywidget.

One widget owns the whole list (no widget per message): the Python side keeps a
:class:`ChatState` and publishes the rendered window as a JSON trait; ``chat.js`` draws it
with ``textContent`` only, so peer content can never become markup.

Threads: every change of state and every trait update happens on the runner's loop
thread (where the async core calls its handlers), so the state needs no lock; messages
from the front end (the kernel's thread) are handed over as coroutines to the runner. A trait set
from that thread reaches the front end even while no cell runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pathlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from ..events import EphemeralEvent, MessageDeletedEvent, PresenceEvent, SpaceMessageEvent
from .chat_state import ChatState, is_typing

if TYPE_CHECKING:
    from ..sync.space import Space

__all__ = ["TYPING_SUBJECT", "ChatWidget"]

TYPING_SUBJECT = "typing"  # the ephemeral subject of typing signals
TYPING_INTERVAL = 2.0  # send at most one typing signal per this many seconds

_HERE = pathlib.Path(__file__).parent


class ChatWidget(anywidget.AnyWidget):
    """A live view of a space: messages, composer, who is online, who is typing.

    Messages arrive as they are sent (sender, relay time, body, "(edited)"); deleted
    messages vanish. ``window`` newest messages are rendered; "Load older" reveals or
    fetches more with the history cursor, ``page`` at a time. Enter sends, Shift+Enter
    adds a newline. From code: :meth:`send_message`, :meth:`send_typing`, :meth:`load_older`.
    """

    _esm = _HERE / "chat.js"
    _css = _HERE / "chat.css"

    title = traitlets.Unicode("").tag(sync=True)
    me = traitlets.Unicode("").tag(sync=True)
    messages = traitlets.List(traitlets.Dict()).tag(sync=True)
    online = traitlets.List(traitlets.Unicode()).tag(sync=True)
    typing_users = traitlets.List(traitlets.Unicode()).tag(sync=True)
    can_load_older = traitlets.Bool(True).tag(sync=True)
    loading = traitlets.Bool(True).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(self, space: Space, *, window: int = 200, page: int = 50, **kwargs: Any) -> None:
        super().__init__(title=space.name or space.id, me=space.client.username, **kwargs)
        self.space = space
        self.page = page
        self._runner = space.client._runner
        self._state = ChatState(space.client.username, window=window)
        self._last_typing_sent = float("-inf")
        self._expiry: asyncio.TimerHandle | None = None  # the next typing expiry
        self._unsubscribe: list[Callable[[], None]] = []
        self.on_msg(self._on_front_end)
        self._runner.call(self._subscribe)
        self._submit(self._start())

    # ------------------------------------------------------------------ wiring (loop thread)

    def _subscribe(self) -> None:
        inner = self.space.aio
        self._unsubscribe = [
            inner.on_message(self._on_message),
            inner.on_message_edited(self._on_edited),
            inner.on_message_deleted(self._on_deleted),
            inner.on_ephemeral(self._on_ephemeral),
            inner.on_presence(self._on_presence),
        ]

    async def _start(self) -> None:
        inner = self.space.aio
        if not inner.is_connected():
            await inner.connect()
        self._state.set_online(inner.peers())
        await self._fetch_older()

    async def _fetch_older(self) -> None:
        self.loading = True
        try:
            page = await self.space.aio.history(before=self._state.cursor, limit=self.page)
            self._state.add_page(page.messages, page.next_cursor)
        finally:
            self.loading = False
            self._publish()

    def _submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        """Run ``coro`` on the loop; a failure is shown in the view, not raised."""
        future = self._runner.submit(coro)
        future.add_done_callback(self._report)
        return future

    def _report(self, future: concurrent.futures.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.error = f"{type(future.exception()).__name__}: {future.exception()}"

    def _publish(self) -> None:
        state = self._state
        with self.hold_sync():
            self.messages = state.view()
            self.online = list(state.online)
            self.typing_users = state.typing()
            self.can_load_older = state.can_load_older

    def _on_message(self, event: SpaceMessageEvent) -> None:
        self._state.add(event)
        self._publish()

    def _on_edited(self, event: SpaceMessageEvent) -> None:
        if self._state.edit(event):
            self._publish()

    def _on_deleted(self, event: MessageDeletedEvent) -> None:
        if self._state.delete(event.handle):
            self._publish()

    def _on_presence(self, event: PresenceEvent) -> None:
        self._state.set_online(event.peers)
        self._publish()

    def _on_ephemeral(self, event: EphemeralEvent) -> None:
        if event.subject != TYPING_SUBJECT:
            return
        if self._state.typing_signal(event.sender, is_typing(event.data)):
            self._publish()
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        delay = self._state.next_expiry()
        if delay is not None:
            self._expiry = self._runner.loop.call_later(delay + 0.05, self._expire_typing)

    def _expire_typing(self) -> None:
        self._expiry = None
        self._publish()
        self._schedule_expiry()

    # ------------------------------------------------------------------ actions

    def send_message(self, text: str) -> concurrent.futures.Future[Any] | None:
        """Send ``text`` as a message (blank text is not sent). Returns the pending send."""
        if not text.strip():
            return None
        return self._submit(self._send_text(text))

    async def _send_text(self, text: str) -> None:
        self.error = ""
        await self.space.aio.send_message(text)

    def send_typing(self) -> concurrent.futures.Future[Any] | None:
        """Tell the others you are typing (at most once per ``TYPING_INTERVAL`` s)."""
        now = time.monotonic()
        if now - self._last_typing_sent < TYPING_INTERVAL:
            return None
        self._last_typing_sent = now
        return self._submit(self.space.aio.send_ephemeral(TYPING_SUBJECT, {"isTyping": True}))

    def load_older(self) -> concurrent.futures.Future[Any] | None:
        """Show older messages: hidden loaded ones first, else fetch the page before."""
        return self._submit(self._load_older())

    async def _load_older(self) -> None:
        if self._state.reveal(self.page):
            self._publish()
        elif self._state.cursor is not None:
            await self._fetch_older()

    def _on_front_end(self, _widget: Any, content: Any, _buffers: Any) -> None:
        action = content.get("type") if isinstance(content, dict) else None
        if action == "send" and isinstance(content.get("text"), str):
            self.send_message(content["text"])
        elif action == "typing":
            self.send_typing()
        elif action == "load_older":
            self.load_older()

    def close(self) -> None:
        """Stop following the space and close the view."""
        self._runner.call_soon(self._detach)
        super().close()

    def _detach(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
