"""``space.widget()``: a live chat view of one space, as one anywidget.

One widget owns the whole list (no widget per message). The kernel side keeps a
:class:`ChatState` and sends the front end *changes*, never the whole list: appends,
edits and deletes of messages, gathered for at most :data:`FLUSH_DELAY` seconds into one
comm message. A view that opens asks for a snapshot of the newest ``window`` messages and
older pages on demand. ``chat.js`` applies the changes once per animation frame and
renders only a window of rows.

The widget depends on the async space (its public methods and handlers) and on a
:class:`LoopRunner`, the loop it runs on; nothing else. Threads: every change of state
happens on that loop's thread (where the async core calls its handlers), so the state
needs no lock; messages from the front end (the kernel's thread) are handed over to the
loop. A trait set, or a comm message sent, from that thread reaches the front end even
while no cell runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import pathlib
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

import anywidget
import traitlets

from ..aio.events import EphemeralEvent, MessageDeletedEvent, PresenceEvent, SpaceMessageEvent
from ..units import human_bytes
from .chat_state import ChatState, Row, is_typing

if TYPE_CHECKING:
    from ..aio import AsyncSpace

__all__ = ["TYPING_SUBJECT", "ChatWidget", "LoopRunner"]

T = TypeVar("T")

TYPING_SUBJECT = "typing"  # the ephemeral subject of typing signals
TYPING_INTERVAL = 2.0  # send at most one typing signal per this many seconds
FLUSH_DELAY = 0.03  # seconds changes wait to travel together to the front end
WATCH_INTERVAL = 0.5  # seconds between looks at the connection
GIVE_UP_AFTER = 15.0  # seconds of reconnecting before the header says "disconnected"
DISPLAY_WAIT = 5.0  # seconds a display waits for the first page, for its transcript
PROGRESS_EVERY = 0.1  # seconds between progress updates of a transfer
CHUNK = 512 * 1024  # bytes per comm message when a file travels to or from the browser
MAX_UPLOAD = 256 * 1024 * 1024  # bytes: larger files go through put_file() from code

_HERE = pathlib.Path(__file__).parent


class LoopRunner(Protocol):
    """What the widget needs of the loop its space lives on (spacenb.sync's runner is one)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; a thread-safe future of its result."""
        ...

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Call ``fn(*args)`` on the loop's thread, soon (thread-safe)."""
        ...


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "the relay did not store it in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Transfer:
    """A file on its way between the browser and the shard stores."""

    def __init__(self, transfer_id: str, name: str, size: int, content_type: str) -> None:
        self.id = transfer_id
        self.name = name
        self.size = size
        self.content_type = content_type
        self.file: IO[bytes] | None = None
        self.received = 0
        self.phase = "sending to the kernel"
        self.done = 0
        self.total = size
        self.error = ""

    def wire(self) -> dict[str, Any]:
        label = f"{self.name}: {self.phase} {human_bytes(self.done)} / {human_bytes(self.total)}"
        return {
            "id": self.id,
            "label": f"{self.name}: {self.error}" if self.error else label,
            "done": self.done,
            "total": max(self.total, 1),
            "failed": bool(self.error),
        }


class ChatWidget(anywidget.AnyWidget):
    """A live view of a space: messages, composer, connection, who is online and typing.

    Bodies show as sanitized Markdown, files as chips that download, other JSON as code.
    Your own messages can be edited and deleted; a send shows as pending until the relay
    stores it, and as failed, with a retry, if it does not within ``send_timeout``
    seconds. ``window`` newest messages are shown at first; "Load older" fetches ``page``
    at a time. Enter sends, Shift+Enter adds a newline, Escape leaves the composer.

    From code: :meth:`send_message`, :meth:`edit_message`, :meth:`delete_message`,
    :meth:`send_typing`, :meth:`load_older`, :attr:`messages`, :attr:`pending`;
    :meth:`detach` stops following the space (the view stays, read-only) and
    :meth:`close` also closes the view. Saved in a notebook, the widget's output carries a
    transcript (HTML and text) of what it showed when it was displayed.
    """

    _esm = _HERE / "chat.js"
    _css = _HERE / "chat.css"

    title = traitlets.Unicode("").tag(sync=True)
    me = traitlets.Unicode("").tag(sync=True)
    online = traitlets.List(traitlets.Unicode()).tag(sync=True)
    typing_users = traitlets.List(traitlets.Unicode()).tag(sync=True)
    connection = traitlets.Unicode("connecting").tag(sync=True)
    transfers = traitlets.List(traitlets.Dict()).tag(sync=True)
    loading = traitlets.Bool(True).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        space: AsyncSpace,
        *,
        runner: LoopRunner,
        window: int = 100,
        page: int = 50,
        send_timeout: float = 20.0,
        **kwargs: Any,
    ) -> None:
        if window < 1 or page < 1:
            raise ValueError("window and page must be at least 1")
        me = space.client.username
        super().__init__(title=space.name or space.id, me=me, **kwargs)
        self.space = space
        self.window = window
        self.page = page
        self.send_timeout = send_timeout
        self._runner = runner
        self._state = ChatState(me)
        self._last_typing_sent = float("-inf")
        self._expiry: asyncio.TimerHandle | None = None
        self._watcher: asyncio.TimerHandle | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._outbox: list[list[Any]] = []
        self._echoes: dict[int, int] = {}  # handle stored → pending id awaiting its echo
        self._transfers: dict[str, _Transfer] = {}
        self._progress_at = 0.0
        self._lost_at: float | None = None
        self._detached = False
        self._unsubscribe: list[Callable[[], None]] = []
        self.on_msg(self._on_front_end)
        self._started = self._submit(self._start())

    # ------------------------------------------------------------------ running on the loop

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; a failure is shown in the view, not raised."""
        future = self._runner.submit(coro)
        future.add_done_callback(self._report)
        return future

    def _report(self, future: concurrent.futures.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.error = _reason(future.exception())  # type: ignore[arg-type]

    def _on_loop(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """``fn()`` on the loop's thread (where the state lives), from any thread."""
        try:
            if asyncio.get_running_loop() is self._runner.loop:
                return fn()
        except RuntimeError:
            pass

        async def call() -> T:
            return fn()

        return self._runner.submit(call()).result(timeout)

    # ------------------------------------------------------------------ wiring (loop thread)

    async def _start(self) -> None:
        space = self.space
        self._unsubscribe = [
            space.on_message(self._on_message),
            space.on_message_edited(self._on_edited),
            space.on_message_deleted(self._on_deleted),
            space.on_ephemeral(self._on_ephemeral),
            space.on_presence(self._on_presence),
        ]
        self._watch()
        if not space.is_connected():
            await space.connect()
        self._state.set_online(space.peers())
        self.online = list(self._state.online)
        try:
            await self._fetch(min(self.window, 1000))
        finally:
            self.loading = False
        self._send_snapshot(None)
        self._watch()

    async def _fetch(self, limit: int) -> int:
        """Read one page of history before the oldest loaded message."""
        page = await self.space.history(before=self._state.cursor, limit=limit)
        return self._state.add_page(page.messages, page.next_cursor)

    def _watch(self) -> None:
        """Look at the connection now, and again in WATCH_INTERVAL seconds."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self._detached:
            return
        state = self._connection_now()
        if state != self.connection:
            self.connection = state
            if state == "connected":
                self._state.set_online(self.space.peers())
                self.online = list(self._state.online)
        self._watcher = self._runner.loop.call_later(WATCH_INTERVAL, self._watch)

    def _connection_now(self) -> str:
        if self.space.is_connected():
            self._lost_at = None
            return "connected"
        if self.connection == "connecting":
            return "connecting"
        client_online = getattr(getattr(self.space.client, "connection", None), "is_open", False)
        if client_online:  # signed in, but this space is not followed (space.disconnect())
            return "disconnected"
        now = self._runner.loop.time()
        if self._lost_at is None:
            self._lost_at = now
        return "reconnecting" if now - self._lost_at < GIVE_UP_AFTER else "disconnected"

    # ------------------------------------------------------------------ to the front end

    def _queue(self, op: list[Any]) -> None:
        """Send ``op`` with the next batch (at most FLUSH_DELAY seconds from now)."""
        self._outbox.append(op)
        if self._flush_handle is None:
            self._flush_handle = self._runner.loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        ops, self._outbox = self._outbox, []
        if not ops or self.comm is None:
            return
        rows = [op[1] for op in ops if op[0] in ("a", "p")]
        self.send({"t": "ops", "ops": ops, "people": self._state.people(rows)})

    def _send_snapshot(self, view: str | None) -> None:
        """Send the newest ``window`` rows and the pending sends to ``view`` (None: all)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()
        state = self._state
        rows = state.newest(self.window)
        pending = state.all_pending()
        self.send(
            {
                "t": "reset",
                "to": view,
                "rows": rows,
                "pending": pending,
                "people": state.people([*rows, *pending]),
                "more": len(state) > len(rows) or state.more_on_relay,
            }
        )

    # ------------------------------------------------------------------ events (loop thread)

    def _on_message(self, event: SpaceMessageEvent) -> None:
        self._queue(["a", self._state.add(event)])
        pending_id = self._echoes.pop(event.handle, None)
        if pending_id is not None and self._state.unpend(pending_id):
            self._queue(["r", pending_id])
        if self.typing_users and event.sender in self.typing_users:
            self.typing_users = self._state.typing()

    def _on_edited(self, event: SpaceMessageEvent) -> None:
        row = self._state.edit(event)
        if row is not None:
            self._queue(["a", row])

    def _on_deleted(self, event: MessageDeletedEvent) -> None:
        if self._state.delete(event.handle):
            self._queue(["d", event.handle])

    def _on_presence(self, event: PresenceEvent) -> None:
        self._state.set_online(event.peers)
        self.online = list(self._state.online)
        self._watch()

    def _on_ephemeral(self, event: EphemeralEvent) -> None:
        if event.subject != TYPING_SUBJECT:
            return
        if self._state.typing_signal(event.sender, is_typing(event.data)):
            self.typing_users = self._state.typing()
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        delay = self._state.next_expiry()
        if delay is not None:
            self._expiry = self._runner.loop.call_later(delay + 0.05, self._expire_typing)

    def _expire_typing(self) -> None:
        self._expiry = None
        self.typing_users = self._state.typing()
        self._schedule_expiry()

    # ------------------------------------------------------------------ sending

    def send_message(self, text: str) -> concurrent.futures.Future[int] | None:
        """Send ``text`` as a message, shown as pending until stored (blank text is not
        sent). Returns a future of its handle, which raises if the send failed."""
        if not text.strip():
            return None
        return self._runner.submit(self._send_text(text))

    async def _send_text(self, text: str) -> int:
        if self._detached:
            raise RuntimeError("this chat view is closed")
        pending = self._state.pend(text)
        self._queue(["p", self._state.pending_wire(pending)])
        return await self._deliver(pending.id)

    async def _deliver(self, pending_id: int) -> int:
        pending = self._state.pending(pending_id)
        if pending is None:
            raise KeyError(pending_id)
        try:
            handle = await asyncio.wait_for(
                self.space.send_message(pending.text), self.send_timeout
            )
        except Exception as exc:
            failed = self._state.fail(pending_id, _reason(exc))
            if failed is not None:
                self._queue(["p", self._state.pending_wire(failed)])
            raise
        if handle in self._state:  # its echo came first
            if self._state.unpend(pending_id):
                self._queue(["r", pending_id])
        else:
            self._echoes[handle] = pending_id
        return handle

    async def _retry(self, pending_id: int) -> None:
        pending = self._state.pending(pending_id)
        if pending is None or pending.failed is None:
            return
        pending.failed = None
        self._queue(["p", self._state.pending_wire(pending)])
        with contextlib.suppress(Exception):  # a failure shows on the row again
            await self._deliver(pending_id)

    def _discard(self, pending_id: int) -> None:
        pending = self._state.pending(pending_id)
        if pending is not None and pending.failed is not None and self._state.unpend(pending_id):
            self._queue(["r", pending_id])

    def edit_message(self, handle: int, text: str) -> concurrent.futures.Future[None]:
        """Replace the text of your message at ``handle`` (its other fields are kept)."""
        return self._submit(self._edit(handle, text))

    async def _edit(self, handle: int, text: str) -> None:
        body = self._state.body(handle)
        if isinstance(body, dict):
            key = "text" if isinstance(body.get("text"), str) else "contents"
            payload: Any = {**body, key: text}
        else:
            payload = text
        self.error = ""
        await self.space.edit_message(handle, payload)

    def delete_message(self, handle: int) -> concurrent.futures.Future[None]:
        """Delete your message at ``handle``."""
        return self._submit(self._delete(handle))

    async def _delete(self, handle: int) -> None:
        self.error = ""
        await self.space.delete_message(handle)

    def send_typing(self) -> concurrent.futures.Future[Any] | None:
        """Tell the others you are typing (at most once per ``TYPING_INTERVAL`` s)."""
        now = time.monotonic()
        if now - self._last_typing_sent < TYPING_INTERVAL:
            return None
        self._last_typing_sent = now
        return self._submit(self.space.send_ephemeral(TYPING_SUBJECT, {"isTyping": True}))

    # ------------------------------------------------------------------ older messages

    def load_older(self) -> concurrent.futures.Future[None]:
        """Load the page before the oldest loaded message (for every open view)."""
        return self._submit(self._older(None, None))

    async def _older(self, before: int | None, view: str | None) -> None:
        state = self._state
        if before is None and view is None:  # from code: the page before all loaded ones
            before = state.oldest
        try:
            self.loading = True
            while state.loaded_before(before) < self.page and state.more_on_relay:
                if not await self._fetch(self.page):
                    break
        finally:
            self.loading = False
        rows, more = state.older(before, self.page)
        message = {"t": "older", "to": view, "rows": rows, "more": more}
        self.send({**message, "people": state.people(rows)})

    # ------------------------------------------------------------------ files

    def _update_transfers(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._progress_at >= PROGRESS_EVERY:
            self._progress_at = now
            self.transfers = [t.wire() for t in self._transfers.values()]

    def _upload_start(self, content: dict[str, Any]) -> None:
        transfer_id, size = str(content.get("id")), content.get("size")
        name = str(content.get("name") or "file")
        if not isinstance(size, int) or size < 0:
            return
        transfer = _Transfer(
            transfer_id, name, size, str(content.get("mime") or "application/octet-stream")
        )
        self._transfers[transfer_id] = transfer
        if size > MAX_UPLOAD:
            transfer.error = f"larger than {human_bytes(MAX_UPLOAD)}: use space.put_file()"
        else:
            transfer.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _upload_end
        self._update_transfers(force=True)

    def _upload_chunk(self, content: dict[str, Any], buffers: list[bytes]) -> None:
        transfer = self._transfers.get(str(content.get("id")))
        if transfer is None or transfer.file is None:
            return
        for buffer in buffers:
            transfer.file.write(buffer)
            transfer.received += len(buffer)
        transfer.done = min(transfer.received, transfer.size)
        self._update_transfers()

    async def _upload_end(self, transfer_id: str) -> None:
        transfer = self._transfers.get(transfer_id)
        if transfer is None or transfer.file is None:
            return
        file, transfer.file = transfer.file, None

        def progress(done: int, total: int) -> None:
            transfer.phase, transfer.done, transfer.total = "uploading", done, total
            self._update_transfers(force=done >= total)

        try:
            file.seek(0)
            transfer.phase, transfer.done = "encrypting", 0
            self._update_transfers(force=True)
            manifest, _stat = await self.space.put_file(
                file, name=transfer.name, content_type=transfer.content_type, progress=progress
            )
            await self.space.send_message({"file": manifest.to_dict()})
        except Exception as exc:
            transfer.error = _reason(exc)
            self._update_transfers(force=True)
            return
        finally:
            file.close()
        del self._transfers[transfer_id]
        self._update_transfers(force=True)

    def _dismiss_transfer(self, transfer_id: str) -> None:
        transfer = self._transfers.get(transfer_id)
        if transfer is not None and transfer.error:
            del self._transfers[transfer_id]
            self._update_transfers(force=True)

    async def _download(self, handle: int, view: str | None) -> None:
        shown = self._state.shown(handle)
        if shown.manifest is None or shown.file is None:
            return
        chip = shown.file
        transfer = _Transfer(f"download-{handle}", chip.name, chip.size, chip.content_type)
        transfer.phase = "downloading"
        self._transfers[transfer.id] = transfer

        def progress(done: int, total: int) -> None:
            transfer.done, transfer.total = done, total
            self._update_transfers(force=done >= total)

        try:
            self._update_transfers(force=True)
            data, _stat = await self.space.get_file(shown.manifest, progress=progress)
        except Exception as exc:
            transfer.error = _reason(exc)
            self._update_transfers(force=True)
            return
        del self._transfers[transfer.id]
        self._update_transfers(force=True)
        header = {"t": "file", "to": view, "h": handle, "name": chip.name}
        header["mime"], header["size"] = chip.content_type, len(data)
        for offset in range(0, max(len(data), 1), CHUNK):
            self.send({**header, "offset": offset}, buffers=[data[offset : offset + CHUNK]])

    # ------------------------------------------------------------------ from the front end

    def _on_front_end(self, _widget: Any, content: Any, buffers: Any) -> None:
        """Runs on the kernel's thread: hand the message to the loop, in order."""
        if isinstance(content, dict):
            self._runner.call_soon(self._handle, content, [bytes(b) for b in buffers or ()])

    def _handle(self, content: dict[str, Any], buffers: list[bytes]) -> None:
        action, view = content.get("type"), content.get("view")
        view = view if isinstance(view, str) else None
        handle = content.get("handle")
        if action == "chunk":
            self._upload_chunk(content, buffers)
        elif action == "hello":
            if not self.loading:
                self._send_snapshot(view)
        elif self._detached:
            return
        elif action == "send" and isinstance(content.get("text"), str):
            if content["text"].strip():
                self._submit_quietly(self._send_text(content["text"]))
        elif action == "retry" and isinstance(content.get("id"), int):
            self._submit(self._retry(content["id"]))
        elif action == "discard" and isinstance(content.get("id"), int):
            self._discard(content["id"])
        elif action == "edit" and isinstance(handle, int) and isinstance(content.get("text"), str):
            if handle in self._state and content["text"].strip():
                self._submit(self._edit(handle, content["text"]))
        elif action == "delete" and isinstance(handle, int) and handle in self._state:
            self._submit(self._delete(handle))
        elif action == "typing":
            self.send_typing()
        elif action == "load_older":
            before = content.get("before")
            self._submit(self._older(before if isinstance(before, int) else None, view))
        elif action == "upload":
            self._upload_start(content)
        elif action == "upload_end":
            self._submit(self._upload_end(str(content.get("id"))))
        elif action == "dismiss":
            self._dismiss_transfer(str(content.get("id")))
        elif action == "download" and isinstance(handle, int) and handle in self._state:
            self._submit(self._download(handle, view))

    def _submit_quietly(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro``; its failure is already shown (a failed row), so it is not raised."""
        future = self._runner.submit(coro)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())

    # ------------------------------------------------------------------ reading the view

    @property
    def messages(self) -> list[Row]:
        """The loaded messages, oldest first, as the view shows them (see
        :meth:`ChatState.view`)."""
        return self._on_loop(self._state.view)

    @property
    def pending(self) -> list[Row]:
        """Sends not stored yet: ``{"p": id, "x": text}``, with ``"err"`` once failed."""
        return self._on_loop(self._state.all_pending)

    def transcript_text(self) -> str:
        """What the view shows now, as plain text."""
        return self._on_loop(lambda: self._state.transcript_text(self.title))

    def transcript_html(self) -> str:
        """What the view shows now, as static, escaped HTML."""
        return self._on_loop(lambda: self._state.transcript_html(self.title))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The live view, and a transcript for wherever widgets do not run (a saved
        notebook on GitHub or nbviewer, or before its kernel starts)."""
        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if not isinstance(data, dict):
            return bundle
        with contextlib.suppress(Exception):  # still loading: the transcript shows less
            self._started.result(DISPLAY_WAIT)
        with contextlib.suppress(Exception):  # the loop is gone (at exit): the repr stays
            data["text/plain"] = self.transcript_text()
            data["text/html"] = self.transcript_html()
        return bundle

    def __repr__(self) -> str:
        return f"<spacenb.ChatWidget {self.title!r} connection={self.connection!r}>"

    # ------------------------------------------------------------------ closing

    def detach(self) -> None:
        """Stop following the space: the view stays, read-only, marked closed."""
        self._runner.call_soon(self._detach)

    def _detach(self) -> None:
        self._detached = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for handle in (self._expiry, self._watcher):
            if handle is not None:
                handle.cancel()
        self._expiry = self._watcher = None
        if self.comm is not None:
            self._flush()
            self.connection = "closed"

    def close(self) -> None:
        """Stop following the space and close the view."""
        self._runner.call_soon(self._detach)
        super().close()
