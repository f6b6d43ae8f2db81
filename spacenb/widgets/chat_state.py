"""What a chat view shows, as plain data: the pure model behind :class:`ChatWidget`.

It knows messages by handle (newest last), who is online, who is typing (with expiry),
which loaded messages fall inside the rendered window, and how each row looks (group
header, initials, colour, "(me)", "(edited)"). It does no I/O and owns no thread, so it
is tested directly; the widget feeds it events and publishes :meth:`ChatState.view`.

Deleted messages vanish from the view (no placeholder): the relay removes their
ciphertext, so there is nothing left to show, and a placeholder would still reveal who
deleted what and when.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..events import SpaceMessageEvent

__all__ = ["GROUP_GAP_US", "TYPING_TTL", "ChatState", "avatar_color", "initials"]

TYPING_TTL = 4.0  # seconds a "typing" signal stays valid
GROUP_GAP_US = 5 * 60 * 1_000_000  # a pause this long starts a new group, even same sender


def initials(name: str) -> str:
    """Up to two capital letters for an avatar: ``"ada lovelace"`` → ``"AL"``."""
    parts = [p for p in re.split(r"[\W_]+", name) if p]
    if len(parts) >= 2:
        return (parts[0][0] + parts[1][0]).upper()
    return (parts[0][:2] if parts else name[:2] or "?").upper()


def avatar_color(name: str) -> str:
    """A colour that is the same for ``name`` on every machine and in every session."""
    hue = int.from_bytes(hashlib.sha256(name.encode()).digest()[:2], "big") % 360
    return f"hsl({hue}, 55%, 42%)"


def body_text(body: Any) -> str:
    """How a payload is shown: text as is, any other JSON value as compact JSON."""
    if isinstance(body, str):
        return body
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True)
class _Item:
    handle: int
    sender: str
    body: Any
    content_type: str | None
    edited: bool = False


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

    ``window`` is how many of the newest loaded messages are shown; loading older ones
    widens it. ``clock`` (seconds, monotonic) is injectable for tests.
    """

    def __init__(
        self,
        me: str,
        *,
        window: int = 200,
        typing_ttl: float = TYPING_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.me = me
        self.window = window
        self.typing_ttl = typing_ttl
        self._clock = clock
        self._handles: list[int] = []  # sorted
        self._items: dict[int, _Item] = {}
        self._typing: dict[str, float] = {}  # sender → expiry
        self.online: list[str] = []
        self.cursor: int | None = None  # history cursor for the page before the oldest
        self.history_started = False  # True once a history page has been read

    # ------------------------------------------------------------------ messages

    def __len__(self) -> int:
        return len(self._handles)

    def add(self, event: SpaceMessageEvent) -> None:
        """Add a new message (a known handle is replaced, keeping its "edited" mark).

        A message from someone also ends their "typing".
        """
        self._typing.pop(event.sender, None)
        known = self._items.get(event.handle)
        item = _Item(event.handle, event.sender, event.message.body, event.content_type)
        if known is not None:
            item.edited = known.edited
        else:
            bisect.insort(self._handles, event.handle)
        self._items[event.handle] = item

    def edit(self, event: SpaceMessageEvent) -> bool:
        """Replace a loaded message's body and mark it edited; unknown handles are ignored
        (the edited text comes with the history page when it is loaded)."""
        item = self._items.get(event.handle)
        if item is None:
            return False
        item.body, item.content_type, item.edited = (
            event.message.body,
            event.content_type,
            True,
        )
        return True

    def delete(self, handle: int) -> bool:
        """Remove a message from the view. Returns True if it was loaded."""
        if self._items.pop(handle, None) is None:
            return False
        self._handles.pop(bisect.bisect_left(self._handles, handle))
        return True

    def add_page(self, messages: Iterable[SpaceMessageEvent], next_cursor: int | None) -> int:
        """Merge one history page (older messages) and remember its cursor.

        The window widens by the number of messages added, so they are shown. Returns
        that number.
        """
        added = 0
        for event in messages:
            if event.handle not in self._items:
                self._items[event.handle] = _Item(
                    event.handle, event.sender, event.message.body, event.content_type
                )
                bisect.insort(self._handles, event.handle)
                added += 1
        self.cursor = next_cursor
        self.history_started = True
        self.window = max(self.window, min(len(self._handles), self.window + added))
        return added

    @property
    def hidden(self) -> int:
        """Loaded messages older than the window."""
        return max(0, len(self._handles) - self.window)

    @property
    def can_load_older(self) -> bool:
        """True when older messages exist: hidden ones, or more pages on the relay."""
        return self.hidden > 0 or not self.history_started or self.cursor is not None

    def reveal(self, count: int) -> int:
        """Widen the window over up to ``count`` hidden messages; returns how many."""
        shown = min(count, self.hidden)
        self.window += shown
        return shown

    def view(self) -> list[dict[str, Any]]:
        """The rows to render, oldest first: JSON-ready dicts (bodies as plain text)."""
        rows: list[dict[str, Any]] = []
        previous: _Item | None = None
        for handle in self._handles[-self.window :]:
            item = self._items[handle]
            starts = (
                previous is None
                or previous.sender != item.sender
                or item.handle - previous.handle > GROUP_GAP_US
            )
            rows.append(
                {
                    "handle": item.handle,
                    "ts": item.handle // 1000,  # ms, for JavaScript's Date
                    "sender": item.sender,
                    "mine": item.sender == self.me,
                    "body": body_text(item.body),
                    "content_type": item.content_type or "",
                    "edited": item.edited,
                    "group_start": starts,
                    "initials": initials(item.sender),
                    "color": avatar_color(item.sender),
                }
            )
            previous = item
        return rows

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
