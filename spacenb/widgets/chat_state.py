"""What a chat view shows, as plain data: the pure model behind :class:`ChatWidget`.

It knows the loaded messages by handle (each body rendered once, see :mod:`.bodies`), the
sends still pending or failed, who is online, who is typing (with expiry) and each
person's avatar. It does no I/O and owns no thread, so it is tested directly; the widget
feeds it events and sends what it returns to the front end.

Three forms of a message come out of it:

- :meth:`ChatState.wire` rows, the compact JSON the front end renders (``h`` handle, ``s``
  sender, then ``x`` text or ``m`` sanitized HTML, ``f`` a file chip, ``e`` edited, and
  for your own messages ``src``, the text an edit starts from);
- :meth:`ChatState.view` rows, readable dicts for code and tests;
- :meth:`ChatState.transcript_html` and :meth:`ChatState.transcript_text`, the saved
  output of a notebook.

Deleted messages vanish from the view (no placeholder): the relay removes their
ciphertext, so there is nothing left to show, and a placeholder would still reveal who
deleted what and when.
"""

from __future__ import annotations

import bisect
import html
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..aio.events import SpaceMessageEvent
from ..units import handle_time
from .bodies import Shown, show
from .looks import AvatarColors, initials

__all__ = ["GROUP_GAP_US", "TYPING_TTL", "ChatState", "Pending", "is_typing"]

TYPING_TTL = 4.0  # seconds a "typing" signal stays valid
GROUP_GAP_US = 5 * 60 * 1_000_000  # a pause this long starts a new group, even same sender

Row = dict[str, Any]


@dataclass(slots=True)
class _Item:
    handle: int
    sender: str
    body: Any
    content_type: str | None
    shown: Shown
    edited: bool = False


@dataclass(slots=True)
class Pending:
    """A message typed here that the relay has not stored yet (or refused)."""

    id: int
    text: str
    failed: str | None = None  # the reason, once the send failed


def is_typing(data: Any) -> bool:
    """Read a typing signal's payload: ``{"isTyping": bool}`` (the reference shape),
    ``{"is_typing": bool}`` or a bare bool; anything else counts as typing."""
    if isinstance(data, bool):
        return data
    if isinstance(data, dict):
        for key in ("isTyping", "is_typing"):
            if isinstance(data.get(key), bool):
                return bool(data[key])
    return True


class ChatState:
    """The state of one chat view for the user ``me``.

    ``clock`` (seconds, monotonic) is injectable for tests.
    """

    def __init__(
        self,
        me: str,
        *,
        typing_ttl: float = TYPING_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.me = me
        self.typing_ttl = typing_ttl
        self._clock = clock
        self._handles: list[int] = []  # sorted
        self._items: dict[int, _Item] = {}
        self._pending: dict[int, Pending] = {}
        self._pending_ids = itertools.count(1)
        self._typing: dict[str, float] = {}  # sender → expiry
        self.colors = AvatarColors()
        self.online: list[str] = []
        self.cursor: int | None = None  # history cursor for the page before the oldest
        self.history_started = False  # True once a history page has been read

    # ------------------------------------------------------------------ messages

    def __len__(self) -> int:
        return len(self._handles)

    def __contains__(self, handle: object) -> bool:
        return handle in self._items

    def _item(self, event: SpaceMessageEvent) -> _Item:
        body = event.message.body
        return _Item(event.handle, event.sender, body, event.content_type, show(body))

    def add(self, event: SpaceMessageEvent) -> Row:
        """Add a new message (a known handle is replaced, keeping its "edited" mark) and
        return its wire row. A message from someone also ends their "typing"."""
        self._typing.pop(event.sender, None)
        known = self._items.get(event.handle)
        item = self._item(event)
        if known is not None:
            item.edited = known.edited
        else:
            bisect.insort(self._handles, event.handle)
        self._items[event.handle] = item
        return self._wire(item)

    def edit(self, event: SpaceMessageEvent) -> Row | None:
        """Replace a loaded message's body and mark it edited; returns its wire row.
        Unknown handles are ignored (the edited text comes with the history page)."""
        if event.handle not in self._items:
            return None
        item = self._item(event)
        item.edited = True
        self._items[event.handle] = item
        return self._wire(item)

    def delete(self, handle: int) -> bool:
        """Remove a message from the view. Returns True if it was loaded."""
        if self._items.pop(handle, None) is None:
            return False
        self._handles.pop(bisect.bisect_left(self._handles, handle))
        return True

    def add_page(self, messages: Iterable[SpaceMessageEvent], next_cursor: int | None) -> int:
        """Merge one history page (older messages) and remember its cursor; returns how
        many were new."""
        added = 0
        for event in messages:
            if event.handle not in self._items:
                self._items[event.handle] = self._item(event)
                bisect.insort(self._handles, event.handle)
                added += 1
        self.cursor = next_cursor
        self.history_started = True
        return added

    @property
    def oldest(self) -> int | None:
        """The handle of the oldest loaded message (None when none is loaded)."""
        return self._handles[0] if self._handles else None

    @property
    def more_on_relay(self) -> bool:
        """True while older pages may still be fetched from the relay."""
        return not self.history_started or self.cursor is not None

    def newest(self, count: int) -> list[Row]:
        """Wire rows of the ``count`` newest loaded messages, oldest first."""
        return [self._wire(self._items[h]) for h in self._handles[-count:]] if count else []

    def older(self, before: int | None, count: int) -> tuple[list[Row], bool]:
        """Wire rows of up to ``count`` loaded messages older than ``before`` (all when
        None), oldest first, and whether still older ones are loaded or on the relay."""
        end = len(self._handles) if before is None else bisect.bisect_left(self._handles, before)
        start = max(0, end - count)
        rows = [self._wire(self._items[h]) for h in self._handles[start:end]]
        return rows, start > 0 or self.more_on_relay

    def loaded_before(self, before: int | None) -> int:
        """How many loaded messages are older than ``before``."""
        return len(self._handles) if before is None else bisect.bisect_left(self._handles, before)

    def body(self, handle: int) -> Any:
        """The payload at ``handle`` (KeyError if it is not loaded)."""
        return self._items[handle].body

    def shown(self, handle: int) -> Shown:
        return self._items[handle].shown

    def sender(self, handle: int) -> str:
        return self._items[handle].sender

    # ------------------------------------------------------------------ rows

    def _wire(self, item: _Item) -> Row:
        shown = item.shown
        row: Row = {"h": item.handle, "s": item.sender}
        if shown.html is not None:
            row["m"] = shown.html
        elif shown.kind != "file":
            row["x"] = shown.text
        if shown.file is not None:
            row["f"] = {"n": shown.file.name, "l": shown.file.label}
        if item.edited:
            row["e"] = 1
        if item.sender == self.me and shown.source is not None:
            row["src"] = shown.source
        return row

    def people(self, rows: Iterable[Row]) -> dict[str, list[str]]:
        """``{sender: [initials, colour]}`` for every sender of ``rows``."""
        return {row["s"]: [initials(row["s"]), self.colors(row["s"])] for row in rows}

    def view(self) -> list[Row]:
        """Every loaded message, oldest first, as readable dicts: ``handle``, ``sent_at``
        (relay time), ``sender``, ``mine``, ``kind`` (text, file or json), ``body`` (the
        text shown), ``html`` (the sanitized markup, or None for plain text),
        ``content_type``, ``edited``, ``file`` (name, size, content type; or None)."""
        rows = []
        for handle in self._handles:
            item = self._items[handle]
            shown = item.shown
            rows.append(
                {
                    "handle": item.handle,
                    "sent_at": handle_time(item.handle),
                    "sender": item.sender,
                    "mine": item.sender == self.me,
                    "kind": shown.kind,
                    "body": shown.text,
                    "html": shown.html,
                    "content_type": item.content_type,
                    "edited": item.edited,
                    "file": None
                    if shown.file is None
                    else {
                        "name": shown.file.name,
                        "size": shown.file.size,
                        "content_type": shown.file.content_type,
                    },
                }
            )
        return rows

    # ------------------------------------------------------------------ pending sends

    def pend(self, text: str) -> Pending:
        """A new pending send of ``text``."""
        pending = Pending(next(self._pending_ids), text)
        self._pending[pending.id] = pending
        return pending

    def pending(self, pending_id: int) -> Pending | None:
        return self._pending.get(pending_id)

    def fail(self, pending_id: int, reason: str) -> Pending | None:
        pending = self._pending.get(pending_id)
        if pending is not None:
            pending.failed = reason
        return pending

    def unpend(self, pending_id: int) -> bool:
        return self._pending.pop(pending_id, None) is not None

    def pending_wire(self, pending: Pending) -> Row:
        row: Row = {"p": pending.id, "s": self.me, "x": pending.text}
        if pending.failed is not None:
            row["err"] = pending.failed
        return row

    def all_pending(self) -> list[Row]:
        return [self.pending_wire(p) for p in self._pending.values()]

    # ------------------------------------------------------------------ transcripts

    def transcript_text(self, title: str) -> str:
        """What the view shows, as plain text (for a saved notebook)."""
        count = len(self._handles)
        lines = [f"spacenb chat · {title} · {count} message{'' if count == 1 else 's'}"]
        for row in self.view():
            when = row["sent_at"].isoformat(sep=" ", timespec="seconds")
            me = " (me)" if row["mine"] else ""
            edited = " (edited)" if row["edited"] else ""
            prefix = f"[{when}] {row['sender']}{me}: "
            text_lines = (row["body"] + edited).split("\n")
            lines.append(prefix + text_lines[0])
            lines += [" " * len(prefix) + more for more in text_lines[1:]]
        for pending in self._pending.values():
            state = f"not sent: {pending.failed}" if pending.failed else "sending"
            lines.append(f"[{state}] {self.me} (me): {pending.text}")
        return "\n".join(lines)

    def transcript_html(self, title: str) -> str:
        """What the view shows, as static HTML: every peer string escaped, bodies as the
        sanitized markup the live view shows. Plain tags, so it reads on GitHub too."""
        esc = html.escape
        count = len(self._handles)
        rows = []
        for row in self.view():
            when = row["sent_at"].isoformat(sep=" ", timespec="seconds")
            who = esc(row["sender"]) + (" <em>(me)</em>" if row["mine"] else "")
            body = row["html"] if row["html"] is not None else ""
            if row["kind"] == "file":
                chip = f"📎 {esc(row['file']['name'])}"
                body = f"{body}<p><code>{chip}</code> (download it in the live view)</p>"
            elif row["html"] is None:
                body = f"<p>{esc(row['body'])}</p>"
            edited = " <em>(edited)</em>" if row["edited"] else ""
            rows.append(
                f"<tr><td><time>{esc(when)}</time></td><td><strong>{who}</strong></td>"
                f"<td>{body}{edited}</td></tr>"
            )
        for pending in self._pending.values():
            state = f"not sent: {esc(pending.failed)}" if pending.failed else "sending…"
            rows.append(
                f"<tr><td><em>{state}</em></td><td><strong>{esc(self.me)}</strong>"
                f" <em>(me)</em></td><td><p>{esc(pending.text)}</p></td></tr>"
            )
        head = (
            f"<p><strong>{esc(title)}</strong> · spacenb chat · {count} "
            f"message{'' if count == 1 else 's'} (a transcript saved with the notebook: "
            "run it for the live view)</p>"
        )
        table = (
            "<table><thead><tr><th>sent (UTC)</th><th>from</th><th>message</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            if rows
            else "<p><em>No messages.</em></p>"
        )
        return f'<div class="spacenb-transcript">{head}{table}</div>'

    # ------------------------------------------------------------------ people

    def set_online(self, peers: Iterable[str]) -> None:
        self.online = sorted(set(peers))

    def typing_signal(self, sender: str, active: bool = True) -> bool:
        """Someone started (or, ``active=False``, stopped) typing; you are never shown.
        Returns True if the view changed."""
        if sender == self.me:
            return False
        was = sender in self.typing()
        if active:
            self._typing[sender] = self._clock() + self.typing_ttl
        else:
            self._typing.pop(sender, None)
        return was != active

    def typing(self) -> list[str]:
        """Who is typing now (expired signals are forgotten)."""
        now = self._clock()
        for sender in [s for s, expiry in self._typing.items() if expiry <= now]:
            del self._typing[sender]
        return sorted(self._typing)

    def next_expiry(self) -> float | None:
        """Seconds until the next "typing" signal expires (None if nobody is typing)."""
        if not self._typing:
            return None
        return max(0.0, min(self._typing.values()) - self._clock())
